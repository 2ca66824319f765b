"""A corpus of broken inputs, each planted in the exact on-disk layout of a dataset medmtl has a spec for.

Every :class:`BadInput` names one fault, the layout it lives in, the function that plants it (given
the layout's data root) and the substrings the validator's report must show **on one line**: the
file, the check and words of the fix. :func:`build_layout` writes a clean copy of a layout (with
:mod:`layouts` and :mod:`dicom_factory`) and then plants every fault of that layout at once, so one
validation run must report them all, and :data:`CORPUS` is the table the tests are parametrised
over.

Layouts: ``brain`` (``data_specs/brain_nifti.yaml``: 3D NIfTI, strong + weak masks, ``labels.csv``),
``busi`` (``breast_ultrasound.yaml``: 2D PNG with ``_mask.png`` files), ``nerve`` (``nerve_us.yaml``: TIFF, one
mask read for two tasks), ``mrnet`` (``mrnet.yaml``: ``.npy`` views, header-less label CSVs),
``demo2d`` (``demo.yaml``: CSV-listed PNG images and masks), ``demo3d`` (``demo3d.yaml``: CSV with
an image column, strong + weak NIfTI masks), ``dicom`` (a hospital export: one DICOM series folder
per case, written here since no shipped spec reads DICOM) and ``spec`` (a spec YAML with mistakes
in it; nothing else is read).
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import layouts
import nibabel as nib
import numpy as np
from dicom_factory import make_dataset, save, slice_pixels, write_series
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

__all__ = ["BadInput", "CORPUS", "LAYOUTS", "SPECS", "build_layout", "cases_of"]

SPECS = Path(__file__).resolve().parents[2] / "data_specs"


@dataclass(frozen=True)
class BadInput:
    """One planted fault and what the report must say about it.

    Attributes:
        name: the table id (``nifti_truncated``).
        layout: which layout it is planted in (a key of :data:`LAYOUTS`).
        plant: writes the fault under the layout's data root.
        expect: substrings that must all be on one line of the report: the file (or case), the
            check and words of the fix.
        severity: ``error`` or ``warning``.
    """

    name: str
    layout: str
    plant: Callable[[Path], None]
    expect: tuple[str, ...]
    severity: str = "error"


# ---------------------------------------------------------------------------------------------
# writers


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    spacing = np.diag([*layouts.BRAIN_SPACING, 1.0])
    nib.save(nib.Nifti1Image(array, spacing if affine is None else affine), str(path))
    return path


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _outside(root: Path) -> Path:
    """A folder next to the data root (what a symlink or ``..`` may not reach)."""
    folder = root.parent / "outside"
    folder.mkdir(exist_ok=True)
    return folder


# ---------------------------------------------------------------------------------------------
# brain_nifti: imagesTr/<case>.nii.gz, labelsTr/, labelsWeak/, labelsTissue/, labels.csv

_BRAIN = layouts.BRAIN_SHAPE


def _brain_image(seed: int, shape: tuple[int, ...] = _BRAIN) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 10, shape).astype(np.float32)


def _brain_mask(shape: tuple[int, ...] = _BRAIN, value: int = 1) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[2:8, 2:7, 2:6] = value
    return mask


def _brain_case(
    root: Path,
    case: str,
    image: np.ndarray | None = None,
    brain: np.ndarray | None = None,
    weak: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    abnormal: str = "0",
    mask_affine: np.ndarray | None = None,
) -> None:
    """One case of the brain layout; ``None`` leaves a file out (a default image is written unless told)."""
    if image is not None:
        _nifti(root / "imagesTr" / f"{case}.nii.gz", image)
    for folder, mask in (("labelsTr", brain), ("labelsWeak", weak), ("labelsTissue", tissue)):
        if mask is not None:
            _nifti(root / folder / f"{case}.nii.gz", mask, mask_affine if folder == "labelsTr" else None)
    with open(root / "labels.csv", "a", newline="") as handle:
        csv.writer(handle).writerow((case, f"patient_{case}", abnormal))


def _nifti_truncated(root: Path) -> None:
    _brain_case(root, "B01", _brain_image(1, (20, 20, 20)), _brain_mask())
    _truncate(root / "imagesTr" / "B01.nii.gz")


def _nifti_gzip_garbage(root: Path) -> None:
    _brain_case(root, "B02", None, _brain_mask())
    (root / "imagesTr" / "B02.nii.gz").write_bytes(np.random.default_rng(2).bytes(600))


def _nifti_bad_header(root: Path) -> None:
    _brain_case(root, "B03", None, _brain_mask())
    with gzip.open(root / "imagesTr" / "B03.nii.gz", "wb") as handle:
        handle.write(b"this is not a NIfTI header" * 40)


def _nifti_4d(root: Path) -> None:
    _brain_case(root, "B04", _brain_image(4, (*_BRAIN, 3)), _brain_mask())


def _nifti_2d_in_3d(root: Path) -> None:
    _brain_case(root, "B05", _brain_image(5, _BRAIN[:2]), None)


def _nifti_shape_mismatch(root: Path) -> None:
    _brain_case(root, "B06", _brain_image(6), _brain_mask((10, 9, 7)))


def _nifti_affine_mismatch(root: Path) -> None:
    shifted = np.diag([*layouts.BRAIN_SPACING, 1.0])
    shifted[:3, 3] = [12.0, 0.0, 0.0]
    _brain_case(root, "B07", _brain_image(7), _brain_mask(), mask_affine=shifted)


def _nifti_nan(root: Path) -> None:
    image = _brain_image(8)
    image[1:3, 1, 1] = np.nan
    _brain_case(root, "B08", image, _brain_mask())


def _nifti_inf(root: Path) -> None:
    image = _brain_image(9)
    image[4, 4, 4] = np.inf
    _brain_case(root, "B09", image, _brain_mask())


def _nifti_label_out_of_range(root: Path) -> None:
    _brain_case(root, "B10", _brain_image(10), _brain_mask(), tissue=_brain_mask(value=7))


def _nifti_empty_mask(root: Path) -> None:
    _brain_case(root, "B11", _brain_image(11), _brain_mask(value=0))


def _nifti_mask_without_image(root: Path) -> None:
    _brain_case(root, "B12", None, _brain_mask())


def _nifti_zero_bytes(root: Path) -> None:
    _brain_case(root, "B13", None, _brain_mask())
    (root / "imagesTr" / "B13.nii.gz").write_bytes(b"")


def _nifti_symlink_outside(root: Path) -> None:
    target = _nifti(_outside(root) / "B14_image.nii.gz", _brain_image(14))
    _brain_case(root, "B14", None, _brain_mask())
    os.symlink(target, root / "imagesTr" / "B14.nii.gz")


def _nifti_weak_mismatch(root: Path) -> None:
    _brain_case(root, "B15", _brain_image(15), _brain_mask(), weak=_brain_mask((8, 9, 8)))


def _csv_wrong_type(root: Path) -> None:
    _brain_case(root, "B16", _brain_image(16), _brain_mask(), abnormal="maybe")


def _csv_duplicate_id(root: Path) -> None:
    _brain_case(root, "B17", _brain_image(17), _brain_mask(), abnormal="1")
    with open(root / "labels.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(("B17", "patient_B17", "0"))


# ---------------------------------------------------------------------------------------------
# BUSI: <class>/<class> (n).png + <class> (n)_mask.png


def _busi_image(seed: int, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 200, shape, dtype=np.uint8)


def _busi_mask(shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[5:10, 6:12] = 255
    return mask


def _png_truncated(root: Path) -> None:
    image = _png(root / "benign" / "benign (20).png", _busi_image(20, (120, 160)))
    _png(root / "benign" / "benign (20)_mask.png", _busi_mask((120, 160)))
    _truncate(image, 0.5)


def _png_mask_only(root: Path) -> None:
    _png(root / "malignant" / "malignant (21)_mask.png", _busi_mask())


def _png_shape_mismatch(root: Path) -> None:
    _png(root / "benign" / "benign (22).png", _busi_image(22))
    _png(root / "benign" / "benign (22)_mask.png", _busi_mask((20, 18)))


def _png_zero_byte_mask(root: Path) -> None:
    _png(root / "malignant" / "malignant (23).png", _busi_image(23))
    (root / "malignant" / "malignant (23)_mask.png").write_bytes(b"")


def _png_not_png(root: Path) -> None:
    (root / "normal" / "normal (24).png").write_text("<html><body>403 Forbidden</body></html>")
    _png(root / "normal" / "normal (24)_mask.png", np.zeros((20, 20), np.uint8))


# ---------------------------------------------------------------------------------------------
# nerve ultrasound: train/<subject>_<img>.tif + train/<subject>_<img>_mask.tif (also read for nerve_visible)


def _tif_truncated_mask(root: Path) -> None:
    _png(root / "train" / "20_1.tif", _busi_image(201, (14, 20)))
    mask = _png(root / "train" / "20_1_mask.tif", _busi_mask((14, 20)))
    _truncate(mask, 0.4)


# ---------------------------------------------------------------------------------------------
# MRNet: {train,valid}/{axial,coronal,sagittal}/NNNN.npy + header-less {split}-{task}.csv


def _mrnet_case(root: Path, case: str, views: dict[str, np.ndarray | None], labels: tuple[str, str, str]) -> None:
    for view, array in views.items():
        if array is not None:
            np.save(root / "train" / view / f"{case}.npy", array, allow_pickle=True)
    for task, value in zip(("abnormal", "acl", "meniscus"), labels, strict=True):
        with open(root / f"train-{task}.csv", "a", newline="") as handle:
            csv.writer(handle).writerow((case, value))


def _volume(seed: int, shape: tuple[int, ...] = (4, 32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _views(seed: int, **overrides: np.ndarray | None) -> dict[str, np.ndarray | None]:
    views: dict[str, np.ndarray | None] = {v: _volume(seed + i) for i, v in enumerate(layouts.MRNET_VIEWS)}
    views.update(overrides)
    return views


def _npy_wrong_rank(root: Path) -> None:
    _mrnet_case(root, "0100", _views(100, coronal=_volume(100, (32, 32))), ("1", "0", "0"))


def _npy_object_dtype(root: Path) -> None:
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = _volume(1), _volume(2, (3, 32, 32))
    _mrnet_case(root, "0101", _views(101, sagittal=ragged), ("1", "0", "0"))


def _npy_4d(root: Path) -> None:
    _mrnet_case(root, "0102", _views(102, axial=_volume(102, (4, 32, 32, 3))), ("1", "0", "0"))


def _npy_truncated(root: Path) -> None:
    _mrnet_case(root, "0103", _views(103, axial=_volume(103, (8, 32, 32))), ("1", "0", "0"))
    _truncate(root / "train" / "axial" / "0103.npy", 0.5)


def _npy_missing_view(root: Path) -> None:
    _mrnet_case(root, "0104", _views(104, coronal=None), ("1", "0", "0"))


def _mrnet_wrong_type(root: Path) -> None:
    _mrnet_case(root, "0105", _views(105), ("1", "torn", "0"))


def _mrnet_duplicate_id(root: Path) -> None:
    _mrnet_case(root, "0106", _views(106), ("1", "0", "0"))
    with open(root / "train-meniscus.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(("0106", "1"))


def _csv_missing_column(root: Path) -> None:
    rows = (root / "valid-acl.csv").read_text().splitlines()
    (root / "valid-acl.csv").write_text("".join(row.split(",")[0] + "\n" for row in rows))


# ---------------------------------------------------------------------------------------------
# demo2d: images/<case>.png, masks/<case>.png (0/255), labels.csv case_id,patient_id,malignant


def _demo2d_clean(base: Path) -> Path:
    root = base / "demo2d"
    rows = []
    for i in range(6):
        case = f"case_{i:03d}"
        _png(root / "images" / f"{case}.png", _busi_image(i, (16, 16)))
        _png(root / "masks" / f"{case}.png", _busi_mask((16, 16)))
        rows.append((case, f"p{i:03d}", str(i % 2)))
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("case_id", "patient_id", "malignant"))
        writer.writerows(rows)
    return root


def _demo2d_row(root: Path, case: str, malignant: str = "0") -> None:
    with open(root / "labels.csv", "a", newline="") as handle:
        csv.writer(handle).writerow((case, f"p_{case}", malignant))


def _png_label_out_of_range(root: Path) -> None:
    mask = _busi_mask((16, 16))
    mask[0, :4] = 128
    _png(root / "images" / "case_100.png", _busi_image(100, (16, 16)))
    _png(root / "masks" / "case_100.png", mask)
    _demo2d_row(root, "case_100")


def _demo2d_mask_only(root: Path) -> None:
    _png(root / "masks" / "case_101.png", _busi_mask((16, 16)))
    _demo2d_row(root, "case_101")


def _demo2d_duplicate_id(root: Path) -> None:
    _demo2d_row(root, "case_001", "1")


def _demo2d_wrong_type(root: Path) -> None:
    _png(root / "images" / "case_102.png", _busi_image(102, (16, 16)))
    _demo2d_row(root, "case_102", "0.5")


def _demo2d_dotdot(root: Path) -> None:
    _png(_outside(root) / "stolen.png", _busi_image(103, (16, 16)))
    _demo2d_row(root, "../../outside/stolen")


def _demo2d_nifti_named_png(root: Path) -> None:
    volume = _nifti(_outside(root) / "case_104.nii.gz", _brain_image(104))
    (root / "images" / "case_104.png").write_bytes(volume.read_bytes())
    _demo2d_row(root, "case_104")


# ---------------------------------------------------------------------------------------------
# demo3d: labels.csv (case_id,subject_id,image,large) + imagesTr/, labelsTr/, labelsWeak/


def _demo3d_clean(base: Path) -> Path:
    root = base / "demo3d"
    rows = []
    for i in range(4):
        stem = f"case_{i:03d}"
        _nifti(root / "imagesTr" / f"{stem}.nii.gz", _brain_image(i))
        _nifti(root / "labelsTr" / f"{stem}.nii.gz", _brain_mask())
        _nifti(root / "labelsWeak" / f"{stem}.nii.gz", _brain_mask())
        rows.append((stem, f"s{i}", f"imagesTr/{stem}.nii.gz", str(i % 2)))
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("case_id", "subject_id", "image", "large"))
        writer.writerows(rows)
    return root


def _weak_folder_typo(root: Path) -> None:
    (root / "labelsWeak").rename(root / "labels_weak")


def _nifti_4d_mask(root: Path) -> None:
    _nifti(root / "labelsTr" / "case_001.nii.gz", np.stack([_brain_mask()] * 2, axis=-1))


def _csv_row_skipped(root: Path) -> None:
    with open(root / "labels.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(("case_200", "s9", "imagesTs/case_200.nii.gz", "0"))


# ---------------------------------------------------------------------------------------------
# hospital DICOM export: dicom/<case>/IM*.dcm, labels.csv case_id,abnormal

_DICOM_SPEC = """\
name: hospital_dicom
description: one DICOM series folder per case, a label table
spatial_dims: 3
root: data
cases: {glob: "dicom/*", regex: 'dicom/(?P<case>[^/]+)'}
case_id: "{case}"
inputs: {image: "{path}"}
tasks:
  - name: abnormal
    kind: binary
    label: {csv: {file: labels.csv, key: "{case}", key_column: case_id, value_column: abnormal}}
