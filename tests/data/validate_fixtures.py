"""Small on-disk datasets for the validator tests: a 3D NIfTI layout and a 2D PNG (BUSI) layout.

Each builder writes the files and a spec YAML under ``tmp_path`` and, with ``faults=True``, plants
one fault per case and returns what the report must contain, so a test can check that every fault
is found in a single run. Test modules load this file with :func:`importlib.util.spec_from_file_location`
(pytest runs in importlib mode, where test folders are not on ``sys.path``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

__all__ = ["Expected", "Dataset", "write_nifti", "write_png", "nifti_dataset", "png_dataset"]

SHAPE = (8, 9, 10)


@dataclass(frozen=True)
class Expected:
    """A problem the report must contain: its check, case and (a suffix of) its path."""

    check: str
    case_id: str | None = None
    path_end: str | None = None
    severity: str = "error"


@dataclass
class Dataset:
    spec: Path
    root: Path
    expected: list[Expected] = field(default_factory=list)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def _mask(shape: tuple[int, ...] = SHAPE, value: float = 1, dtype: type = np.uint8) -> np.ndarray:
    mask = np.zeros(shape, dtype=dtype)
    mask[2:5, 3:6, 4:7] = value
    return mask


# ---------------------------------------------------------------------------------------------
# 3D NIfTI layout: imagesTr/<id>.nii.gz + labelsTr/<id>.nii.gz, cases and labels in CSV files

_NIFTI_SPEC = """\
name: toy3d
spatial_dims: 3
root: data
cases: {{csv: cases.csv}}
case_id: "{{case_id}}"
inputs: {{image: "imagesTr/{{case_id}}.nii.gz"}}
tasks:
  - name: tumour
    kind: segmentation
    classes: [background, tumour]
    label: {{mask: "labelsTr/{{case_id}}.nii.gz"}}
  - name: grade
    kind: binary
    classes: [low, high]
    label: {{field: grade}}
  - name: malignant
    kind: binary
    label: {{csv: {{file: labels.csv, key_column: case_id, value_column: {value_column}}}}}
{extra_tasks}splits: {{method: field, field: split}}
"""

_OUTSIDE_TASK = """\
  - name: organ
    kind: segmentation
    classes: [background, organ]
    label: {mask: "../outside/{case_id}_organ.nii.gz"}
