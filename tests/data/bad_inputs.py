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
import struct
import zipfile
import zlib
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
        ("train/20_1_mask.tif", "unreadable_file", "mask of task 'nerve'", "truncated", "copy or export it again"),
    ),
    BadInput(
        "tif_truncated_mask_nonempty",
        "nerve",
        _nothing,
        ("train/20_1_mask.tif", "unreadable_file", "task 'nerve_visible' its label", "truncated", "copy or export"),
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


# ---------------------------------------------------------------------------------------------
# spec, label-table and case-id hardening (issue 18)
#
# Reserved names (the spec layout), label tables that are outside the root, folders, FIFOs, not
# UTF-8, not comma-separated or not text at all (mrnet, and ``tables``: one table per task, each
# broken in its own way), case ids that are empty or hold control characters (demo2d, demo3d, brain)
# and cases without the mask the rest of their layout has (busi, demo3d).

_RESERVED_TASKS = """\
  - name: fold
    kind: binary
    label: {field: fold}
  - name: lesion_present
    kind: binary
    label: {field: present}
  - name: pred_grade
    kind: multiclass
    classes: [low, high]
    label: {field: grade}
  - name: consistency
    kind: binary
    label: {field: consistent}
  - name: scan
    kind: binary
    label: {field: scanned}
inputs: {image: "{path}", case_id: "{path}", split: "{parent}", label_lesion: "{stem}_mask.nii.gz", scan: "{path}"}
"""


def _spec_reserved_names(root: Path) -> None:
    """Tasks and inputs named like medmtl's own keys, and a task sharing its name with an input."""
    path = root.parent / "bad_spec.yaml"
    text = path.read_text()
    path.write_text(text.replace("\nsplits:", "\n" + _RESERVED_TASKS + "splits:", 1))


_TABLES_SPEC = """\
name: label_tables
description: a hospital's label tables, one per task; each kind of broken table is planted in one of them
spatial_dims: 2
root: data
cases:
  - {csv: cases.csv}
  - {csv: more_cases.csv}
  - {decathlon: dataset.json}
case_id: "{case_id}"
group: {file: tables/patients.csv, key: "{case_id}", key_column: case_id, value_column: patient}
inputs: {image: "images/{case_id}.png"}
tasks:
"""
_TABLES = ("outside", "folder", "latin1", "semicolon", "tab", "excel", "utf16")
"""One binary task per table ``tables/<name>.csv`` (columns case_id, value)."""


def _tables_clean(base: Path) -> Path:
    root = base / "data"
    ids = {"cases.csv": ["c01", "c02", "c03"], "more_cases.csv": ["m01", "m02"]}
    for table, cases in ids.items():
        for i, case in enumerate(cases):
            _png(root / "images" / f"{case}.png", _busi_image(300 + i, (12, 12)))
        _write_rows(root / table, [("case_id",), *((c,) for c in cases)])
    _png(root / "images" / "d01.png", _busi_image(310, (12, 12)))
    (root / "dataset.json").write_text('{"training": [{"case_id": "d01", "image": "./images/d01.png"}]}')
    everyone = [*ids["cases.csv"], *ids["more_cases.csv"], "d01"]
    _write_rows(root / "tables" / "patients.csv", [("case_id", "patient"), *((c, f"p_{c}") for c in everyone)])
    tasks = []
    for name in _TABLES:
        rows = [("case_id", "value"), *((case, str(i % 2)) for i, case in enumerate(everyone))]
        _write_rows(root / "tables" / f"{name}.csv", rows)
        table = f"{{file: tables/{name}.csv, key: '{{case_id}}', key_column: case_id, value_column: value}}"
        tasks.append(f"  - {{name: {name}, kind: binary, label: {{csv: {table}}}}}\n")
    (base / "label_tables.yaml").write_text(_TABLES_SPEC + "".join(tasks) + "splits: {method: none}\n")
    return root


def _write_rows(path: Path, rows: list[tuple[str, ...]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)


def _rows_of(path: Path) -> list[tuple[str, ...]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [tuple(row) for row in csv.reader(handle)]


def _table_symlink_outside(root: Path) -> None:
    target = _outside(root) / "outside.csv"
    (root / "tables" / "outside.csv").replace(target)
    os.symlink(target, root / "tables" / "outside.csv")


def _table_folder(root: Path) -> None:
    """An unzip that made ``folder.csv/folder.csv``."""
    path = root / "tables" / "folder.csv"
    path.rename(root / "tables" / "tmp.csv")
    path.mkdir()
    (root / "tables" / "tmp.csv").rename(path / "folder.csv")


def _table_fifo(root: Path) -> None:
    """The patient table (the spec's ``group``) replaced by a named pipe: opening it would wait forever."""
    path = root / "tables" / "patients.csv"
    path.unlink()
    os.mkfifo(path)


def _table_latin1(root: Path) -> None:
    path = root / "tables" / "latin1.csv"
    rows = _rows_of(path)
    text = "\n".join(",".join(row) for row in [(*rows[0], "comment"), (*rows[1], "bénin"), *rows[2:]]) + "\n"
    path.write_bytes(text.encode("cp1252"))


def _table_semicolons(root: Path) -> None:
    _write_rows(root / "tables" / "semicolon.csv", _rows_of(root / "tables" / "semicolon.csv"), ";")


def _table_tabs(root: Path) -> None:
    _write_rows(root / "tables" / "tab.csv", _rows_of(root / "tables" / "tab.csv"), "\t")


def _case_list_semicolons(root: Path) -> None:
    """The case list itself ``;``-separated: before, one ``unknown_field`` error per row and no delimiter hint."""
    rows = [("case_id", "site"), *((case, "north") for (case,) in _rows_of(root / "more_cases.csv")[1:])]
    _write_rows(root / "more_cases.csv", rows, ";")


def _table_xlsx(root: Path) -> None:
    """An Excel workbook saved under the ``.csv`` name."""
    with zipfile.ZipFile(root / "tables" / "excel.csv", "w") as book:
        book.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        book.writestr("xl/workbook.xml", '<?xml version="1.0"?><workbook/>')


def _table_utf16(root: Path) -> None:
    path = root / "tables" / "utf16.csv"
    path.write_bytes(path.read_text().encode("utf-16"))


def _decathlon_outside(root: Path) -> None:
    target = _outside(root) / "dataset.json"
    (root / "dataset.json").replace(target)
    os.symlink(target, root / "dataset.json")


def _mrnet_table_outside(root: Path) -> None:
    target = _outside(root) / "valid-abnormal.csv"
    (root / "valid-abnormal.csv").replace(target)
    os.symlink(target, root / "valid-abnormal.csv")


def _mrnet_table_folder(root: Path) -> None:
    path = root / "valid-meniscus.csv"
    path.rename(root / "unzipped.csv")
    path.mkdir()
    (root / "unzipped.csv").rename(path / "valid-meniscus.csv")


def _demo2d_bad_ids(root: Path) -> None:
    for case in ("", "case\x01soh", "case\n_lf", "case\u2028ls", "case\x7fdel", "case\u202efdp.exe"):
        _demo2d_row(root, case)


def _demo3d_bad_id(root: Path) -> None:
    with open(root / "labels.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(("case\t_tab", "s8", "imagesTr/case_000.nii.gz", "0"))


def _demo3d_mask_lost(root: Path) -> None:
    """case_005 without its mask among 20 cases with one (more without it is partly labelled data, not a lost file)."""
    with open(root / "labels.csv", "a", newline="") as handle:
        for index in range(5, 22):
            stem = f"case_{index:03d}"
            _nifti(root / "imagesTr" / f"{stem}.nii.gz", _brain_image(300 + index))
            if index != 5:  # only images and strong masks: the weak folder's typo is another entry's fault
                _nifti(root / "labelsTr" / f"{stem}.nii.gz", _brain_mask())
            csv.writer(handle).writerow((stem, f"s{index}", f"imagesTr/{stem}.nii.gz", "1"))


def _brain_bad_file_names(root: Path) -> None:
    """Case ids taken from file names holding an escape character and a unicode line separator."""
    _nifti(root / "imagesTr" / "B\x1b18.nii.gz", _brain_image(18))
    _nifti(root / "imagesTr" / "B\u202919.nii.gz", _brain_image(19))


def _demo2d_mask_lost(root: Path) -> None:
    """case_320 without its mask among 30 cases with one (case_104, an entry of its own, has none either)."""
    for index in range(300, 321):
        case = f"case_{index}"
        _png(root / "images" / f"{case}.png", _busi_image(index, (16, 16)))
        if index != 320:
            _png(root / "masks" / f"{case}.png", _busi_mask((16, 16)))
        _demo2d_row(root, case)


def _busi_masks_lost(root: Path) -> None:
    """Two images without their masks among 30 cases with one."""
    _png(root / "malignant" / "malignant (30).png", _busi_image(30))
    _png(root / "benign" / "benign (31).png", _busi_image(31))
    for num in range(32, 45):
        _png(root / "benign" / f"benign ({num}).png", _busi_image(num))
        _png(root / "benign" / f"benign ({num})_mask.png", _busi_mask())


LAYOUTS["tables"] = Layout("label_tables.yaml", _tables_clean)

_RESERVED_FIX = "rename the task"
_OUTSIDE_FIX = "copy the file under the data root"
_ID_FIX = "may not be empty or hold line breaks"
_DELIMITER_FIX = "save it comma-separated"

CORPUS += [
    # reserved names (spec YAML)
    BadInput(
        "spec_reserved_task_fold",
        "spec",
        _spec_reserved_names,
        ("bad_spec.yaml", "reserved_name", "'tasks.3.name' (task 'fold')", "reserved: case_id, split", _RESERVED_FIX),
    ),
    BadInput(
        "spec_reserved_task_present_suffix",
        "spec",
        _nothing,
        ("bad_spec.yaml", "reserved_name", "task 'lesion_present'", "ending in _present", _RESERVED_FIX),
    ),
    BadInput(
        "spec_reserved_task_pred_prefix",
        "spec",
        _nothing,
        ("bad_spec.yaml", "reserved_name", "task 'pred_grade'", "starting with pred_", _RESERVED_FIX),
    ),
    BadInput(
        "spec_reserved_task_semi_supervised_loss",
        "spec",
        _nothing,
        ("bad_spec.yaml", "reserved_name", "task 'consistency'", "pseudo_label, consistency", _RESERVED_FIX),
    ),
    BadInput(
        "spec_reserved_input_case_id",
        "spec",
        _nothing,
        ("bad_spec.yaml", "reserved_name", "'inputs.case_id'", "input name 'case_id'", "rename the input"),
    ),
    BadInput(
        "spec_reserved_input_split",
        "spec",
        _nothing,
        ("bad_spec.yaml", "reserved_name", "'inputs.split'", "input name 'split'", "rename the input"),
    ),
    BadInput(
        "spec_reserved_input_label_prefix",
        "spec",
        _nothing,
        ("bad_spec.yaml", "reserved_name", "'inputs.label_lesion'", "starting with pred_ / label_", "rename the input"),
    ),
    BadInput(
        "spec_input_and_task_share_a_name",
        "spec",
        _nothing,
        ("bad_spec.yaml", "name_clash", "'scan' is both an input name and a task name", "rename the input or the task"),
    ),
    # label tables and case lists: outside the root, not a file, not UTF-8 / text, not comma-separated
    BadInput(
        "label_csv_symlink_outside",
        "tables",
        _table_symlink_outside,
        ("tables/outside.csv", "path_outside_root", "outside/outside.csv", _OUTSIDE_FIX),
    ),
    BadInput(
        "decathlon_json_symlink_outside",
        "tables",
        _decathlon_outside,
        ("data/dataset.json", "path_outside_root", "outside/dataset.json", _OUTSIDE_FIX),
    ),
    BadInput(
        "mrnet_label_csv_symlink_outside",
        "mrnet",
        _mrnet_table_outside,
        ("valid-abnormal.csv", "path_outside_root", "outside/valid-abnormal.csv", _OUTSIDE_FIX),
    ),
    BadInput(
        "label_csv_is_a_folder",
        "tables",
        _table_folder,
        ("tables/folder.csv", "not_a_file", "is a folder", "(it holds folder.csv)", "point the spec at the file"),
    ),
    BadInput(
        "mrnet_label_csv_is_a_folder",
        "mrnet",
        _mrnet_table_folder,
        ("valid-meniscus.csv", "not_a_file", "is a folder", "point the spec at the file itself"),
    ),
    BadInput(
        "group_csv_is_a_fifo",
        "tables",
        _table_fifo,
        ("tables/patients.csv", "not_a_file", "a named pipe (FIFO)", "could wait forever", "regular file"),
    ),
    BadInput(
        "label_csv_not_utf8",
        "tables",
        _table_latin1,
        ("tables/latin1.csv", "not_utf8", "byte 0xe9 on line 2", "Windows-1252", "save it as UTF-8"),
    ),
    BadInput(
        "label_csv_semicolons",
        "tables",
        _table_semicolons,
        ("tables/semicolon.csv", "csv_delimiter", "semicolons (';')", "'case_id;value'", _DELIMITER_FIX),
    ),
    BadInput(
        "label_csv_tabs",
        "tables",
        _table_tabs,
        ("tables/tab.csv", "csv_delimiter", "tabs ('\\t')", _DELIMITER_FIX),
    ),
    BadInput(
        "case_list_semicolons",
        "tables",
        _case_list_semicolons,
        ("more_cases.csv", "csv_delimiter", "semicolons", "'case_id;site'", _DELIMITER_FIX),
    ),
    BadInput(
        "label_csv_is_an_excel_workbook",
        "tables",
        _table_xlsx,
        ("tables/excel.csv", "not_text", "zip archive", "Excel", "CSV UTF-8"),
    ),
    BadInput(
        "label_csv_utf16",
        "tables",
        _table_utf16,
        ("tables/utf16.csv", "not_text", "UTF-16 text", "CSV UTF-8"),
    ),
    # case ids: empty, control characters, line separators (from a case list or from file names)
    BadInput(
        "case_id_empty",
        "demo2d",
        _demo2d_bad_ids,
        ("labels.csv", "invalid_case_id", "case id '' from 'labels.csv line", "is empty", _ID_FIX),
    ),
    BadInput(
        "case_id_control_character",
        "demo2d",
        _nothing,
        ("labels.csv", "invalid_case_id", "'case\\x01soh'", "U+0001", _ID_FIX),
    ),
    BadInput(
        "case_id_line_feed",
        "demo2d",
        _nothing,
        ("labels.csv", "invalid_case_id", "'case\\n_lf'", "U+000A (line feed)", _ID_FIX),
    ),
    BadInput(
        "case_id_unicode_line_separator",
        "demo2d",
        _nothing,
        ("labels.csv", "invalid_case_id", "'case\\u2028ls'", "U+2028 (line separator)", _ID_FIX),
    ),
    BadInput(
        "case_id_delete_character",
        "demo2d",
        _nothing,
        ("labels.csv", "invalid_case_id", "'case\\x7fdel'", "U+007F (delete)", _ID_FIX),
    ),
    BadInput(
        "case_id_bidi_override",
        "demo2d",
        _nothing,
        ("labels.csv", "invalid_case_id", "'case\\u202efdp.exe'", "U+202E (bidirectional text control)", _ID_FIX),
    ),
    BadInput(
        "case_id_tab",
        "demo3d",
        _demo3d_bad_id,
        ("labels.csv", "invalid_case_id", "'case\\t_tab'", "U+0009 (tab)", _ID_FIX),
    ),
    BadInput(
        "case_id_escape_in_file_name",
        "brain",
        _brain_bad_file_names,
        ("imagesTr", "invalid_case_id", "'imagesTr/B\\x1b18.nii.gz'", "U+001B (escape)", "rename the file"),
    ),
    BadInput(
        "case_id_paragraph_separator_in_file_name",
        "brain",
        _nothing,
        ("imagesTr", "invalid_case_id", "'B\\u202919'", "U+2029 (paragraph separator)", "rename the file"),
    ),
    # a case without the mask the rest of its layout has
    BadInput(
        "busi_malignant_mask_lost",
        "busi",
        _busi_masks_lost,
        ("case malignant_30", "missing_mask", "task 'lesion'", "malignant (30)_mask*.png", "restore the case's mask"),
        "warning",
    ),
    BadInput(
        "busi_benign_mask_lost",
        "busi",
        _nothing,
        ("case benign_31", "missing_mask", "benign (31)_mask*.png", "restore the case's mask"),
        "warning",
    ),
    BadInput(
        "demo3d_mask_lost",
        "demo3d",
        _demo3d_mask_lost,
        ("case case_005", "missing_mask", "labelsTr/case_005.nii.gz", "restore the case's mask"),
        "warning",
    ),
    BadInput(
        "demo2d_mask_lost",
        "demo2d",
        _demo2d_mask_lost,
        ("case case_320", "missing_mask", "masks/case_320.png", "restore the case's mask"),
        "warning",
    ),
    BadInput(
        "demo2d_mask_lost_beside_a_nifti_image",
        "demo2d",
        _nothing,  # planted by nifti_named_png: an image without a mask
        ("case case_104", "missing_mask", "masks/case_104.png", "restore the case's mask"),
        "warning",
    ),
    BadInput(
        "brain_mask_lost_beside_a_2d_image",
        "brain",
        _nothing,  # planted by nifti_2d_in_3d; P04_a and P05_a lack it too, but have the weak mask: no warning
        ("case B05", "missing_mask", "labelsTr/B05.nii.gz", "restore the case's mask"),
        "warning",
    ),
]
# end of the issue-18 spec, label-table and case-id block


# ---------------------------------------------------------------------------------------------
# file-format hardening (issue 18)
#
# Paths that are not files (a FIFO, a folder named like an image), headers claiming more than their
# file can hold or than the 2 GiB cap (NIfTI, PNG, TIFF, .npy, DICOM; refused before any allocation),
# and formats that load as something else: complex and colour-record voxels, strings, CMYK / YCbCr /
# palette / transparent / 16-bit colour / multi-page images, NaN, zero-spacing or parallel-axis
# affines, and voxels whose squares overflow float32.

_GB_CLAIM = (1000, 1000, 360)  # 1.3 GiB of float32, claimed by a header of a few dozen bytes


def _nifti_raw(
    path: Path, shape: tuple[int, ...], dtype: str, data: bytes = b"", compress: bool = True, **fields: object
) -> Path:
    """A NIfTI-1 file written field by field, so the header may say what nibabel would not write."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.dtype(dtype))
    header.set_sform(np.diag([*layouts.BRAIN_SPACING, 1.0]), code=1)
    header.set_qform(np.diag([*layouts.BRAIN_SPACING, 1.0]), code=1)
    header.set_data_offset(352)
    for key, value in fields.items():
        header[key] = value
    blob = header.binaryblock + b"\x00" * 4 + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


def _png_by_hand(path: Path, width: int, height: int, depth: int, colour: int, rows: bytes) -> Path:
    """A PNG written chunk by chunk (PIL writes neither 16-bit colour nor lying sizes)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path


def _nifti_claims_gigabytes(root: Path) -> None:
    """The issue's example: a ~90-byte .nii.gz whose header claims 1.3 GiB (allocated before failing)."""
    _brain_case(root, "B50", None, _brain_mask())
    _nifti_raw(root / "imagesTr" / "B50.nii.gz", _GB_CLAIM, "float32")


def _nifti_complex(root: Path) -> None:
    _brain_case(root, "B52", _brain_image(52).astype(np.complex64) * (1 + 1j), _brain_mask())


def _nifti_nan_affine(root: Path) -> None:
    _brain_case(root, "B53", None, _brain_mask())
    data = _brain_image(53).tobytes(order="F")
    _nifti_raw(root / "imagesTr" / "B53.nii.gz", _BRAIN, "float32", data, srow_x=[1.0, 0.0, 0.0, np.nan])


def _nifti_zero_spacing(root: Path) -> None:
    """pixdim 0 mm along one axis, no sform: nibabel silently loads it as 1 mm."""
    _brain_case(root, "B54", None, _brain_mask())
    pixdim = [1.0, *layouts.BRAIN_SPACING, 1.0, 1.0, 1.0, 1.0]
    pixdim[2] = 0.0
    data = _brain_image(54).tobytes(order="F")
    _nifti_raw(root / "imagesTr" / "B54.nii.gz", _BRAIN, "float32", data, sform_code=0, pixdim=pixdim)


def _nifti_near_float32_max(root: Path) -> None:
    image = _brain_image(55)
    image[3, 3, 3], image[5, 5, 5] = 3.0e38, -2.5e38  # finite, but max - min is Inf in float32
    _brain_case(root, "B55", image, _brain_mask())


def _nifti_scale_factor(root: Path) -> None:
    """int16 voxels whose header scale factor (scl_slope 1e18) makes them about 1e20."""
    _brain_case(root, "B56", None, _brain_mask())
    data = np.full(_BRAIN, 100, np.int16).tobytes(order="F")
    _nifti_raw(root / "imagesTr" / "B56.nii.gz", _BRAIN, "int16", data, scl_slope=1e18, scl_inter=0.0)


def _nifti_fifo(root: Path) -> None:
    _brain_case(root, "B57", None, _brain_mask())
    os.mkfifo(root / "imagesTr" / "B57.nii.gz")


def _nifti_folder(root: Path) -> None:
    _brain_case(root, "B58", None, _brain_mask())
    (root / "imagesTr" / "B58.nii.gz").mkdir()
    (root / "imagesTr" / "B58.nii.gz" / "B58.nii").write_bytes(b"")


def _busi_pair(root: Path, cls: str, n: int, image: Image.Image | None = None) -> Path:
    """One BUSI image (``image``, or a grey one) and its mask; returns the image path."""
    path = root / cls / f"{cls} ({n}).png"
    (image or Image.fromarray(_busi_image(n))).save(path)
    _png(root / cls / f"{cls} ({n})_mask.png", _busi_mask() if cls != "normal" else np.zeros((20, 20), np.uint8))
    return path


def _png_colour_palette(root: Path) -> None:
    rgb = np.random.default_rng(50).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    _busi_pair(root, "benign", 50, Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16))


def _png_grey_palette_reordered(root: Path) -> None:
    """A grey palette in another order than the grey levels (index 0 is white)."""
    indices = np.random.default_rng(51).integers(0, 8, (20, 20), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    _busi_pair(root, "benign", 51, image)


def _png_transparent(root: Path) -> None:
    rgba = np.dstack([_busi_image(52)] * 3 + [np.full((20, 20), 255, np.uint8)])
    rgba[:5, :, 3] = 0
    _busi_pair(root, "malignant", 52, Image.fromarray(rgba, "RGBA"))


def _png_claims_gigapixels(root: Path) -> None:
    path = _busi_pair(root, "normal", 53)
    _png_by_hand(path, 100_000, 100_000, 8, 0, b"\x00" * 1000)


def _png_16bit_colour(root: Path) -> None:
    path = _busi_pair(root, "benign", 54)
    pixels = np.random.default_rng(54).integers(0, 65535, (20, 20, 3)).astype(">u2")
    _png_by_hand(path, 20, 20, 16, 2, b"".join(b"\x00" + row.tobytes() for row in pixels))


def _png_mask_in_alpha(root: Path) -> None:
    """A mask drawn in a paint program: white everywhere, the lesion only in the alpha channel."""
    _busi_pair(root, "benign", 55)
    alpha = _busi_mask()
    Image.fromarray(np.dstack([np.full((20, 20), 255, np.uint8), alpha]), "LA").save(
        root / "benign" / "benign (55)_mask.png"
    )


def _nerve_pair(root: Path, name: str, image: Image.Image, images: list[Image.Image] | None = None) -> Path:
    path = root / "train" / f"{name}.tif"
    image.save(path, save_all=bool(images), append_images=images or [])
    _png(root / "train" / f"{name}_mask.tif", _busi_mask((14, 20)))
    return path


def _nerve_rgb(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (14, 20, 3), dtype=np.uint8))


def _tif_cmyk(root: Path) -> None:
    _nerve_pair(root, "30_1", _nerve_rgb(301).convert("CMYK"))


def _tif_ycbcr(root: Path) -> None:
    _nerve_pair(root, "30_2", _nerve_rgb(302).convert("YCbCr"))


def _tif_pages(root: Path) -> None:
    pages = [Image.fromarray(_busi_image(303 + i, (14, 20))) for i in range(3)]
    _nerve_pair(root, "30_3", pages[0], pages[1:])


def _tif_claims_gigapixels(root: Path) -> None:
    """An uncompressed TIFF whose ImageWidth/ImageLength tags say 60000 x 60000 (its strip holds 280 bytes)."""
    path = _nerve_pair(root, "30_4", Image.fromarray(_busi_image(304, (14, 20))))
    data = bytearray(path.read_bytes())
    ifd = int.from_bytes(data[4:8], "little")
    for i in range(int.from_bytes(data[ifd : ifd + 2], "little")):
        entry = ifd + 2 + 12 * i
        tag, kind = (
            int.from_bytes(data[entry : entry + 2], "little"),
            int.from_bytes(data[entry + 2 : entry + 4], "little"),
        )
        if tag in (256, 257):
            data[entry + 8 : entry + 12] = (60000).to_bytes(2 if kind == 3 else 4, "little").ljust(4, b"\x00")
    path.write_bytes(bytes(data))


def _mrnet_npy_header(path: Path, shape: tuple[int, ...], dtype: str, sparse: bool = False) -> None:
    """A .npy header claiming ``shape``; its data is 64 bytes, or a sparse file of the full size (no disk used)."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        )
        handle.write(bytes(64))
        if sparse:
            handle.truncate(handle.tell() - 64 + int(np.prod(shape)) * np.dtype(dtype).itemsize)


def _npy_complex(root: Path) -> None:
    _mrnet_case(root, "0150", _views(150, axial=_volume(150).astype(np.complex64)), ("1", "0", "0"))


def _npy_over_cap(root: Path) -> None:
    """A 3 GiB .npy (sparse: the disk holds a few bytes) over the 2 GiB cap: refused before np.load."""
    _mrnet_case(root, "0151", _views(151), ("1", "0", "0"))
    _mrnet_npy_header(root / "train" / "coronal" / "0151.npy", (3072, 1024, 1024), "uint8", sparse=True)


def _npy_claims_gigabytes(root: Path) -> None:
    _mrnet_case(root, "0152", _views(152), ("1", "0", "0"))
    _mrnet_npy_header(root / "train" / "sagittal" / "0152.npy", (100_000, 100_000, 3), "uint8")


def _npy_strings(root: Path) -> None:
    _mrnet_case(root, "0153", _views(153, axial=np.array([["slice"] * 4] * 2)), ("1", "0", "0"))


def _npy_extreme(root: Path) -> None:
    axial = _volume(154).astype(np.float64)
    axial[0, 0, :3] = 1e30
    _mrnet_case(root, "0154", _views(154, axial=axial), ("1", "0", "0"))


def _demo2d_pair(root: Path, case: str) -> None:
    _png(root / "masks" / f"{case}.png", _busi_mask((16, 16)))
    _demo2d_row(root, case)


def _png_fifo(root: Path) -> None:
    _demo2d_pair(root, "case_411")
    os.mkfifo(root / "images" / "case_411.png")


def _png_folder(root: Path) -> None:
    _demo2d_pair(root, "case_412")
    (root / "images" / "case_412.png").mkdir()


def _demo3d_case(root: Path, stem: str) -> None:
    """The mask and table row of a demo3d case (no weak mask: ``labelsWeak`` is renamed by another fault)."""
    _nifti(root / "labelsTr" / f"{stem}.nii.gz", _brain_mask())
    with open(root / "labels.csv", "a", newline="") as handle:
        csv.writer(handle).writerow((stem, "s4", f"imagesTr/{stem}.nii.gz", "0"))


def _nifti_rgb24(root: Path) -> None:
    rgb = np.zeros(_BRAIN, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    _nifti(root / "imagesTr" / "case_410.nii.gz", rgb)
    _demo3d_case(root, "case_410")


def _nifti_parallel_axes(root: Path) -> None:
    affine = np.diag([*layouts.BRAIN_SPACING, 1.0])
    affine[:3, 1] = affine[:3, 0]  # the second voxel axis runs along the first
    data = _brain_image(411).tobytes(order="F")
    _nifti_raw(
        root / "imagesTr" / "case_411.nii.gz",
        _BRAIN,
        "float32",
        data,
        qform_code=0,
        srow_x=affine[0],
        srow_y=affine[1],
        srow_z=affine[2],
    )
    _demo3d_case(root, "case_411")


def _dicom_claim(root: Path, case: str, transfer_syntax: str | None = None, **tags: int) -> None:
    kwargs = {"transfer_syntax": transfer_syntax} if transfer_syntax else {}
    ds = make_dataset(slice_pixels(8, 8, 0), series_uid=generate_uid(), **kwargs)
    if transfer_syntax:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
        ds["PixelData"].VR = "OB"
    for key, value in tags.items():
        setattr(ds, key, value)
    save(ds, root / "dicom" / case / "big.dcm")


def _dicom_claims_gigapixels(root: Path) -> None:
    _dicom_claim(root, "D50", Rows=60000, Columns=60000)


def _dicom_claims_frames(root: Path) -> None:
    _dicom_claim(root, "D51", NumberOfFrames=200000)


def _dicom_compressed_over_cap(root: Path) -> None:
    _dicom_claim(
        root,
        "D52",
        "1.2.840.10008.1.2.4.50",
        Rows=40000,
        Columns=40000,
        NumberOfFrames=1000,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
    )


_TRUNCATED = "copy or export it again"
_CAP = "MEDMTL_MAX_IMAGE_BYTES"

CORPUS += [
    # NIfTI (brain_nifti.yaml)
    BadInput(
        "nifti_header_claims_gigabytes",
        "brain",
        _nifti_claims_gigabytes,
        ("imagesTr/B50.nii.gz", "unreadable_file", "(1000, 1000, 360) float32", "gzip data cannot hold", _TRUNCATED),
    ),
    BadInput(
        "nifti_complex",
        "brain",
        _nifti_complex,
        ("imagesTr/B52.nii.gz", "complex_values", "complex64", "drop the imaginary part", "np.abs"),
    ),
    BadInput(
        "nifti_nan_affine",
        "brain",
        _nifti_nan_affine,
        ("imagesTr/B53.nii.gz", "bad_affine", "non-finite", "sform", "set_sform"),
    ),
    BadInput(
        "nifti_zero_spacing",
        "brain",
        _nifti_zero_spacing,
        ("imagesTr/B54.nii.gz", "bad_affine", "voxel size 0 mm along axis 1", "qform", "re-export the image"),
    ),
    BadInput(
        "nifti_near_float32_max",
        "brain",
        _nifti_near_float32_max,
        ("imagesTr/B55.nii.gz", "extreme_values", "2 voxel(s)", "overflow float32", "clip the values"),
    ),
    BadInput(
        "nifti_scale_factor_overflow",
        "brain",
        _nifti_scale_factor,
        ("imagesTr/B56.nii.gz", "extreme_values", "1e+20", "scl_slope"),
    ),
    BadInput(
        "nifti_fifo",
        "brain",
        _nifti_fifo,
        ("imagesTr/B57.nii.gz", "not_a_file", "named pipe (FIFO)", "replace it with a copy of the real image file"),
    ),
    BadInput(
        "nifti_folder",
        "brain",
        _nifti_folder,
        ("imagesTr/B58.nii.gz", "not_a_file", "is a folder, not a .nii.gz file", "give the image file itself"),
    ),
    # PNG (breast_ultrasound.yaml)
    BadInput(
        "png_colour_palette",
        "busi",
        _png_colour_palette,
        ("benign (50).png", "palette_image", "palette (P) image with", "reads the palette indices", ".convert('RGB')"),
    ),
    BadInput(
        "png_grey_palette_reordered",
        "busi",
        _png_grey_palette_reordered,
        ("benign (51).png", "palette_image", "grey palette", "convert('L')"),
        "warning",
    ),
    BadInput(
        "png_transparent",
        "busi",
        _png_transparent,
        ("malignant (52).png", "transparency", "mode RGBA, alpha down to 0", "flatten it"),
        "warning",
    ),
    BadInput(
        "png_header_claims_gigapixels",
        "busi",
        _png_claims_gigapixels,
        ("normal (53).png", "unreadable_file", "100000 x 100000 L image", "PNG (deflate) data cannot hold", _TRUNCATED),
    ),
    BadInput(
        "png_16bit_colour",
        "busi",
        _png_16bit_colour,
        ("benign (54).png", "colour_depth", "16-bit-per-channel colour PNG", "16-bit grey PNG"),
        "warning",
    ),
    BadInput(
        "png_mask_in_alpha",
        "busi",
        _png_mask_in_alpha,
        ("benign (55)_mask.png", "transparency", "mask of task 'lesion'", "mode LA", "getchannel('A')"),
    ),
    # TIFF (nerve_us.yaml)
    BadInput("tif_cmyk", "nerve", _tif_cmyk, ("train/30_1.tif", "colour_model", "CMYK colour", "convert('L')")),
    BadInput("tif_ycbcr", "nerve", _tif_ycbcr, ("train/30_2.tif", "colour_model", "YCbCr colour", "convert('L')")),
    BadInput("tif_multipage", "nerve", _tif_pages, ("train/30_3.tif", "multi_frame", "3 pages", "one image per file")),
    BadInput(
        "tif_header_claims_gigapixels",
        "nerve",
        _tif_claims_gigapixels,
        ("train/30_4.tif", "unreadable_file", "60000 x 60000 L image", "the file holds only", _TRUNCATED),
    ),
    # .npy (mrnet.yaml)
    BadInput("npy_complex", "mrnet", _npy_complex, ("axial/0150.npy", "complex_values", "complex64", "np.abs")),
    BadInput(
        "npy_over_size_cap",
        "mrnet",
        _npy_over_cap,
        ("coronal/0151.npy", "image_too_large", "(3072, 1024, 1024) uint8", "3.0 GiB", "over the limit", _CAP),
    ),
    BadInput(
        "npy_header_claims_gigabytes",
        "mrnet",
        _npy_claims_gigabytes,
        ("sagittal/0152.npy", "unreadable_file", "(100000, 100000, 3) uint8", "the file holds only", _TRUNCATED),
    ),
    BadInput(
        "npy_strings",
        "mrnet",
        _npy_strings,
        ("axial/0153.npy", "unsupported_dtype", "<U5", "save the image as a numeric array"),
    ),
    BadInput(
        "npy_extreme_values",
        "mrnet",
        _npy_extreme,
        ("axial/0154.npy", "extreme_values", "3 voxel(s)", "1e+30", "clip the values"),
    ),
    # CSV-listed PNG (demo.yaml)
    BadInput("png_fifo", "demo2d", _png_fifo, ("images/case_411.png", "not_a_file", "named pipe", "replace it")),
    BadInput(
        "png_folder", "demo2d", _png_folder, ("images/case_412.png", "not_a_file", "is a folder", "give the image")
    ),
    # CSV-listed NIfTI (demo3d.yaml)
    BadInput(
        "nifti_rgb24",
        "demo3d",
        _nifti_rgb24,
        ("imagesTr/case_410.nii.gz", "unsupported_dtype", "('R', 'u1')", "one file per channel"),
    ),
    BadInput(
        "nifti_parallel_axes",
        "demo3d",
        _nifti_parallel_axes,
        ("imagesTr/case_411.nii.gz", "bad_affine", "axes", "are parallel", "set_sform"),
    ),
    # DICOM (hospital export)
    BadInput(
        "dicom_header_claims_gigapixels",
        "dicom",
        _dicom_claims_gigapixels,
        ("D50/big.dcm", "unreadable_file", "60000 x 60000 pixels", "the file holds only", _TRUNCATED),
    ),
    BadInput(
        "dicom_header_claims_frames",
        "dicom",
        _dicom_claims_frames,
        ("D51/big.dcm", "unreadable_file", "200000 frame(s)", "the file holds only", _TRUNCATED),
    ),
    BadInput(
        "dicom_compressed_over_size_cap",
        "dicom",
        _dicom_compressed_over_cap,
        ("D52/big.dcm", "image_too_large", "40000 x 40000 pixels x 1000 frame(s)", "over the limit", _CAP),
    ),
]
# end of the issue-18 file-format block


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