splits: {method: none}
"""


def _dicom_clean(base: Path) -> Path:
    root = base / "data"
    rows = []
    for i in range(2):
        write_series(root / "dicom" / f"D0{i}", n=4, rows=8, cols=8)
        rows.append((f"D0{i}", str(i % 2)))
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("case_id", "abnormal"))
        writer.writerows(rows)
    (base / "hospital_dicom.yaml").write_text(_DICOM_SPEC)
    return root


def _dicom_empty_folder(root: Path) -> None:
    (root / "dicom" / "D10").mkdir(parents=True)


def _dicom_two_series(root: Path) -> None:
    write_series(root / "dicom" / "D11", n=4, rows=8, cols=8, description="AX T1", prefix="A")
    write_series(root / "dicom" / "D11", n=3, rows=8, cols=8, description="COR T2", prefix="B")


def _dicom_missing_slice(root: Path) -> None:
    write_series(root / "dicom" / "D12", n=6, rows=8, cols=8, skip=[3])


def _dicom_uneven(root: Path) -> None:
    write_series(root / "dicom" / "D13", n=5, rows=8, cols=8, offsets=[0.0, 2.5, 5.0, 6.1, 9.0])


def _dicom_corrupt_file(root: Path) -> None:
    write_series(root / "dicom" / "D14", n=4, rows=8, cols=8)
    (root / "dicom" / "D14" / "IM9999.dcm").write_bytes(b"this is not a DICOM file at all" * 10)


def _dicom_unsupported_syntax(root: Path) -> None:
    ds = make_dataset(slice_pixels(8, 8, 0), series_uid=generate_uid(), transfer_syntax="1.2.840.10008.1.2.4.100")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    save(ds, root / "dicom" / "D15" / "video.dcm")


def _dicom_truncated_pixels(root: Path) -> None:
    files, _ = write_series(root / "dicom" / "D16", n=4, rows=16, cols=16)
    _truncate(files[1], 0.7)


# ---------------------------------------------------------------------------------------------
# a spec YAML with mistakes (nothing else is read)

_BAD_SPEC = """\
name: bad_spec
spatial_dims: three
colour: red
root: data
cases: {glob: "*.nii.gz"}
tasks:
  - name: lesion
    kind: segmentaton
    classes: [background, lesion]
    label: {mask: "{stem}_mask.nii.gz", binarise: true}
  - name: grade
    kind: multiclass
    classes: low
    label: {field: grade}
  - name: volume
    label: {field: volume}
