"""Files that load as something else are reported by the validator; plain grey/RGB files are not; slow reads time out."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medmtl.data.format_checks import EXTREME_MAGNITUDE, affine_problem, extreme_value_problem, pil_problems
from medmtl.data.problems import Severity
from medmtl.data.validate import FILE_TIMEOUT_ENV, validate_dataset

_JPG_SPEC = """\
name: photos
spatial_dims: 2
root: data
cases: {glob: "*/*.jpg", regex: '(?P<cls>\\w+)/(?P<stem>[^/]+)\\.jpg'}
case_id: "{stem}"
inputs: {image: "{path}"}
tasks:
  - {name: abnormal, kind: binary, label: {field: cls, map: {sick: 1, well: 0}}}
splits: {method: none}
"""


def _rgb(seed: int, size=(12, 10)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def test_cmyk_jpeg_is_an_error_and_plain_jpegs_pass(tmp_path):
    """The issue's example: a CMYK JPEG was read as 4 channels (C, M, Y, K taken for R, G, B, alpha)."""
    (tmp_path / "data" / "sick").mkdir(parents=True)
    (tmp_path / "data" / "well").mkdir()
    _rgb(1).convert("CMYK").save(tmp_path / "data" / "sick" / "print.jpg")
    _rgb(2).save(tmp_path / "data" / "well" / "rgb.jpg")
    _rgb(3).convert("L").save(tmp_path / "data" / "well" / "grey.jpg")
    (tmp_path / "photos.yaml").write_text(_JPG_SPEC)
    report = validate_dataset(tmp_path / "photos.yaml", workers=1)
    assert [(p.check, p.case_id) for p in report.problems] == [("colour_model", "print")], report.format()
    assert "CMYK colour" in report.problems[0].message and "convert('L')" in report.problems[0].fix


@pytest.mark.parametrize(
    ("mode", "mask", "expected"),
    [
        ("L", False, []),
        ("RGB", False, []),
        ("I;16", False, []),
        ("F", False, []),
        ("P-grey-identity", False, []),
        ("P-grey-identity", True, []),
        ("P-colour", True, []),  # a palette mask is read as its indices: the labels
        ("P-colour", False, [("palette_image", Severity.ERROR)]),
        ("LA-opaque", False, []),
        ("LA-transparent", False, [("transparency", Severity.WARNING)]),
        ("LA-transparent", True, [("transparency", Severity.ERROR)]),
        ("YCbCr", False, [("colour_model", Severity.ERROR)]),
        ("frames", True, [("multi_frame", Severity.ERROR)]),
    ],
)
def test_pil_modes(tmp_path, mode, mask, expected):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    path = tmp_path / ("image.tif" if mode in ("YCbCr", "frames", "F") else "image.png")
    if mode == "P-grey-identity":
        image = Image.fromarray(grey, "L").convert("P")  # PIL's default palette for L: index i is grey i
    elif mode == "P-colour":
        image = _rgb(4).convert("P", palette=Image.Palette.ADAPTIVE, colors=6)
    elif mode.startswith("LA"):
        alpha = np.full_like(grey, 255)
        alpha[0] = 0 if mode == "LA-transparent" else 255
        image = Image.fromarray(np.dstack([grey, alpha]), "LA")
    elif mode == "YCbCr":
        image = _rgb(5).convert("YCbCr")
    elif mode == "frames":
        image = Image.fromarray(grey)
        image.save(path, save_all=True, append_images=[Image.fromarray(grey)])
    elif mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 300)
    elif mode == "F":
        image = Image.fromarray(grey.astype(np.float32) / 7)
    else:
        image = Image.fromarray(grey).convert(mode)
    if mode != "frames":
        image.save(path)
    assert [(p.check, p.severity) for p in pil_problems(path, mask=mask)] == expected


def _nifti(path: Path, **fields) -> Path:
    """A NIfTI written field by field (nibabel rewrites sform and pixdim from the affine when it saves)."""
    header = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([0.5, 0.5, 2.0, 1.0])).header
    header.set_data_offset(352)
    for key, value in fields.items():
        header[key] = value
    blob = header.binaryblock + bytes(4) + bytes(4 * 5 * 6 * 4)
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)
    return path