"""

# (case, split, grade, malignant, mask: "fg" / "empty" / None)
_CLEAN_ROWS = [
    ("c01", "train", "low", "0", "fg"),
    ("c02", "train", "high", "1", "fg"),
    ("c03", "train", "low", "", "empty"),
    ("c04", "train", "high", "1", "fg"),
    ("c05", "val", "low", "0", "fg"),
    ("c06", "test", "high", None, None),
]


def nifti_dataset(tmp_path: Path, faults: bool = False) -> Dataset:
    """A 3D dataset; clean, or with every NIfTI-side fault planted (one per case)."""
    root = tmp_path / "data"
    images, labels = root / "imagesTr", root / "labelsTr"
    rows: list[tuple[str, str, str]] = []
    malignant: list[tuple[str, str]] = []
    if not faults:
        for i, (case, split, grade, mal, mask) in enumerate(_CLEAN_ROWS):
            rows.append((case, split, grade))
            if mal is not None:
                malignant.append((case, mal))
            write_nifti(images / f"{case}.nii.gz", _image(i))
            if mask is not None:
                write_nifti(labels / f"{case}.nii.gz", _mask(value=1 if mask == "fg" else 0))
        _write_csvs(root, rows, malignant, "malignant")
        spec = tmp_path / "toy3d.yaml"
        spec.write_text(_NIFTI_SPEC.format(value_column="malignant", extra_tasks=""))
        return Dataset(spec, root)

    expected: list[Expected] = []
    outside = tmp_path / "outside"

    def case(name: str, image: np.ndarray | None = None, mask: np.ndarray | None = None, **kw) -> None:
        rows.append((name, "train", kw.get("grade", "low")))
        if image is not None:
            write_nifti(images / f"{name}.nii.gz", image, kw.get("image_affine"))
        if mask is not None:
            write_nifti(labels / f"{name}.nii.gz", mask, kw.get("mask_affine"))

    case("f01", _image(1), _mask())  # clean
    case("f02", None, _mask())
    expected.append(Expected("missing_file", "f02", "imagesTr/f02.nii.gz"))
    case("f03", None, _mask())
    (images / "f03.nii.gz").write_bytes(np.random.default_rng(3).bytes(400))  # random bytes
    expected.append(Expected("unreadable_file", "f03", "imagesTr/f03.nii.gz"))
    case("f04", None, _mask())
    write_nifti(tmp_path / "full.nii.gz", _image(4, (16, 16, 16)))
    data = (tmp_path / "full.nii.gz").read_bytes()
    (images / "f04.nii.gz").write_bytes(data[: int(len(data) * 0.7)])  # truncated gzip
    expected.append(Expected("unreadable_file", "f04", "imagesTr/f04.nii.gz"))
    case("f05", _image(5), _mask((8, 9, 7)))
    expected.append(Expected("shape_mismatch", "f05", "labelsTr/f05.nii.gz"))
    case("f06", _image(6), _mask(), mask_affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    expected.append(Expected("spacing_mismatch", "f06", "labelsTr/f06.nii.gz"))
    shifted = np.eye(4)
    shifted[:3, 3] = [5.0, 0.0, 0.0]
    case("f07", _image(7), _mask(), mask_affine=shifted)
    expected.append(Expected("affine_mismatch", "f07", "labelsTr/f07.nii.gz"))
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = SHAPE[0] - 1
    case("f08", _image(8), _mask(), mask_affine=flipped)
    expected.append(Expected("orientation_mismatch", "f08", "labelsTr/f08.nii.gz", "warning"))
    case("f09", _image(9), _mask(value=3))
    expected.append(Expected("label_out_of_range", "f09", "labelsTr/f09.nii.gz"))
    case("f10", _image(10), _mask(value=0.5, dtype=np.float32))
    expected.append(Expected("non_integer_mask", "f10", "labelsTr/f10.nii.gz"))
    nan_image = _image(11)
    nan_image[0, 0, 0] = np.nan
    case("f11", nan_image, _mask())
    expected.append(Expected("non_finite", "f11", "imagesTr/f11.nii.gz"))
    inf_mask = _mask(dtype=np.float32)
    inf_mask[0, 0, 0] = np.inf
    case("f12", _image(12), inf_mask)
    expected.append(Expected("non_finite", "f12", "labelsTr/f12.nii.gz"))
    case("f13", _image(13, (*SHAPE, 2)), _mask())
    expected.append(Expected("wrong_rank", "f13", "imagesTr/f13.nii.gz"))
    case("f14", None, _mask())
    target = write_nifti(outside / "f14_image.nii.gz", _image(14))
    os.symlink(target, images / "f14.nii.gz")
    expected.append(Expected("path_outside_root", "f14", "imagesTr/f14.nii.gz"))
    case("f15", _image(15), _mask())
    write_nifti(outside / "f15_organ.nii.gz", _mask())  # reached by the '..' template of task organ
    expected.append(Expected("path_outside_root", "f15", "outside/f15_organ.nii.gz"))
    rows.append(("f01", "train", "high"))  # the same id twice
    expected.append(Expected("duplicate_case_id", "f01", "cases.csv"))
    case("f16", _image(16), _mask(), grade="medium")
    expected.append(Expected("invalid_label", "f16"))
    case("f17", _image(17, (*SHAPE, 1)), _mask((*SHAPE, 1)))  # channel axis of size 1: fine
    expected.append(Expected("missing_column", None, "labels.csv"))  # labels.csv has no 'malignant'
    _write_csvs(root, rows, [(r[0], "1") for r in rows], "malignancy")
    spec = tmp_path / "toy3d.yaml"
    spec.write_text(_NIFTI_SPEC.format(value_column="malignant", extra_tasks=_OUTSIDE_TASK))
    return Dataset(spec, root, expected)


def _write_csvs(root: Path, rows: list[tuple[str, str, str]], malignant: list[tuple[str, str]], column: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cases.csv").write_text("case_id,split,grade\n" + "".join(f"{c},{s},{g}\n" for c, s, g in rows))
    (root / "labels.csv").write_text(f"case_id,{column}\n" + "".join(f"{c},{v}\n" for c, v in malignant))


# ---------------------------------------------------------------------------------------------
# 2D PNG layout like BUSI: <class>/<class> (n).png + <class> (n)_mask.png (+ _mask_1.png ...)

_PNG_SPEC = """\
name: toy2d
spatial_dims: 2
root: busi
cases:
  glob: "*/*.png"
  regex: '(?P<cls>benign|malignant|normal)/(?P<stem>(?P=cls) \\((?P<num>\\d+)\\))\\.png'