splits: {method: random, seed: zero}
"""


def _spec_clean(base: Path) -> Path:
    (base / "data").mkdir()
    (base / "bad_spec.yaml").write_text(_BAD_SPEC)
    return base / "data"


def _nothing(root: Path) -> None:
    """Planted by the spec or by another entry of the table; nothing more to write."""


# ---------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Layout:
    """A dataset layout: its spec and the writer of a clean copy (returns the data root)."""

    spec: str
    write: Callable[[Path], Path]


LAYOUTS: dict[str, Layout] = {
    "brain": Layout(str(SPECS / "brain_nifti.yaml"), layouts.write_brain_nifti),
    "busi": Layout(str(SPECS / "breast_ultrasound.yaml"), layouts.write_busi),
    "nerve": Layout(str(SPECS / "nerve_us.yaml"), layouts.write_nerve_us),
    "mrnet": Layout(str(SPECS / "mrnet.yaml"), layouts.write_mrnet),
    "demo2d": Layout(str(SPECS / "demo.yaml"), _demo2d_clean),
    "demo3d": Layout(str(SPECS / "demo3d.yaml"), _demo3d_clean),
    "dicom": Layout("hospital_dicom.yaml", _dicom_clean),
    "spec": Layout("bad_spec.yaml", _spec_clean),
}

CORPUS: list[BadInput] = [
    # NIfTI (brain_nifti.yaml)
    BadInput(
        "nifti_truncated",
        "brain",
        _nifti_truncated,
        ("imagesTr/B01.nii.gz", "unreadable_file", "the file is truncated", "copy or export it again"),
    ),
    BadInput(
        "nifti_gzip_garbage",
        "brain",
        _nifti_gzip_garbage,
        ("imagesTr/B02.nii.gz", "unreadable_file", "not gzip data", "not in the format its name says"),
    ),
    BadInput(
        "nifti_bad_header",
        "brain",
        _nifti_bad_header,
        ("imagesTr/B03.nii.gz", "unreadable_file", "not a NIfTI file", "not in the format its name says"),
    ),
    BadInput("nifti_4d", "brain", _nifti_4d, ("imagesTr/B04.nii.gz", "wrong_rank", "(10, 9, 8, 3)", "separate files")),
    BadInput(
        "nifti_2d_in_3d", "brain", _nifti_2d_in_3d, ("imagesTr/B05.nii.gz", "wrong_rank", "(2D)", "spatial_dims: 2")
    ),
    BadInput(
        "nifti_shape_mismatch",
        "brain",
        _nifti_shape_mismatch,
        ("labelsTr/B06.nii.gz", "shape_mismatch", "(10, 9, 7)", "resample the mask onto the image"),
    ),
    BadInput(
        "nifti_affine_mismatch",
        "brain",
        _nifti_affine_mismatch,
        ("labelsTr/B07.nii.gz", "affine_mismatch", "[12.0, 0.0, 0.0]", "re-export the mask"),
    ),
    BadInput("nifti_nan", "brain", _nifti_nan, ("imagesTr/B08.nii.gz", "non_finite", "2 NaN", "replace them")),
    BadInput("nifti_inf", "brain", _nifti_inf, ("imagesTr/B09.nii.gz", "non_finite", "1 Inf", "replace them")),
    BadInput(
        "nifti_label_out_of_range",
        "brain",
        _nifti_label_out_of_range,
        ("labelsTissue/B10.nii.gz", "label_out_of_range", "values 7 (120 voxels)", "0..3", "map the values"),
    ),
    BadInput(
        "nifti_empty_mask",
        "brain",
        _nifti_empty_mask,
        ("empty_mask", "task 'brain'", "all background (B11)", "expected for negative cases"),
        "warning",
    ),
    BadInput(
        "nifti_mask_without_image",
        "brain",
        _nifti_mask_without_image,
        ("labelsTr/B12.nii.gz", "orphan_mask", "no case has it", "restore the case's image"),
        "warning",
    ),
    BadInput(
        "nifti_zero_bytes",
        "brain",
        _nifti_zero_bytes,
        ("imagesTr/B13.nii.gz", "unreadable_file", "empty (0 bytes", "copy or export the file again"),
    ),
    BadInput(
        "nifti_symlink_outside",
        "brain",
        _nifti_symlink_outside,
        ("imagesTr/B14.nii.gz", "path_outside_root", "outside/B14_image.nii.gz", "copy the file under the data root"),
    ),
    BadInput(
        "nifti_weak_mask_mismatch",
        "brain",
        _nifti_weak_mismatch,
        ("labelsWeak/B15.nii.gz", "shape_mismatch", "weak mask of task 'brain'", "(8, 9, 8)", "resample"),
    ),
    BadInput(
        "csv_wrong_type",
        "brain",
        _csv_wrong_type,
        ("case B16", "invalid_label", "task 'abnormal'", "'maybe'", "fix the label"),
    ),
    BadInput(
        "csv_duplicate_id",
        "brain",
        _csv_duplicate_id,
        ("labels.csv", "duplicate_case_id", "'B17'", "lines 23 and 24", "remove the duplicate row"),
    ),
    # PNG (breast_ultrasound.yaml)
    BadInput(
        "png_truncated",
        "busi",
        _png_truncated,
        ("benign (20).png", "unreadable_file", "the file is truncated", "copy or export it again"),
    ),
    BadInput(
        "png_mask_only",
        "busi",
        _png_mask_only,
        ("malignant (21)_mask.png", "orphan_mask", "no case has it", "restore the case's image"),
        "warning",
    ),
    BadInput(
        "png_shape_mismatch",
        "busi",
        _png_shape_mismatch,
        ("benign (22)_mask.png", "shape_mismatch", "(18, 20)", "resample the mask"),
    ),
    BadInput(
        "png_zero_byte_mask",
        "busi",
        _png_zero_byte_mask,
        ("malignant (23)_mask.png", "unreadable_file", "mask of task 'lesion'", "empty (0 bytes", "copy or export"),
    ),
    BadInput(
        "png_html_page",
        "busi",
        _png_not_png,
        ("normal (24).png", "unreadable_file", "not a PNG file", "error page", "not in the format its name says"),
    ),
    # TIFF (nerve_us.yaml): one damaged mask, read for two tasks, named for each
    BadInput(
        "tif_truncated_mask",
        "nerve",
        _tif_truncated_mask,
        ("train/20_1_mask.tif", "unreadable_file", "mask of task 'nerve'", "export or download it again"),
    ),
    BadInput(
        "tif_truncated_mask_nonempty",
        "nerve",
        _nothing,
        ("train/20_1_mask.tif", "unreadable_file", "task 'nerve_visible' its label", "export or download it again"),
    ),
    # .npy (mrnet.yaml)
    BadInput(
        "npy_wrong_rank",
        "mrnet",
        _npy_wrong_rank,
        ("coronal/0100.npy", "wrong_rank", "(32, 32) (2D)", "spatial_dims: 2"),
    ),
    BadInput(
        "npy_object_dtype",
        "mrnet",
        _npy_object_dtype,
        ("sagittal/0101.npy", "unreadable_file", "dtype object", "save one numeric array per file"),
    ),
    BadInput("npy_4d", "mrnet", _npy_4d, ("axial/0102.npy", "wrong_rank", "(4, 32, 32, 3)", "separate files")),
    BadInput(
        "npy_truncated",
        "mrnet",
        _npy_truncated,
        ("axial/0103.npy", "unreadable_file", "(8, 32, 32) uint8", "truncated", "copy or export it again"),
    ),
    BadInput(
        "npy_missing_view",
        "mrnet",
        _npy_missing_view,
        ("coronal/0104.npy", "missing_file", "input 'coronal'", "restore the file"),
    ),
    BadInput(
        "csv_label_not_a_class",
        "mrnet",
        _mrnet_wrong_type,
        ("case 0105", "invalid_label", "task 'acl'", "'torn'", "fix the label"),
    ),
    BadInput(
        "csv_duplicate_key",
        "mrnet",
        _mrnet_duplicate_id,
        ("train-meniscus.csv", "duplicate_case_id", "'0106'", "remove the duplicate row"),
    ),
    BadInput(
        "csv_missing_column",
        "mrnet",
        _csv_missing_column,
        ("valid-acl.csv", "missing_column", "'col1'", "add the column"),
    ),
    # CSV-listed PNG (demo.yaml)
    BadInput(
        "png_label_out_of_range",
        "demo2d",
        _png_label_out_of_range,
        ("masks/case_100.png", "label_out_of_range", "128 (4 voxels)", "map the values"),
    ),
    BadInput(
        "mask_only_case",
        "demo2d",
        _demo2d_mask_only,
        ("images/case_101.png", "missing_file", "although the case has a mask", "restore the file"),
    ),
    BadInput(
        "csv_duplicate_case",
        "demo2d",
        _demo2d_duplicate_id,
        ("labels.csv", "duplicate_case_id", "'labels.csv line 3' and 'labels.csv line 10'", "remove the duplicate"),
    ),
    BadInput(
        "csv_not_binary",
        "demo2d",
        _demo2d_wrong_type,
        ("case case_102", "invalid_label", "'0.5' is outside the classes 0..1", "fix the label"),
    ),
    BadInput(
        "path_dotdot_outside",
        "demo2d",
        _demo2d_dotdot,
        ("images/../../outside/stolen.png", "path_outside_root", "outside the data root", "copy the file under"),
    ),
    BadInput(
        "nifti_named_png",
        "demo2d",
        _demo2d_nifti_named_png,
        ("images/case_104.png", "unreadable_file", "not a PNG file", "gzip data", "not in the format its name says"),
    ),
    # CSV + weak masks (demo3d.yaml)
    BadInput(
        "mask_template_matches_nothing",
        "demo3d",
        _weak_folder_typo,
        ("no_mask_found", "task 'blob'", "'labelsWeak/{stem}.nii.gz'", "did you mean 'labels_weak'", "spelling"),
        "warning",
    ),
    BadInput(
        "nifti_4d_mask",
        "demo3d",
        _nifti_4d_mask,
        ("labelsTr/case_001.nii.gz", "wrong_rank", "mask of task 'blob'", "(10, 9, 8, 2)", "separate files"),
    ),
    BadInput(
        "csv_row_not_matching_regex",
        "demo3d",
        _csv_row_skipped,
        ("labels.csv", "skipped_rows", "line 6", "imagesTs/case_200.nii.gz", "widen the cases regex"),
        "warning",
    ),
    # DICOM (hospital export)
    BadInput(
        "dicom_empty_folder",
        "dicom",
        _dicom_empty_folder,
        ("dicom/D10", "empty_folder", "the .dcm files of one series"),
    ),
    BadInput(
        "dicom_two_series",
        "dicom",
        _dicom_two_series,
        ("dicom/D11", "mixed_series", "mixes 2 series", "'AX T1'", "each series in its own folder"),
    ),
    BadInput(
        "dicom_missing_slice",
        "dicom",
        _dicom_missing_slice,
        ("dicom/D12", "missing_slices", "1 slice(s) missing", "export the complete series again"),
    ),
    BadInput(
        "dicom_uneven_spacing",
        "dicom",
        _dicom_uneven,
        ("dicom/D13", "uneven_spacing", "not evenly spaced", "resample the series"),
    ),
    BadInput(
        "dicom_corrupt_file",
        "dicom",
        _dicom_corrupt_file,
        ("D14/IM9999.dcm", "not_dicom", "not a readable DICOM file", "remove the file from the folder"),
    ),
    BadInput(
        "dicom_unsupported_syntax",
        "dicom",
        _dicom_unsupported_syntax,
        ("D15/video.dcm", "unsupported_transfer_syntax", "MPEG2", "export the images again uncompressed"),
    ),
    BadInput(
        "dicom_truncated_pixels",
        "dicom",
        _dicom_truncated_pixels,
        ("dicom/D16/", "decode_failed", "less than expected", "export it again"),
    ),
    # spec YAML (nothing else is read)
    BadInput("spec_unknown_key", "spec", _nothing, ("bad_spec.yaml", "unknown_key", "'colour'", "spelling")),
    BadInput(
        "spec_misspelt_key",
        "spec",
        _nothing,
        ("bad_spec.yaml", "unknown_key", "'tasks.0.label.binarise'", "task 'lesion'", "did you mean 'binarize'"),
    ),
    BadInput(
        "spec_wrong_type",
        "spec",
        _nothing,
        ("bad_spec.yaml", "invalid_value", "'spatial_dims'", "'three'", "allowed values"),
    ),
    BadInput(
        "spec_unknown_kind",
        "spec",
        _nothing,
        ("bad_spec.yaml", "invalid_value", "'tasks.0.kind' (task 'lesion')", "'segmentaton'", "allowed values"),
    ),
    BadInput(
        "spec_list_expected",
        "spec",
        _nothing,
        ("bad_spec.yaml", "invalid_value", "'tasks.1.classes' (task 'grade')", "'low'", "write a list"),
    ),
    BadInput(
        "spec_not_a_number", "spec", _nothing, ("bad_spec.yaml", "invalid_value", "'splits.seed'", "whole number")
    ),
    BadInput(
        "spec_bad_split_method",
        "spec",
        _nothing,
        ("bad_spec.yaml", "invalid_value", "'splits.method'", "'random'", "allowed values"),
    ),
    BadInput(
        "spec_missing_key",
        "spec",
        _nothing,
        ("bad_spec.yaml", "missing_key", "'tasks.2.kind'", "task 'volume'", "add it"),
    ),
]


def cases_of(layout: str) -> list[BadInput]:
    return [case for case in CORPUS if case.layout == layout]


def build_layout(layout: str, base: Path, faults: bool = True) -> tuple[Path, Path]:
    """Write a layout under ``base``, clean or with every fault of :data:`CORPUS` planted; returns (spec, root)."""
    spec = LAYOUTS[layout]
    root = spec.write(base)
    if faults:
        for case in cases_of(layout):
            case.plant(root)
    path = Path(spec.spec)
    return (path if path.is_absolute() else base / path), root
