"""Small brain-MRI-like NIfTI data in the ``brain_nifti.yaml`` layout, stored in a non-RAS geometry.

Why a second brain writer (``tests/data/layouts.py`` has one): the bundle tests must show that
masks come back in each input's own geometry, so the volumes here are stored the way scanners
often write them, not in RAS: axes permuted (coronal-like slices), one axis flipped, anisotropic
voxels and an origin offset. Each case has a bright ellipsoid "brain", two tissue classes inside
it, a weaker (dilated) machine mask, and an abnormal flag that follows a bright spot.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["BRAIN_AFFINE", "BRAIN_SCENARIO_SHAPE", "write_brain_scenario"]

BRAIN_SCENARIO_SHAPE = (22, 14, 18)
BRAIN_AFFINE = np.array(
    [
        [-1.5, 0.0, 0.0, 40.0],  # first array axis: right -> left (flipped), 1.5 mm
        [0.0, 0.0, 1.2, -30.0],  # third array axis: posterior -> anterior, 1.2 mm
        [0.0, 2.0, 0.0, -20.0],  # second array axis: inferior -> superior, 2.0 mm (the slice axis)
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, BRAIN_AFFINE), path)


def write_brain_scenario(base: Path, cases: int = 10, unlabelled: int = 2) -> Path:
    """``imagesTr``/``labelsTr``/``labelsWeak``/``labelsTissue``/``labels.csv``/``imagesTs`` under ``base/brain_nifti``."""
    root = Path(base) / "brain_nifti"
    shape = BRAIN_SCENARIO_SHAPE
    rows = []
    for index in range(cases + unlabelled):
        rng = np.random.default_rng(index)
        centre = tuple(s / 2 + rng.uniform(-1.5, 1.5) for s in shape)
        brain = _ellipsoid(shape, centre, tuple(s * 0.33 for s in shape))
        inner = _ellipsoid(shape, centre, tuple(s * 0.2 for s in shape))
        abnormal = index % 2
        image = rng.normal(10.0, 3.0, shape).astype(np.float32)
        image[brain] += 60.0
        image[inner] += 30.0
        if abnormal:
            spot = _ellipsoid(shape, centre, (2.0, 2.0, 2.0))
            image[spot] += 80.0
        case = f"S{index:02d}"
        if index >= cases:
            _save(root / "imagesTs" / f"{case}.nii.gz", image)
            continue
        _save(root / "imagesTr" / f"{case}.nii.gz", image)
        _save(root / "labelsTr" / f"{case}.nii.gz", brain.astype(np.uint8))
        weak = _ellipsoid(shape, centre, tuple(s * 0.38 for s in shape))
        _save(root / "labelsWeak" / f"{case}.nii.gz", weak.astype(np.uint8))
        tissue = brain.astype(np.uint8) * 2
        tissue[inner] = 3
        _save(root / "labelsTissue" / f"{case}.nii.gz", tissue)
        rows.append((case, f"P{index:02d}", abnormal))
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("case_id", "patient_id", "abnormal"))
        writer.writerows(rows)
    return root
