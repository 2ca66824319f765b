"""Reformatting one 3D series into MRNet's plane stacks: shapes, grey levels, orientation, DICOM, spec, CLI.

The orientation checks use a phantom whose bright ball sits at known fractions of the field of
view measured from the patient's right, anterior and superior edges. The six possible fractions
(0.7/0.3, 0.45/0.55, 0.2/0.8) all differ, so any swapped or flipped axis moves the ball to a place
the test does not accept. The phantom is built in patient (RAS) coordinates, so the same ball is
written through a sagittal knee-like layout, an axial LPS layout and a DICOM series.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import PLANTED_STRINGS, expected_affine, make_dataset, save
from PIL import Image
from pydicom.uid import generate_uid

from medmtl.cli import main
from medmtl.data import readers
from medmtl.data.planes import MRNET_SLICE_RANGE, PLANES, plane_stacks, reformat_planes
from medmtl.data.problems import DataError
from medmtl.data.spec import load_spec

SPECS = Path(__file__).resolve().parents[2] / "data_specs"
SIZE = 64
FROM_RIGHT, FROM_ANTERIOR, FROM_SUPERIOR = 0.7, 0.45, 0.2  # the ball: patient's left, anterior, superior
RADIUS_MM = 18.0

# Sagittal acquisition like the real knee series (512x512x80 at 0.3125x0.3125x1.5 mm, columns to
# posterior, rows to inferior, slices to the patient's right), scaled down: 160 x 160 x 120 mm.
SAGITTAL_PIR = np.array([[0, 0, 6.0, -60], [-2.5, 0, 0, 70], [0, -2.5, 0, 80], [0, 0, 0, 1]])
# Axial volume stored in LPS order (as DICOM-derived NIfTI files often are): 120 x 160 x 120 mm.
AXIAL_LPS = np.array([[-2.5, 0, 0, 60], [0, -2.5, 0, 80], [0, 0, 6.0, -60], [0, 0, 0, 1]])
LAYOUTS = {"sagittal_PIR": ((64, 64, 20), SAGITTAL_PIR), "axial_LPS": ((48, 64, 20), AXIAL_LPS)}

# Which anatomical extent each stack axis spans, and from which edge it counts (module docstring).
PLANE_AXES = {
    "axial": (("S", "from_inferior"), ("A", "from_anterior"), ("R", "from_right")),
    "coronal": (("A", "from_anterior"), ("S", "from_superior"), ("R", "from_right")),
    "sagittal": (("R", "from_right"), ("S", "from_superior"), ("A", "from_anterior")),
}
BALL_FRACTIONS = {
    "from_right": FROM_RIGHT,
    "from_anterior": FROM_ANTERIOR,
    "from_superior": FROM_SUPERIOR,
    "from_inferior": 1 - FROM_SUPERIOR,
}


def _field_of_view(shape: tuple[int, ...], affine: np.ndarray) -> dict[str, tuple[float, float]]:
    """``{"R": (lo, hi), "A": ..., "S": ...}`` in RAS mm, voxel edges included (axis-aligned affines)."""
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:]
    return {axis: (world[i].min(), world[i].max()) for i, axis in enumerate("RAS")}


def phantom(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """int16 volume in the array layout of ``affine``: ramp "tissue" 100-300, a ball of 1000 at the planted place."""
    fov = _field_of_view(shape, affine)
    centre = np.array(
        [
            fov["R"][1] - FROM_RIGHT * np.ptp(fov["R"]),
            fov["A"][1] - FROM_ANTERIOR * np.ptp(fov["A"]),
            fov["S"][1] - FROM_SUPERIOR * np.ptp(fov["S"]),
        ]
    )
    index = np.indices(shape).reshape(3, -1)
    world = affine[:3, :3] @ index + affine[:3, 3:]
    inside = np.linalg.norm(world - centre[:, None], axis=0) <= RADIUS_MM
    ramp = 100 + 200 * index[0] / max(shape[0] - 1, 1)  # not constant, so the 0.5 percentile is tissue
    return np.where(inside, 1000, ramp).reshape(shape).astype(np.int16)


def write_nifti(path: Path, layout: str) -> Path:
    shape, affine = LAYOUTS[layout]
    nib.save(nib.Nifti1Image(phantom(shape, affine), affine), path)
    return path


def write_dicom(folder: Path) -> Path:
    """The phantom as a sagittal DICOM series (columns to posterior, rows to inferior), one file per slice."""
    orientation, origin, pixel_spacing, spacing = (0, 1, 0, 0, 0, -1), (60.0, -90.0, 70.0), (2.5, 2.5), 6.0
    cols, rows, slices = 64, 64, 20
    affine = expected_affine(orientation, origin, pixel_spacing, spacing)  # (cols, rows, slices) layout
    volume = phantom((cols, rows, slices), affine)
    normal = np.cross(orientation[:3], orientation[3:])
    uid = generate_uid()
    for k in range(slices):
        position = np.asarray(origin) + k * spacing * normal
        ds = make_dataset(
            volume[:, :, k].T,
            series_uid=uid,
            instance=k + 1,
            position=position,
            orientation=orientation,
            pixel_spacing=pixel_spacing,
            thickness=spacing,
            modality="MR",
            description="SAG 3D DESS",
        )
        save(ds, folder / f"IM{(7 * k + 3) % 97:04d}.dcm")
    return folder


def expected_shape(fov: dict[str, tuple[float, float]], plane: str, size: int, slice_mm: float = 3.0):
    """Slices at ``slice_mm`` over the plane's depth; the longer in-plane side fills ``size`` pixels."""
    extents = [np.ptp(fov[axis]) for axis, _ in PLANE_AXES[plane]]
    pixel = max(extents[1:]) / size
    slices = min(max(round(extents[0] / slice_mm), MRNET_SLICE_RANGE[0]), MRNET_SLICE_RANGE[1])
    return slices, round(extents[1] / pixel), round(extents[2] / pixel)


