"""Writers of small datasets in the exact on-disk layouts of the public datasets medmtl ships specs for.

Each ``write_*`` function creates a handful of tiny cases under ``base`` with the real folder
structure, file names, file formats and label tables (quirks included: BUSI's ``_mask_1.png``,
MRNet's header-less zero-padded CSVs and varying slice counts, MURA's macOS ``._`` files, JSRT's
big-endian raw ``.IMG`` files with half-size SCR GIF masks, nerve ultrasound's empty masks and
unlabelled ``test/`` folder, brain NIfTI weak labels and a CSV with an empty cell). They return the
folder that the matching ``data_specs/*.yaml`` takes as ``root``. The contents are fixed (no
randomness), so tests can assert exact values; the module-level tables are the ground truth.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

__all__ = [
    "BUSI_CASES",
    "MRNET_LABELS",
    "MURA_STUDIES",
    "JSRT_CASES",
    "NERVE_TRAIN",
    "NERVE_TEST",
    "BRAIN_CASES",
    "write_busi",
    "write_mrnet",
    "write_mura",
    "write_jsrt",
    "write_nerve_us",
    "write_brain_nifti",
    "write_csv_dataset",
    "mrnet_slices",
]

# ---------------------------------------------------------------------------------------------
# small helpers


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _grey(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 200, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# BUSI: Dataset_BUSI_with_GT/{benign,malignant,normal}/benign (1).png + benign (1)_mask.png

BUSI_CASES: dict[str, int] = {"benign": 6, "malignant": 4, "normal": 3}
"""Images per class folder (numbered from 1, as in the real data)."""
BUSI_EXTRA_MASKS: dict[str, int] = {"benign (2)": 1, "malignant (3)": 2}
"""Images with further lesions in ``_mask_1.png`` (and ``_mask_2.png``)."""


def write_busi(base: Path) -> Path:
    """BUSI in the original Kaggle layout; normal images have an all-black mask, as in the real data."""
    root = Path(base) / "Dataset_BUSI_with_GT"
    for cls, count in BUSI_CASES.items():
        for num in range(1, count + 1):
            stem = f"{cls} ({num})"
            shape = (16 + num, 20)
            _png(root / cls / f"{stem}.png", _grey(shape, num))
            lesion = np.zeros(shape, np.uint8) if cls == "normal" else _disk(shape, (8, 8), 3).astype(np.uint8) * 255
            _png(root / cls / f"{stem}_mask.png", lesion)
            for extra in range(1, BUSI_EXTRA_MASKS.get(stem, 0) + 1):
                _png(root / cls / f"{stem}_mask_{extra}.png", _disk(shape, (4, 14 - extra), 2).astype(np.uint8) * 255)
    return root


# ---------------------------------------------------------------------------------------------
# MRNet: MRNet-v1.0/{train,valid}/{axial,coronal,sagittal}/0000.npy + {train,valid}-{task}.csv

MRNET_LABELS: dict[str, dict[str, tuple[int, int, int]]] = {
    # id: (abnormal, acl, meniscus); train ids start at 0000, valid ids at 1130 as in the real data
    "train": {
        "0000": (1, 0, 1),
        "0001": (1, 1, 0),
        "0002": (0, 0, 0),
        "0003": (1, 0, 1),
        "0004": (1, 1, 1),
        "0005": (1, 0, 0),
        "0006": (0, 0, 0),
        "0007": (1, 0, 0),
        "0008": (1, 1, 1),
        "0009": (1, 0, 1),
        "0010": (0, 0, 0),
        "0011": (1, 0, 0),
    },
    "valid": {
        "1130": (1, 1, 0),
        "1131": (0, 0, 0),
        "1132": (1, 0, 1),
        "1133": (1, 0, 0),
    },
}
MRNET_VIEWS = ("axial", "coronal", "sagittal")
MRNET_SIZE = 32  # the real arrays are (slices, 256, 256)


def mrnet_slices(case_id: str, view: str) -> int:
    """Slice count of one exam's view: differs between exams and between views, as in MRNet."""
    return 3 + (int(case_id) + 2 * MRNET_VIEWS.index(view)) % 5


