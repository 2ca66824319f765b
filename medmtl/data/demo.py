"""Small deterministic demo datasets with a real signal: a 2D ultrasound-like set and a 3D brain-like set.

Why: the demo bundle, the tests and a new user's first ``medmtl`` run need data that is there
without any download, that has exactly the on-disk layout ``data_specs/demo.yaml`` and
``data_specs/demo3d.yaml`` describe, that exercises what real hospital data throws at the code
(partial labels, unlabelled cases, empty masks, several images per patient, weak labels, a
non-identity NIfTI geometry) and, above all, whose labels *depend on the images*, so that a
network trained for a few seconds on it learns something and a green end-to-end run means more
than "no exception".

The signal, as in the real modalities it imitates:

- **2D** (breast ultrasound, BUSI-like): a lesion is a hypo-echoic blob in speckled, layered
  tissue. Benign lesions are smooth ovals, wider than tall, moderately dark, with posterior
  acoustic enhancement; malignant ones are spiculated, taller than wide, very dark, with posterior
  shadowing. ``malignant`` is 1 for the latter, 0 for benign lesions and for images without lesion
  (empty mask).
- **3D** (skull-stripped brain MRI): a bright blob (lesion) in the brain. ``large`` is 1 when the
  lesion volume exceeds :data:`LARGE_LESION_ML` millilitres. The weak label is what a threshold +
  dilation "algorithm" gives on the noisy image (over-segmented, with occasional false positives).

Every case is drawn from its own random stream ``(seed, dataset, case)``, so a seed gives
byte-identical files whatever the machine, and NIfTI files are gzipped with a zero time stamp.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from medmtl.csv_safety import csv_text

__all__ = [
    "DEMO_2D_CASES",
    "DEMO_3D_CASES",
    "DEMO_SPECS",
    "LARGE_LESION_ML",
    "DEMO_3D_AFFINE",
    "generate_demo_data",
    "generate_demo2d",
    "generate_demo3d",
]

logger = logging.getLogger(__name__)

DEMO_2D_CASES = 60
"""Default number of 2D cases (3 images per patient)."""
DEMO_3D_CASES = 24
"""Default number of 3D cases (2 sessions per subject)."""
LARGE_LESION_ML = 1.0
"""A 3D lesion is ``large`` when its volume exceeds this many millilitres (1 mL = 1000 mm^3)."""
DEMO_3D_AFFINE = np.array(
    [[-1.5, 0.0, 0.0, 23.25], [0.0, -1.5, 0.0, 23.25], [0.0, 0.0, 1.5, -23.25], [0.0, 0.0, 0.0, 1.0]]
)
"""Voxel-to-world (RAS, mm) matrix of every 3D volume: 1.5 mm voxels, LPS voxel order, centred at 0."""
DEMO_SPECS = {"demo2d": "demo.yaml", "demo3d": "demo3d.yaml"}
"""Spec file (in the repository's ``data_specs/``) describing each generated dataset."""

_MIN_CASES = 8
_SIZE_2D = 64
_SIZE_3D = 32
_IMAGES_PER_PATIENT = 3
_SESSIONS_PER_SUBJECT = 2
_STREAM_2D, _STREAM_3D = 2, 3
_SPEC_DIR = Path(__file__).resolve().parents[2] / "data_specs"


def generate_demo_data(out: str | os.PathLike, num_cases: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Write the 2D and 3D demo datasets under ``out`` and describe what was written.

    Args:
        out: output folder; ``out/demo2d`` and ``out/demo3d`` are (over)written.
        num_cases: cases per dataset; ``None`` gives :data:`DEMO_2D_CASES` 2D and
            :data:`DEMO_3D_CASES` 3D cases.
        seed: random seed; the same seed gives byte-identical files.

    Returns:
        ``{"out", "seed", "demo2d": {...}, "demo3d": {...}, "usage"}``, each dataset entry with its
        ``root``, ``spec`` (the spec file to load, ``None`` outside a source checkout), ``cases``,
        ``groups``, ``unlabelled`` and ``labels`` (per task, in the form of
        :meth:`medmtl.data.datalist.CaseTable.label_counts`).

    Raises:
        ValueError: ``num_cases`` below 8 (too few for stratified, grouped splits).

    Example::

        summary = generate_demo_data("demo_data")
        spec = load_spec(summary["demo2d"]["spec"], root=summary["demo2d"]["root"])
    """
    out = Path(out)
    summary: dict[str, Any] = {"out": str(out.resolve()), "seed": seed}
    summary["demo2d"] = generate_demo2d(out / "demo2d", DEMO_2D_CASES if num_cases is None else num_cases, seed)
    summary["demo3d"] = generate_demo3d(out / "demo3d", DEMO_3D_CASES if num_cases is None else num_cases, seed)
    summary["usage"] = f"MEDMTL_DEMO_DIR={out.resolve()} medmtl validate data_specs/demo.yaml (or demo3d.yaml)"
    return summary


# ---------------------------------------------------------------------------------------------
# 2D: ultrasound-like PNGs


def generate_demo2d(out_dir: str | os.PathLike, num_cases: int = DEMO_2D_CASES, seed: int = 0) -> dict[str, Any]:
    """Write the 2D set: ``images/case_XXX.png``, ``masks/case_XXX.png`` (0/255) and ``labels.csv``.

    ``labels.csv`` has columns ``case_id,patient_id,malignant``; ``malignant`` is empty where the
    case lacks that label. About 15% of the cases lack a mask, 15% lack ``malignant``, 7% have
    neither (unlabelled); images without lesion have an all-zero mask and ``malignant`` 0.

    Args:
        out_dir: the dataset root (created).
        num_cases: number of images; patients have 3 images each (the last one may have fewer).
        seed: random seed.

    Returns:
        The dataset's summary (see :func:`generate_demo_data`).

    Raises:
        ValueError: ``num_cases`` below 8.
    """
    _check_count(num_cases)
    root = Path(out_dir)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for old in (root / sub).glob("case_*.png"):
            old.unlink()
    plan = np.random.default_rng([seed, _STREAM_2D, 1_000_000])
    num_patients = math.ceil(num_cases / _IMAGES_PER_PATIENT)
    n_normal = max(1, round(0.25 * num_patients))
    n_malignant = max(1, round(0.375 * num_patients))
    kinds = ["normal"] * n_normal + ["malignant"] * n_malignant
    kinds += ["benign"] * (num_patients - len(kinds))
    kinds = [kinds[i] for i in plan.permutation(num_patients)]
    unlabelled, no_mask, no_class = _missing_plan(plan, num_cases, 0.07, 0.15, 0.15)

    rows, counts = [], {"lesion": _counter(), "malignant": _counter("negative", "positive")}
    empty_masks = 0
    for index in range(num_cases):
        case_id, patient = f"case_{index:03d}", index // _IMAGES_PER_PATIENT
        kind = kinds[patient]
        image, mask = _ultrasound(np.random.default_rng([seed, _STREAM_2D, index]), kind)
        _write_png(root / "images" / f"{case_id}.png", image)
        has_mask = index not in unlabelled and index not in no_mask
        has_class = index not in unlabelled and index not in no_class
        if has_mask:
            _write_png(root / "masks" / f"{case_id}.png", mask.astype(np.uint8) * 255)
            empty_masks += int(not mask.any())
        label = int(kind == "malignant")
        rows.append([case_id, f"patient_{patient:02d}", label if has_class else ""])
        _count(counts["lesion"], has_mask)
        _count(counts["malignant"], has_class, ("negative", "positive")[label])
    _write_csv(root / "labels.csv", ["case_id", "patient_id", "malignant"], rows)
    logger.info("wrote %d 2D demo cases under %s", num_cases, root)
    return _summary(root, "demo2d", num_cases, num_patients, len(unlabelled), counts, empty_masks=empty_masks)


def _ultrasound(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One 64x64 uint8 B-mode-like image and its lesion mask (bool, all False for ``normal``)."""
    size = _SIZE_2D
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    depth = yy / size
    # layered tissue (skin, fat, glandular bands) with slow variations, then depth attenuation
    echo = 0.55 + 0.12 * np.sin(2 * np.pi * (depth * rng.uniform(1.2, 2.4) + rng.uniform()))
    echo += 0.8 * ndimage.gaussian_filter(rng.normal(size=(size, size)), 5.0)
    echo *= 1.0 - 0.25 * depth
    mask = np.zeros((size, size), dtype=bool)
    if kind != "normal":
        cy, cx = rng.uniform(20, 40), rng.uniform(18, 46)
        radius = rng.uniform(7.5, 11.5)
        dy, dx = yy - cy, xx - cx
        theta, dist = np.arctan2(dy, dx), np.hypot(dy, dx)
        if kind == "benign":  # smooth oval, wider than tall ("parallel" orientation)
            ratio = rng.uniform(0.6, 0.8)
            boundary = radius * ratio / np.sqrt((ratio * np.cos(theta)) ** 2 + np.sin(theta) ** 2)
            level, posterior, blur = rng.uniform(0.2, 0.38), rng.uniform(1.1, 1.3), 1.0
        else:  # spiculated, taller than wide, with posterior shadowing
            ratio = rng.uniform(1.0, 1.3)
            boundary = radius * ratio / np.sqrt((ratio * np.cos(theta)) ** 2 + np.sin(theta) ** 2) / ratio**0.5
            for _ in range(3):
                boundary *= 1 + rng.uniform(0.03, 0.15) * np.cos(
                    rng.integers(5, 10) * theta + rng.uniform(0, 2 * np.pi)
                )
            level, posterior, blur = rng.uniform(0.08, 0.26), rng.uniform(0.5, 0.8), 0.4
        mask = dist < boundary
        below = np.clip((yy - cy) / radius, 0, 1) * np.exp(-((dx / (0.8 * radius)) ** 2))
        echo *= 1 + (posterior - 1) * below
        texture = level * (1 + (0.25 if kind == "malignant" else 0.1) * rng.normal(size=(size, size)))
        soft = ndimage.gaussian_filter(mask.astype(np.float64), blur)
        echo = echo * (1 - soft) + texture * soft
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, size=(size, size)), 0.7)
    image = np.clip(echo * speckle / speckle.mean() / 1.1, 0, 1)
    return np.round(image * 255).astype(np.uint8), mask