def assert_ball_in_place(stacks: dict[str, np.ndarray], fov: dict[str, tuple[float, float]], size: int) -> None:
    for plane, stack in stacks.items():
        slices, content_rows, content_cols = expected_shape(fov, plane, size)
        assert stack.shape == (slices, size, size), plane
        # the plain reading first: where a radiologist would see the ball
        s, r, c = np.argwhere(stack > 200).mean(axis=0)
        if plane == "axial":  # top = anterior, viewer's right = patient's left, later slices superior
            assert r < size / 2 and c > size / 2 and s > slices / 2
        elif plane == "coronal":  # top = superior, viewer's right = patient's left, early slices anterior
            assert r < size / 2 and c > size / 2 and s < slices / 2
        else:  # sagittal: top = superior, viewer's left = anterior, later slices towards the left
            assert r < size / 2 and c < size / 2 and s > slices / 2
        # then exactly: the centroid at the planted fractions of the field of view
        pads = ((size - content_rows) // 2, (size - content_cols) // 2)
        measured = (
            (s + 0.5) / slices,
            (r + 0.5 - pads[0]) / content_rows,
            (c + 0.5 - pads[1]) / content_cols,
        )
        expected = tuple(BALL_FRACTIONS[edge] for _, edge in PLANE_AXES[plane])
        np.testing.assert_allclose(measured, expected, atol=0.03, err_msg=plane)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_stacks_have_mrnet_shape_grey_levels_and_orientation(tmp_path, layout):
    source = write_nifti(tmp_path / "knee.nii.gz", layout)
    written = reformat_planes(source, tmp_path / "out", case_id="0001", size=SIZE)
    assert written == {plane: tmp_path / "out" / "valid" / plane / "0001.npy" for plane in PLANES}
    stacks = {plane: np.load(path) for plane, path in written.items()}
    for stack in stacks.values():
        assert stack.dtype == np.uint8 and stack.ndim == 3
        assert stack.min() == 0 and stack.max() == 255  # percentiles 0.5-99.5 stretched to 0-255
    assert_ball_in_place(stacks, _field_of_view(*LAYOUTS[layout]), SIZE)


def test_ras_recipe_in_the_docstring_matches_without_resampling(tmp_path):
    """On a 1 mm RAS cube at its own resolution, the stacks are the documented transposes and flips."""
    rng = np.random.default_rng(0)
    ras = rng.integers(0, 256, size=(24, 24, 24)).astype(np.float32)
    ras[0, 0, 0], ras[-1, -1, -1] = 0, 255  # percentiles 0.5/99.5 stay near 0/255: compare orders, not values
    nib.save(nib.Nifti1Image(ras, np.eye(4)), tmp_path / "cube.nii.gz")
    image = readers.load_image(tmp_path / "cube.nii.gz")
    stacks = plane_stacks(image, size=24, slice_spacing_mm=1.0)
    recipes = {
        "axial": ras.transpose(2, 1, 0)[:, ::-1, ::-1],
        "coronal": ras.transpose(1, 2, 0)[::-1, ::-1, ::-1],
        "sagittal": ras.transpose(0, 2, 1)[::-1, ::-1, ::-1],
    }
    for plane, recipe in recipes.items():
        assert stacks[plane].shape == recipe.shape
        assert np.corrcoef(stacks[plane].ravel(), recipe.ravel())[0, 1] > 0.99, plane


def test_slice_spacing_and_max_slices(tmp_path):
    image = readers.load_image(write_nifti(tmp_path / "knee.nii.gz", "sagittal_PIR"))  # 160 x 160 x 120 mm
    five_mm = plane_stacks(image, size=32, slice_spacing_mm=5.0)
    assert {p: s.shape[0] for p, s in five_mm.items()} == {"axial": 32, "coronal": 32, "sagittal": 24}
    capped = plane_stacks(image, size=32, max_slices=30)
    assert {p: s.shape[0] for p, s in capped.items()} == {"axial": 30, "coronal": 30, "sagittal": 30}
    fine = plane_stacks(image, size=32, slice_spacing_mm=1.0)  # an explicit spacing is not clamped to 60
    assert fine["axial"].shape == (160, 32, 32)


def test_dicom_series_gives_the_same_planes_and_no_patient_data(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    folder = write_dicom(tmp_path / "DOE_JANE_knee")  # exports are often named after the patient
    written = reformat_planes(folder, tmp_path / "out", case_id="0042", size=SIZE)
    stacks = {plane: np.load(path) for plane, path in written.items()}
    fov = _field_of_view((64, 64, 20), expected_affine((0, 1, 0, 0, 0, -1), (60.0, -90.0, 70.0), (2.5, 2.5), 6.0))
    assert_ball_in_place(stacks, fov, SIZE)
    names = [str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")]
    assert sorted(names) == sorted(["valid", *[f"valid/{p}" for p in PLANES], *[f"valid/{p}/0042.npy" for p in PLANES]])
    for text in [caplog.text.replace(str(folder), "<input>"), *names]:
        assert not any(planted in text for planted in [*PLANTED_STRINGS, "DOE_JANE"]), text
    assert "0042" in caplog.text


def test_written_case_reads_through_the_mrnet_spec(tmp_path):
    root = tmp_path / "MRNet-v1.0"
    source = write_nifti(tmp_path / "knee.nii.gz", "sagittal_PIR")
    reformat_planes(source, root, case_id="1130", size=32)
    reformat_planes(source, root, case_id="0007", split="train", size=32)
    labels = {"abnormal": 1, "acl": 0, "meniscus": 1}
    for task, value in labels.items():
        (root / f"valid-{task}.csv").write_text(f"1130,{value}\n")
        (root / f"train-{task}.csv").write_text(f"0007,{value}\n")
    table = load_spec(SPECS / "mrnet.yaml", root=str(root)).build_cases()
    assert table.errors == []
    cases = {case["case_id"]: case for case in table.cases}
    assert sorted(cases) == ["0007", "1130"] and cases["1130"]["split"] == "test"
    assert {task: cases["1130"][task] for task in labels} == labels
    shapes = {plane: tuple(readers.load_image(cases["1130"][plane]).shape) for plane in PLANES}
    assert shapes == {"axial": (53, 32, 32), "coronal": (53, 32, 32), "sagittal": (40, 32, 32)}


def test_existing_case_is_kept_unless_overwrite(tmp_path):
    source = write_nifti(tmp_path / "knee.nii.gz", "axial_LPS")
    first = reformat_planes(source, tmp_path / "out", case_id="0001", size=16)
    before = first["axial"].read_bytes()
    with pytest.raises(DataError) as err:
        reformat_planes(source, tmp_path / "out", case_id="0001", size=32)
    assert {p.check for p in err.value.problems} == {"output_exists"} and len(err.value.problems) == 3
    assert first["axial"].read_bytes() == before
    again = reformat_planes(source, tmp_path / "out", case_id="0001", size=32, overwrite=True)
    assert np.load(again["axial"]).shape[1:] == (32, 32)
    assert not [p for p in (tmp_path / "out").rglob("*.tmp")]


@pytest.mark.parametrize(
    ("make", "check"),
    [
        (lambda d: _nifti(d, np.zeros((16, 16), np.int16)), "not_3d"),
        (lambda d: _nifti(d, np.zeros((16, 16, 1), np.int16)), "not_3d"),
        (lambda d: _nifti(d, np.zeros((8, 8, 8, 2), np.int16)), "not_3d"),
        (
            lambda d: save(make_dataset(np.zeros((8, 8, 3), np.uint8), series_uid=generate_uid()), d / "rgb.dcm"),
            "not_3d",
        ),
        (lambda d: _write(d / "knee.nii.gz", b"not a nifti"), "unreadable_file"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "empty_folder"),
        (lambda d: d / "absent.nii.gz", "missing_file"),
        (lambda d: _png(d / "slice.png"), "unsupported_format"),
        (lambda d: _npy(d / "knee.npy"), "unsupported_format"),
        (lambda d: _broken_header(d, 280, struct.pack("<f", float("nan")), sform=1), "bad_affine"),
        (lambda d: _broken_header(d, 80, struct.pack("<3f", 0, 0, 0), sform=0), "bad_affine"),
        (lambda d: os.mkfifo(d / "pipe.nii.gz") or d / "pipe.nii.gz", "not_a_file"),
    ],
    ids=[
        "2d",
        "one_slice",
        "4d",
        "colour_dicom",
        "corrupt",
        "empty_folder",
        "missing",
        "png",
        "npy_without_geometry",
        "nan_affine",
        "zero_mm_voxels",
        "fifo",
    ],
)
def test_bad_sources_raise_a_data_error_naming_the_file(tmp_path, make, check):
    source = make(tmp_path)
    with pytest.raises(DataError) as err:
        reformat_planes(source, tmp_path / "out", case_id="0001", size=16)
    assert check in {p.check for p in err.value.problems}
    assert str(source) in str(err.value)
    assert not (tmp_path / "out").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _nifti(folder: Path, array: np.ndarray) -> Path:
    path = folder / "volume.nii.gz"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _broken_header(folder: Path, offset: int, raw: bytes, sform: int) -> Path:
    """A volume whose raw header bytes at ``offset`` are replaced (nibabel repairs such values when it writes)."""
    path = folder / "volume.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), path)
    data = bytearray(path.read_bytes())
    data[offset : offset + len(raw)] = raw
    data[252:256] = struct.pack("<hh", 0, sform)  # qform_code, sform_code
    path.write_bytes(bytes(data))
    return path


def _npy(path: Path) -> Path:
    np.save(path, np.zeros((4, 4, 4), np.uint8))
    return path


def _png(path: Path) -> Path:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"case_id": "1"}, "4 digits"),
        ({"case_id": "../0001"}, "4 digits"),
        ({"case_id": "0001", "split": "test"}, "split"),
        ({"case_id": "0001", "size": 4}, "size"),
        ({"case_id": "0001", "slice_spacing_mm": 0.0}, "slice_spacing_mm"),
        ({"case_id": "0001", "max_slices": 0}, "max_slices"),
    ],
)
def test_bad_options_raise_value_error(tmp_path, kwargs, match):
    source = write_nifti(tmp_path / "knee.nii.gz", "axial_LPS")
    with pytest.raises(ValueError, match=match):
        reformat_planes(source, tmp_path / "out", **kwargs)