def write_mrnet(base: Path) -> Path:
    """MRNet v1.0: uint8 ``(slices, H, W)`` arrays per view, header-less ``0000,1`` label CSVs."""
    root = Path(base) / "MRNet-v1.0"
    for split, labels in MRNET_LABELS.items():
        for view in MRNET_VIEWS:
            folder = root / split / view
            folder.mkdir(parents=True, exist_ok=True)
            for case_id in labels:
                rng = np.random.default_rng(int(case_id))
                volume = rng.integers(
                    0, 256, size=(mrnet_slices(case_id, view), MRNET_SIZE, MRNET_SIZE), dtype=np.uint8
                )
                np.save(folder / f"{case_id}.npy", volume)
        for index, task in enumerate(("abnormal", "acl", "meniscus")):
            with open(root / f"{split}-{task}.csv", "w", newline="") as handle:
                csv.writer(handle).writerows((case_id, values[index]) for case_id, values in labels.items())
    return root


# ---------------------------------------------------------------------------------------------
# MURA: MURA-v1.1/{train,valid}/XR_PART/patientNNNNN/studyN_{positive,negative}/imageN.png

MURA_STUDIES: list[tuple[str, str, str, str, str, int]] = [
    # (split, body part, patient, study, result, images)
    ("train", "SHOULDER", "patient00001", "study1", "positive", 3),
    ("train", "HUMERUS", "patient00001", "study1", "negative", 1),  # same patient, second body part
    ("train", "SHOULDER", "patient00002", "study1", "negative", 2),
    ("train", "WRIST", "patient00003", "study1", "positive", 1),
    ("train", "WRIST", "patient00003", "study2", "negative", 2),  # same patient, second study
    ("train", "ELBOW", "patient00004", "study1", "negative", 1),
    ("train", "FINGER", "patient00005", "study1", "positive", 1),
    ("train", "FOREARM", "patient00006", "study1", "negative", 2),
    ("train", "HAND", "patient00007", "study1", "positive", 1),
    ("valid", "WRIST", "patient11185", "study1", "positive", 2),
    ("valid", "HAND", "patient11186", "study1", "negative", 1),
]
MURA_APPLEDOUBLE = [
    "train/XR_SHOULDER/patient00001/study1_positive/._image1.png",
    "train/XR_HAND/patient00007/study1_positive/._image1.png",
]
"""macOS resource-fork files found in the real archive: not images, must be skipped."""
# AppleDouble header ("Mac OS X" resource fork), padded: what the real ``._`` files start with
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4070)