# ---------------------------------------------------------------------------------------------
# 3D: brain-like NIfTI volumes


def generate_demo3d(out_dir: str | os.PathLike, num_cases: int = DEMO_3D_CASES, seed: int = 0) -> dict[str, Any]:
    """Write the 3D set: ``imagesTr/``, ``labelsTr/`` (strong), ``labelsWeak/`` and ``labels.csv``.

    Volumes are 32^3 float32 NIfTI with 1.5 mm voxels in LPS voxel order (:data:`DEMO_3D_AFFINE`);
    masks are uint8 {0, 1} on the same grid. ``labels.csv`` has columns
    ``case_id,subject_id,image,large`` (``image`` relative to the root, ``large`` empty where
    missing). About 17% of the cases lack the strong mask (they keep the weak one), 12% lack
    ``large`` and 8% have no label at all (unlabelled); a few subjects have no lesion (empty masks).

    Args:
        out_dir: the dataset root (created).
        num_cases: number of volumes; subjects have 2 sessions each.
        seed: random seed.

    Returns:
        The dataset's summary (see :func:`generate_demo_data`).

    Raises:
        ValueError: ``num_cases`` below 8.
    """
    _check_count(num_cases)
    root = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "labelsWeak"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for old in (root / sub).glob("case_*.nii.gz"):
            old.unlink()
    plan = np.random.default_rng([seed, _STREAM_3D, 1_000_000])
    num_subjects = math.ceil(num_cases / _SESSIONS_PER_SUBJECT)
    lesion_free = set(plan.permutation(num_subjects)[: max(1, round(0.15 * num_subjects))].tolist())
    # half the subjects get a small lesion, half a large one (well either side of LARGE_LESION_ML)
    sizes = plan.permutation([(2.0, 3.4), (4.9, 6.2)] * math.ceil(num_subjects / 2))[:num_subjects]
    unlabelled, no_mask, no_class = _missing_plan(plan, num_cases, 0.08, 0.17, 0.12)
    voxel_ml = float(np.prod(np.abs(np.diag(DEMO_3D_AFFINE)[:3]))) / 1000.0

    rows, counts = [], {"blob": _counter(), "large": _counter("negative", "positive")}
    empty_masks = 0
    for index in range(num_cases):
        case_id, subject = f"case_{index:03d}", index // _SESSIONS_PER_SUBJECT
        anatomy = np.random.default_rng([seed, _STREAM_3D, 2_000_000 + subject])
        session = np.random.default_rng([seed, _STREAM_3D, index])
        radius = None if subject in lesion_free else anatomy.uniform(*sizes[subject])
        volume, mask, weak = _brain(anatomy, session, radius)
        _write_nifti(root / "imagesTr" / f"{case_id}.nii.gz", volume)
        large = int(mask.sum() * voxel_ml > LARGE_LESION_ML)
        if index not in unlabelled:
            _write_nifti(root / "labelsWeak" / f"{case_id}.nii.gz", weak.astype(np.uint8))
        has_mask = index not in unlabelled and index not in no_mask
        has_class = index not in unlabelled and index not in no_class
        if has_mask:
            _write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", mask.astype(np.uint8))
            empty_masks += int(not mask.any())
        rows.append([case_id, f"sub-{subject:02d}", f"imagesTr/{case_id}.nii.gz", large if has_class else ""])
        _count(counts["blob"], has_mask)
        _count(counts["large"], has_class, ("negative", "positive")[large])
    _write_csv(root / "labels.csv", ["case_id", "subject_id", "image", "large"], rows)
    logger.info("wrote %d 3D demo cases under %s", num_cases, root)
    return _summary(root, "demo3d", num_cases, num_subjects, len(unlabelled), counts, empty_masks=empty_masks)


