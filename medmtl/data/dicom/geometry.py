"""Where a DICOM slice or frame lies: planes, affines and gaps between slices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medmtl.data.dicom.series import _GAP_ATOL, _GAP_RTOL
from medmtl.data.problems import Problem

__all__ = [
    "_Plane",
    "_affine",
    "_functional_item",
    "_gap_problems",
    "_plane",
]  # underscored: shared inside medmtl.data.dicom only


# -------------------------------------------------------------------------------------- geometry


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def _functional_item(ds: Dataset, sequence: str, frame: int | None) -> Dataset | None:
    """``sequence``'s item for ``frame`` in the per-frame functional groups, else in the shared ones."""
    if frame is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame is not None and frame < len(per_frame) and per_frame[frame].get(sequence):
            return per_frame[frame].get(sequence)[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0].get(sequence)[0]
    return None


def _attr(ds: Dataset, keyword: str, sequence: str, frame: int | None = None) -> Any:
    """A plane attribute, top-level first, then from the (per-frame, shared) functional groups."""
    if keyword in ds:
        return ds.get(keyword)
    item = _functional_item(ds, sequence, frame)
    return item.get(keyword) if item is not None else None


@dataclass
class _Plane:
    row_cos: np.ndarray | None  # direction of increasing column index (along a row), LPS
    col_cos: np.ndarray | None  # direction of increasing row index, LPS
    spacing: np.ndarray | None  # (between rows, between columns) in mm, as PixelSpacing
    position: np.ndarray | None  # centre of the first transmitted pixel, LPS mm
    thickness: float | None

    @property
    def oriented(self) -> bool:
        return self.row_cos is not None and self.position is not None

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cos, self.col_cos)


def _plane(ds: Dataset, frame: int | None = None) -> _Plane:
    iop = _floats(_attr(ds, "ImageOrientationPatient", "PlaneOrientationSequence", frame) or (), 6)
    ipp = _floats(_attr(ds, "ImagePositionPatient", "PlanePositionSequence", frame) or (), 3)
    spacing = None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        spacing = _floats(_attr(ds, keyword, "PixelMeasuresSequence", frame) or (), 2)
        if spacing is not None and (spacing > 0).all():
            break
        spacing = None
    thickness = None
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _floats([_attr(ds, keyword, "PixelMeasuresSequence", frame)], 1)
        if value is not None and value[0] > 0:
            thickness = float(value[0])
            break
    row_cos = col_cos = None
    if iop is not None and np.linalg.norm(iop[:3]) > 0.5 and np.linalg.norm(iop[3:]) > 0.5:
        row_cos, col_cos = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    return _Plane(row_cos, col_cos, spacing, ipp, thickness)


def _affine(plane: _Plane, step: np.ndarray | None) -> np.ndarray:
    """RAS affine of a (columns, rows, slices) array whose first plane is ``plane``; ``step`` in LPS mm."""
    spacing = plane.spacing if plane.spacing is not None else np.ones(2)
    if not plane.oriented:  # no patient space: spacing only, identity orientation in the array's own frame
        return np.diag([spacing[1], spacing[0], plane.thickness or 1.0, 1.0])
    lps = np.eye(4)
    lps[:3, 0] = plane.row_cos * spacing[1]
    lps[:3, 1] = plane.col_cos * spacing[0]
    lps[:3, 2] = step if step is not None else plane.normal * (plane.thickness or 1.0)
    lps[:3, 3] = plane.position
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _gap_problems(
    distances: np.ndarray, names: Sequence[str], where: str, unit: str = "slice"
) -> tuple[list[Problem], float]:
    """Duplicate positions, missing slices and uneven gaps along one stack; returns problems and the gap."""
    gaps = np.diff(distances)
    tol = lambda g: _GAP_RTOL * abs(g) + _GAP_ATOL  # noqa: E731
    dup = np.nonzero(np.abs(gaps) <= _GAP_ATOL)[0]
    if dup.size:
        i = int(dup[0])
        return [
            Problem(
                "duplicate_slices",
                f"{dup.size} {unit}(s) share a position with another (e.g. {names[i]} and {names[i + 1]} at "
                f"{distances[i]:.3f} mm): the {unit}s hold several echoes, time points or acquisitions of one series",
                "split the files into one folder per echo / time point (e.g. by EchoNumbers or AcquisitionNumber)",
                path=where,
            )
        ], 0.0
    step = float(np.median(gaps))
    bad = np.nonzero(np.abs(gaps - step) > tol(step))[0]
    if not bad.size:
        return [], step
    problems = []
    multiples = gaps[bad] / step
    if np.all((np.abs(multiples - np.round(multiples)) * abs(step) <= tol(step)) & (np.round(multiples) >= 2)):
        for i, k in zip(bad, np.round(multiples).astype(int), strict=True):
            problems.append(
                Problem(
                    "missing_slices",
                    f"{k - 1} {unit}(s) missing between {names[i]} and {names[i + 1]}: gap of {abs(gaps[i]):.3f} mm "
                    f"where the series is spaced {abs(step):.3f} mm ({len(distances)} {unit}s found)",
                    "export the complete series again from the PACS; a volume with a hole has the wrong geometry",
                    path=where,
                )
            )
    else:
        i = int(bad[0])
        problems.append(
            Problem(
                "uneven_spacing",
                f"{unit}s are not evenly spaced: gaps from {np.abs(gaps).min():.3f} to {np.abs(gaps).max():.3f} mm "
                f"(median {abs(step):.3f} mm; first odd gap {abs(gaps[i]):.3f} mm between {names[i]} and "
                f"{names[i + 1]})",
                "resample the series onto a regular grid (e.g. with SimpleITK) or export it again; "
                "a single affine cannot describe uneven slices",
                path=where,
            )
        )
    return problems, step