def test_affines(tmp_path):
    assert affine_problem(_nifti(tmp_path / "ok.nii.gz")) is None
    nan = affine_problem(_nifti(tmp_path / "nan.nii.gz", srow_z=[0.0, 0.0, 2.0, np.nan]))
    assert nan.check == "bad_affine" and "non-finite" in nan.message
    flat = _nifti(tmp_path / "flat.nii", sform_code=0, pixdim=[1.0, 0.5, 0.5, 0.0, 1, 1, 1, 1])
    assert "voxel size 0 mm along axis 2" in affine_problem(flat).message
    assert nib.load(flat).header.get_zooms()[2] == 1.0  # what nibabel (and MONAI) would have used
    assert affine_problem(tmp_path / "image.png") is None


def test_extreme_values():
    image = np.random.default_rng(0).normal(100, 10, (8, 8, 8)).astype(np.float32)
    assert extreme_value_problem(image, "x.nii") is None
    image[0, 0, 0] = EXTREME_MAGNITUDE * 0.9  # large, but its square still fits float32
    assert extreme_value_problem(image, "x.nii") is None
    image[1, 1, 1], image[2, 2, 2] = np.nan, -3e38  # NaN is reported apart (non_finite)
    found = extreme_value_problem(image, "x.nii")
    assert found.check == "extreme_values" and "has 1 voxel(s)" in found.message and "-3e+38" in found.message


_NPY_SPEC = """\
name: volumes
spatial_dims: 3
root: data
cases: {glob: "*/*.npy", regex: '(?P<site>\\w+)/(?P<id>\\w+)\\.npy'}
case_id: "{site}_{id}"
inputs: {image: "{path}"}
tasks:
  - {name: abnormal, kind: binary, label: {field: id, map: {a: 1, b: 0}}}
splits: {method: none}
"""


def test_a_slow_file_times_out_the_rest_of_the_report_goes_on(tmp_path, monkeypatch):
    """A read longer than ``file_timeout_s`` (here 1 ms, as a stalled mount would be): a read_timeout naming
    the file, the rest of its folder skipped without waiting again, every case still in the report; a later
    validation tries again."""
    data = tmp_path / "data"
    big = tmp_path / "big.npy"  # 64 MiB: loading and checking it takes tens of milliseconds, far over 1 ms
    np.save(big, np.ones((256, 256, 256), np.float32))
    for site in ("north", "south"):
        (data / site).mkdir(parents=True)
        os.link(big, data / site / "a.npy")  # one file on disk, inside the root twice
        np.save(data / site / "b.npy", np.full((4, 4, 4), np.nan if site == "south" else 1.0, np.float32))
    (tmp_path / "volumes.yaml").write_text(_NPY_SPEC)
    monkeypatch.setenv(FILE_TIMEOUT_ENV, "0.001")
    report = validate_dataset(tmp_path / "volumes.yaml", workers=1)
    found = {p.case_id: p for p in report.problems}
    assert len(report.problems) == 4 and set(found) == {"north_a", "north_b", "south_a", "south_b"}, report.format()
    for site in ("north", "south"):
        first, second = found[f"{site}_a"], found[f"{site}_b"]
        assert (first.check, first.message) == ("read_timeout", "timed out after 0.001 s reading input 'image'")
        assert first.path == str(data / site / "a.npy") and "MEDMTL_FILE_TIMEOUT_S" in first.fix
        assert second.check == "read_timeout" and f"an earlier file in {data / site} timed out" in second.message
    assert "4 x read_timeout (error)" in report.format()
    monkeypatch.setenv(FILE_TIMEOUT_ENV, "60")
    again = validate_dataset(tmp_path / "volumes.yaml", workers=1)
    assert [(p.check, p.case_id) for p in again.problems] == [("non_finite", "south_b")], again.format()
    monkeypatch.setenv(FILE_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=FILE_TIMEOUT_ENV):
        validate_dataset(tmp_path / "volumes.yaml", workers=1)