def write_mura(base: Path) -> Path:
    """MURA v1.1 with its path CSVs (entries prefixed ``MURA-v1.1/``) and ``._`` files."""
    root = Path(base) / "MURA-v1.1"
    image_paths: dict[str, list[str]] = {"train": [], "valid": []}
    studies: dict[str, list[tuple[str, int]]] = {"train": [], "valid": []}
    for number, (split, part, patient, study, result, count) in enumerate(MURA_STUDIES):
        folder = f"{split}/XR_{part}/{patient}/{study}_{result}"
        for image in range(1, count + 1):
            _png(root / folder / f"image{image}.png", _grey((24, 18 + image), number * 10 + image))
            image_paths[split].append(f"MURA-v1.1/{folder}/image{image}.png")
        studies[split].append((f"MURA-v1.1/{folder}/", int(result == "positive")))
    for name in MURA_APPLEDOUBLE:
        (root / name).write_bytes(_APPLEDOUBLE)
    for split in ("train", "valid"):
        (root / f"{split}_image_paths.csv").write_text("".join(f"{p}\n" for p in image_paths[split]))
        with open(root / f"{split}_labeled_studies.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(studies[split])
    return root


# ---------------------------------------------------------------------------------------------
# JSRT + SCR: All247images/JPCLN001.IMG (raw >u2) + scratch/fold{1,2}/masks/<structure>/JPCLN001.gif

JSRT_CASES = [f"JPCLN{n:03d}" for n in range(1, 7)] + [f"JPCNN{n:03d}" for n in range(1, 5)]
JSRT_STRUCTURES = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")
JSRT_BACKGROUND = 3000
JSRT_HEART = 4095


def _jsrt_masks(size: int) -> dict[str, np.ndarray]:
    """Masks at SCR resolution (half the image size), in (row, column) order; distinct and asymmetric."""
    s = size // 2
    masks = {name: np.zeros((s, s), bool) for name in JSRT_STRUCTURES}
    masks["right lung"][s // 4 : 3 * s // 4, s // 8 : 3 * s // 8] = True  # patient's right = image left
    masks["left lung"][s // 4 : 7 * s // 8, 5 * s // 8 : 7 * s // 8] = True
    masks["heart"][s // 2 : 3 * s // 4, 3 * s // 8 : 5 * s // 8 + 2] = True
    masks["right clavicle"][s // 8 : s // 4, s // 8 : s // 2] = True
    masks["left clavicle"][s // 8 : s // 4, s // 2 : 7 * s // 8] = True
    return masks


def write_jsrt(base: Path, size: int = 64) -> Path:
    """JSRT raw images (``size`` x ``size`` instead of 2048) and SCR GIF masks at half that size.

    Images are big-endian unsigned 16-bit, 12-bit values; the heart is exactly ``JSRT_HEART`` (4095)
    so a test can check that image and masks line up. Odd-numbered images are in SCR ``fold1``,
    even-numbered in ``fold2``.
    """
    root = Path(base) / "jsrt"
    (root / "All247images").mkdir(parents=True, exist_ok=True)
    masks = _jsrt_masks(size)
    for index, case in enumerate(JSRT_CASES):
        image = np.full((size, size), JSRT_BACKGROUND, dtype=">u2")
        image[np.kron(masks["left lung"] | masks["right lung"], np.ones((2, 2), bool))] = 500 + index
        image[np.kron(masks["heart"], np.ones((2, 2), bool))] = JSRT_HEART
        image.tofile(root / "All247images" / f"{case}.IMG")
        fold = "fold1" if int(case[-3:]) % 2 else "fold2"
        for structure, mask in masks.items():
            path = root / "scratch" / fold / "masks" / structure / f"{case}.gif"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).convert("P").save(path, optimize=False)
    return root


# ---------------------------------------------------------------------------------------------
# Kaggle ultrasound nerve segmentation: train/<subject>_<img>.tif + _mask.tif, test/<img>.tif

NERVE_TRAIN: dict[tuple[int, int], bool] = {
    # (subject, image): nerve visible (non-empty mask)
    (1, 1): True,
    (1, 2): False,
    (1, 3): True,
    (1, 4): False,
    (2, 1): False,
    (2, 2): False,
    (2, 3): True,
    (3, 1): True,
    (3, 2): True,
    (3, 3): False,
    (5, 1): False,
    (5, 2): True,
    (10, 1): True,
    (10, 2): False,
}
NERVE_TEST = (1, 2, 3)
NERVE_SHAPE = (14, 20)  # rows x columns; the real images are 420 x 580


def _rle(mask: np.ndarray) -> str:
    """Kaggle run-length encoding: column-major pixel numbers from 1, ``start length`` pairs."""
    pixels = np.concatenate([[0], mask.T.flatten().astype(np.uint8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def write_nerve_us(base: Path) -> Path:
    """The Kaggle competition folder: 8-bit TIFF images and 0/255 masks, ``train_masks.csv``."""
    root = Path(base) / "ultrasound-nerve-segmentation"
    rows = []
    for (subject, image), visible in NERVE_TRAIN.items():
        _png(root / "train" / f"{subject}_{image}.tif", _grey(NERVE_SHAPE, subject * 100 + image))
        mask = _disk(NERVE_SHAPE, (7, 6 + image), 3) if visible else np.zeros(NERVE_SHAPE, bool)
        _png(root / "train" / f"{subject}_{image}_mask.tif", mask.astype(np.uint8) * 255)
        rows.append((subject, image, _rle(mask)))
    for image in NERVE_TEST:
        _png(root / "test" / f"{image}.tif", _grey(NERVE_SHAPE, 10_000 + image))
    with open(root / "train_masks.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("subject", "img", "pixels"))
        writer.writerows(rows)
    return root


# ---------------------------------------------------------------------------------------------
# brain NIfTI, medmtl's recommended hospital layout

BRAIN_CASES: dict[str, dict] = {
    # case: patient (None: no labels.csv row), abnormal ("" = empty cell), which label files exist
    "P01_a": {"patient": "P01", "abnormal": "1", "strong": True, "tissue": True},
    "P01_b": {"patient": "P01", "abnormal": "0", "strong": True, "tissue": False},
    "P02_a": {"patient": "P02", "abnormal": "", "strong": True, "tissue": True},
    "P03_a": {"patient": "P03", "abnormal": "0", "strong": True, "tissue": False},
    "P04_a": {"patient": "P04", "abnormal": "1", "strong": False, "tissue": False},
    "P05_a": {"patient": None, "abnormal": None, "strong": False, "tissue": False},  # nnU-Net _0000 name
}
BRAIN_TEST = ("X01", "X02")
BRAIN_SHAPE = (10, 9, 8)
BRAIN_SPACING = (2.0, 2.0, 2.5)


def _nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*BRAIN_SPACING, 1.0])), path)
    return path


def write_brain_nifti(base: Path) -> Path:
    """imagesTr / labelsTr / labelsWeak / labelsTissue / labels.csv / imagesTs, as in ``brain_nifti.yaml``.

    Strong masks are a box, weak masks (k-means style classes 0..3) a slightly larger box.
    """
    root = Path(base) / "brain_nifti"
    box = np.zeros(BRAIN_SHAPE, np.uint8)
    box[2:8, 2:7, 2:6] = 1
    weak = np.zeros(BRAIN_SHAPE, np.uint8)
    weak[1:9, 1:8, 1:7] = 2
    weak[3:5, 3:5, 3:5] = 3
    for index, (case, info) in enumerate(BRAIN_CASES.items()):
        image = np.random.default_rng(index).normal(100, 10, BRAIN_SHAPE).astype(np.float32) * (1 + box)
        name = f"{case}_0000.nii.gz" if info["patient"] is None else f"{case}.nii.gz"
        _nifti(root / "imagesTr" / name, image)
        _nifti(root / "labelsWeak" / f"{case}.nii.gz", weak)
        if info["strong"]:
            _nifti(root / "labelsTr" / f"{case}.nii.gz", box)
        if info["tissue"]:
            _nifti(root / "labelsTissue" / f"{case}.nii.gz", box * np.uint8(1 + index % 3))
    for index, case in enumerate(BRAIN_TEST):
        _nifti(root / "imagesTs" / f"{case}.nii.gz", np.full(BRAIN_SHAPE, 50.0 + index, np.float32))
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("case_id", "patient_id", "abnormal"))
        writer.writerows(
            (case, info["patient"], info["abnormal"]) for case, info in BRAIN_CASES.items() if info["patient"]
        )
    return root


# ---------------------------------------------------------------------------------------------
# a generic CSV-listed dataset, for the split machinery


def write_csv_dataset(base: Path, labels: list[int], patients: list[str] | None = None) -> Path:
    """``images/case_NNN.png`` (empty placeholder files: splitting never opens them) + ``labels.csv``.

    Args:
        base: parent folder.
        labels: class index per case.
        patients: patient per case (default: one patient per case).
    """
    root = Path(base) / "generic"
    (root / "images").mkdir(parents=True, exist_ok=True)
    patients = patients or [f"p{i:03d}" for i in range(len(labels))]
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("case", "patient", "label"))
        for index, (label, patient) in enumerate(zip(labels, patients, strict=True)):
            (root / "images" / f"case_{index:03d}.png").touch()
            writer.writerow((f"case_{index:03d}", patient, label))
    return root