def test_cli_prints_the_written_paths(tmp_path, capsys):
    source = write_nifti(tmp_path / "knee.nii.gz", "sagittal_PIR")
    code = main(
        ["reformat-planes", str(source), str(tmp_path / "out"), "--case-id", "0003", "--size", "32", "--slice-mm", "4"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines() == [f"wrote {tmp_path / 'out' / 'valid' / plane / '0003.npy'}" for plane in PLANES]
    assert np.load(tmp_path / "out" / "valid" / "sagittal" / "0003.npy").shape == (30, 32, 32)


def test_cli_errors_exit_1_and_bad_usage_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["reformat-planes", str(tmp_path / "empty"), str(tmp_path / "out"), "--case-id", "0001"]) == 1
    assert "empty_folder" in capsys.readouterr().err
    for bad in (["--case-id", "12"], ["--case-id", "0001", "--slice-mm", "-1"], ["--case-id", "0001", "--size", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["reformat-planes", str(tmp_path / "x.nii.gz"), str(tmp_path / "out"), *bad])
        assert exit_.value.code == 2


@pytest.mark.shared_data
def test_real_knee_series_reformats_to_mrnet_sized_stacks(shared_data, tmp_path):
    folder = shared_data / "knee" / "pykneer_subject01_DESS_echo1_dicom"  # sagittal 512x512x80, 0.3125x0.3125x1.5 mm
    start = time.perf_counter()
    written = reformat_planes(folder, tmp_path, case_id="0001")
    elapsed = time.perf_counter() - start
    stacks = {plane: np.load(path) for plane, path in written.items()}
    # 160 mm field of view in-plane, 120 mm across: 3 mm slices give 53, 53 and 40 slices
    assert {plane: s.shape for plane, s in stacks.items()} == {
        "axial": (53, 256, 256),
        "coronal": (53, 256, 256),
        "sagittal": (40, 256, 256),
    }
    for stack in stacks.values():
        assert stack.dtype == np.uint8 and stack.min() == 0 and stack.max() == 255
        assert 10 < stack.mean() < 120  # a knee, not a blank or saturated stack
    assert elapsed < 60, f"took {elapsed:.1f} s"