case_id: "{cls}_{num}"
tasks:
  - name: lesion
    kind: segmentation
    classes: [background, lesion]
    label: {mask: "{cls}/{stem}_mask*.png", values: {255: 1}}
  - name: diagnosis
    kind: multiclass
    classes: [normal, benign, malignant]
    label: {field: cls}
splits: {method: none}
"""

PNG_SHAPE = (24, 32)  # rows, columns


def _us(seed: int, shape: tuple[int, ...] = PNG_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _png_mask(shape: tuple[int, ...] = PNG_SHAPE, value: int = 255) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[5:10, 6:12] = value
    return mask


def png_dataset(tmp_path: Path, faults: bool = False) -> Dataset:
    """A BUSI-like 2D dataset; clean (2 benign, 2 malignant, 1 normal), or with 2D faults planted."""
    root = tmp_path / "busi"

    def case(cls: str, num: int, image: np.ndarray | None, *masks: np.ndarray) -> Path:
        stem = f"{cls} ({num})"
        if image is not None:
            write_png(root / cls / f"{stem}.png", image)
        for i, mask in enumerate(masks):
            write_png(root / cls / (f"{stem}_mask.png" if i == 0 else f"{stem}_mask_{i}.png"), mask)
        return root / cls / f"{stem}.png"

    case("benign", 1, _us(1), _png_mask())
    case("benign", 2, np.stack([_us(2)] * 3, axis=-1), _png_mask())  # RGB image: fine
    case("malignant", 1, _us(3), _png_mask(), _png_mask(value=0))  # two masks, OR-ed
    case("malignant", 2, _us(4), _png_mask())
    case("normal", 1, _us(5), _png_mask(value=0))
    spec = tmp_path / "toy2d.yaml"
    spec.write_text(_PNG_SPEC)
    if not faults:
        return Dataset(spec, root)
    expected = [Expected("empty_mask", None, None, "warning")]
    image = case("benign", 3, _us(6, (200, 300)), _png_mask((200, 300)))
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # truncated PNG
    expected.append(Expected("unreadable_file", "benign_3", "benign/benign (3).png"))
    case("benign", 4, None, _png_mask())
    (root / "benign" / "benign (4).png").write_bytes(b"<html>not an image</html>" * 10)
    expected.append(Expected("unreadable_file", "benign_4", "benign/benign (4).png"))
    case("benign", 5, _us(7), _png_mask((24, 30)))
    expected.append(Expected("shape_mismatch", "benign_5", "benign/benign (5)_mask.png"))
    case("malignant", 3, _us(8), _png_mask(), _png_mask((20, 32)))
    expected.append(Expected("mask_shape_mismatch", "malignant_3", "malignant/malignant (3)_mask_1.png"))
    case("malignant", 4, _us(9), _png_mask(value=128))
    expected.append(Expected("label_out_of_range", "malignant_4", "malignant/malignant (4)_mask.png"))
    colour = np.stack([_png_mask(), _png_mask(value=0), _png_mask()], axis=-1)
    case("malignant", 5, _us(10), colour)
    expected.append(Expected("colour_mask", "malignant_5", "malignant/malignant (5)_mask.png"))
    return Dataset(spec, root, expected)