def _brain(
    anatomy: np.random.Generator, rng: np.random.Generator, radius: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A skull-stripped T1-like volume, its lesion mask and a weak (algorithmic) lesion mask.

    ``anatomy`` is the subject's stream (head shape, lesion site, shared by its sessions); ``rng``
    is the session's (noise, lesion growth); ``radius`` the subject's lesion radius in voxels
    (``None``: no lesion).
    """
    size = _SIZE_3D
    grid = np.stack(np.mgrid[0:size, 0:size, 0:size], axis=-1).astype(np.float64) - (size - 1) / 2
    radii = np.array([12.5, 14.0, 11.5]) * anatomy.uniform(0.9, 1.05, 3)
    brain = ((grid / radii) ** 2).sum(-1) < 1
    ventricles = ((grid / (radii * [0.25, 0.35, 0.2])) ** 2).sum(-1) < 1
    tissue = 0.5 + 1.2 * ndimage.gaussian_filter(anatomy.normal(size=(size,) * 3), 3.0)
    tissue[ventricles] = 0.2
    mask = np.zeros((size,) * 3, dtype=bool)
    if radius is not None:
        direction = anatomy.normal(size=3)
        centre = direction / np.linalg.norm(direction) * anatomy.uniform(0.25, 0.5) * radii
        radius *= rng.uniform(0.9, 1.1)
        offset = grid - centre
        dist = np.linalg.norm(offset, axis=-1)
        theta = np.arctan2(offset[..., 1], offset[..., 0])
        boundary = radius * (1 + 0.12 * np.cos(rng.integers(2, 4) * theta + rng.uniform(0, 2 * np.pi)))
        mask = (dist < boundary) & brain
        tissue = np.where(mask, 0.95 + 0.05 * rng.normal(size=mask.shape), tissue)
    volume = np.where(brain, tissue + 0.05 * rng.normal(size=tissue.shape), 0.0).astype(np.float32)
    weak = ndimage.binary_dilation(ndimage.gaussian_filter(volume, 1.0) > 0.75) & brain
    if rng.uniform() < 0.3:  # the algorithm's occasional false positive
        spot = np.argwhere(brain)[rng.integers(int(brain.sum()))]
        weak |= np.linalg.norm(grid - grid[tuple(spot)], axis=-1) < 1.6
    return volume, mask, weak


# ---------------------------------------------------------------------------------------------
# helpers


def _check_count(num_cases: int) -> None:
    if not isinstance(num_cases, int) or num_cases < _MIN_CASES:
        raise ValueError(
            f"num_cases={num_cases!r}: the demo data needs at least {_MIN_CASES} cases per dataset "
            "for stratified, patient-grouped train/val/test splits; pass a larger number (or none for the default)"
        )


def _missing_plan(
    plan: np.random.Generator, n: int, unlabelled: float, no_mask: float, no_class: float
) -> tuple[set[int], set[int], set[int]]:
    """Disjoint sets of case indices: unlabelled, without mask, without class label."""
    order = plan.permutation(n).tolist()
    sizes = [max(1, round(n * f)) for f in (unlabelled, no_mask, no_class)]
    first, second = sizes[0], sizes[0] + sizes[1]
    return set(order[:first]), set(order[first:second]), set(order[second : second + sizes[2]])


def _counter(*classes: str) -> dict[str, int]:
    return {"labelled": 0, "missing": 0, **dict.fromkeys(classes, 0)}


def _count(entry: dict[str, int], present: bool, cls: str | None = None) -> None:
    entry["labelled" if present else "missing"] += 1
    if present and cls is not None:
        entry[cls] += 1


def _summary(
    root: Path, name: str, cases: int, groups: int, unlabelled: int, counts: dict, empty_masks: int
) -> dict[str, Any]:
    spec = _SPEC_DIR / DEMO_SPECS[name]
    return {
        "root": str(root.resolve()),
        "spec": str(spec) if spec.is_file() else None,
        "cases": cases,
        "groups": groups,
        "unlabelled": unlabelled,
        "empty_masks": empty_masks,
        "labels": counts,
    }


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False)


def _write_nifti(path: Path, array: np.ndarray) -> None:
    image = nib.Nifti1Image(array, DEMO_3D_AFFINE)
    image.header.set_xyzt_units("mm")
    image.set_qform(DEMO_3D_AFFINE, code=1)
    image.set_sform(DEMO_3D_AFFINE, code=1)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.write_text(csv_text(header, rows), encoding="utf-8", newline="")  # the same safe cells as every medmtl CSV
