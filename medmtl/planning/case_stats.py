"""One case of the fingerprint: read its files once, as training reads them, and keep only statistics.

Why its own module: it runs in worker processes (top-level, picklable job and result), and it must read
files exactly as the training presets do (:class:`~medmtl.data.readers.MedmtlLoadImage` with the channel
first, :class:`~medmtl.transforms.ToGrey` in 2D, :class:`~medmtl.transforms.MergeMasks` with the spec's
``binarize`` / ``values``), so the fingerprint describes what the network will see: MONAI layout (2D
pictures as ``(width, height)``), one grey channel for colour pictures, merged label maps.

Shapes and spacings are given in the axis order training uses: 3D volumes as after reorienting to RAS
(the presets' ``Orientationd``), so the plan's per-axis spacing and ROI apply as they are; the file's own
orientation code is kept beside them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medmtl.data.problems import Problem

__all__ = ["CaseJob", "CaseResult", "MaskRule", "file_digest", "intensity_stats", "read_case"]

_NO_GEOMETRY_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".npy", ".npz", ".raw")
"""Formats that store no orientation (bitmaps, arrays, headerless raw): their orientation is ``None``."""
_PERCENTILES = (0.5, 50.0, 99.5)


@dataclass(frozen=True)
class MaskRule:
    """How one segmentation task's mask files become a label map (the spec's strong ``label``)."""

    task: str
    num_classes: int
    binarize: bool = False
    values: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class CaseJob:
    """What a worker needs to fingerprint one case: its files by input / task, and the mask rules."""

    case_id: str
    inputs: tuple[tuple[str, tuple[str, ...]], ...]
    masks: tuple[tuple[MaskRule, tuple[str, ...]], ...]
    spatial_dims: int


@dataclass
class CaseResult:
    """A case's file digests and statistics (``None`` when a file could not be read: see ``problems``)."""

    case_id: str
    files: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, dict] | None = None
    masks: dict[str, dict] | None = None
    problems: list[Problem] = field(default_factory=list)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes; of a DICOM series folder, over its files' names and digests (sorted)."""
    path = Path(path)
    if path.is_dir():
        outer = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            outer.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
        return outer.hexdigest()
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def intensity_stats(values: np.ndarray) -> dict[str, float] | None:
    """Percentiles 0.5 / 50 / 99.5, mean, std, min and max of the finite values (``None`` if there is none)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, mid, high = np.percentile(values, _PERCENTILES)
    return {
        "p00_5": float(low),
        "p50": float(mid),
        "p99_5": float(high),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


@lru_cache(maxsize=1)
def _loader() -> Any:
    from medmtl.data.readers import make_loader

    return make_loader(None, ensure_channel_first=True)


def _load(paths: tuple[str, ...]) -> Any:
    """The file(s) as one channel-first MetaTensor (several files: one channel each, as ``LoadImaged``)."""
    return _loader()(paths[0] if len(paths) == 1 else list(paths))


def read_case(job: CaseJob) -> CaseResult:
    """Digest and read every file of one case once; problems instead of exceptions (top level: picklable)."""
    result = CaseResult(case_id=job.case_id)
    try:
        _read_case(job, result)
    except Exception as err:  # noqa: BLE001 - one bad case must not hide the others' findings
        result.inputs = result.masks = None
        result.problems.append(
            Problem(
                "fingerprint_failed",
                f"the fingerprint failed on this case: {type(err).__name__}: {' '.join(str(err).split())[:300]}",
                "run `medmtl validate` on the dataset; if it finds nothing, report this as a medmtl bug with the file",
                case_id=job.case_id,
            )
        )
    return result


def _read_case(job: CaseJob, result: CaseResult) -> None:
    from medmtl.transforms.array import MergeMasks, ToGrey

    for _, paths in (*job.inputs, *job.masks):
        for path in paths:
            result.files[path] = file_digest(path)
    labels: dict[str, np.ndarray] = {}
    masks: dict[str, dict] = {}
    for rule, paths in job.masks:
        mask = _read(paths, f"mask of task '{rule.task}'", job, result)
        if mask is None:
            continue
        merged = MergeMasks(binarize=rule.binarize, values=dict(rule.values))(mask)
        label = np.rint(np.asarray(merged)[0]).astype(np.int64)
        labels[rule.task] = label
        masks[rule.task] = _mask_stats(label, rule.num_classes)
    inputs: dict[str, dict] = {}
    for key, paths in job.inputs:
        image = _read(paths, f"input '{key}'", job, result)
        if image is None:
            continue
        stored = int(image.shape[0])
        if job.spatial_dims == 2:
            image = ToGrey()(image)
        array = np.asarray(image)
        foreground = [label != 0 for label in labels.values() if label.shape == array.shape[1:]]
        inputs[key] = {
            **_geometry(image, paths[0], job.spatial_dims),
            "channels": int(array.shape[0]),
            "stored_channels": stored,
            **_intensity(array, np.logical_or.reduce(foreground) if foreground else None),
        }
    if not result.problems:
        result.inputs, result.masks = inputs, masks


def _read(paths: tuple[str, ...], role: str, job: CaseJob, result: CaseResult) -> Any:
    from medmtl.data.readers import diagnose_unreadable

    try:
        return _load(paths)
    except Exception as err:  # noqa: BLE001 - every reader failure is a finding
        found = list(getattr(err, "problems", []))
        if not found:
            message, fix = diagnose_unreadable(paths[0], err)
            found = [Problem("unreadable_file", message, fix, path=paths[0])]
        for problem in found:
            result.problems.append(
                Problem(
                    problem.check,
                    f"cannot read {role}: {problem.message}",
                    problem.fix,
                    path=problem.path or paths[0],
                    case_id=job.case_id,
                    severity=problem.severity,
                )
            )
        return None


def _geometry(image: Any, path: str, dims: int) -> dict[str, Any]:
    """Spatial shape and spacing in training's axis order (3D: RAS), and the file's orientation code."""
    import nibabel as nib

    meta = getattr(image, "meta", None) or {}
    raw = meta.get("affine")
    affine = np.asarray(raw if raw is not None else np.eye(dims + 1), dtype=np.float64)
    if affine.ndim != 2 or affine.shape[0] != affine.shape[1] or affine.shape[0] < dims + 1:
        affine = np.eye(dims + 1)
    rows = affine.shape[0] - 1
    shape = [int(s) for s in image.shape[1:]]
    spacing = [float(s) for s in np.linalg.norm(affine[:rows, :dims], axis=0)]
    geometry_kept = not path.lower().endswith(_NO_GEOMETRY_SUFFIXES) and not (dims == 2 and rows < 3)
    orientation = None
    if geometry_kept and rows == 3:
        world = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine if str(meta.get("space", "RAS")) == "LPS" else affine
        orientation = "".join(nib.orientations.aff2axcodes(world))[:dims]
        if dims == 3:
            ornt = nib.orientations.io_orientation(world)
            if np.all(np.isfinite(ornt)) and sorted(ornt[:, 0].astype(int)) == [0, 1, 2]:
                order = [0] * 3
                for axis, (target, _) in enumerate(ornt):
                    order[int(target)] = axis
                shape, spacing = [shape[a] for a in order], [spacing[a] for a in order]
    return {"shape": shape, "spacing": spacing, "orientation": orientation}


def _intensity(array: np.ndarray, foreground: np.ndarray | None) -> dict[str, Any]:
    """Statistics over the foreground (where a mask marks one) and over the whole image; per channel if several."""
    whole = intensity_stats(array)
    inside = intensity_stats(array[:, foreground]) if foreground is not None and foreground.any() else None
    region, chosen = ("foreground", inside) if inside is not None else ("image", whole)
    out: dict[str, Any] = {"intensity": {**(chosen or {}), "region": region}, "intensity_image": whole}
    if array.shape[0] > 1:
        out["intensity_channels"] = [
            intensity_stats(channel[foreground] if region == "foreground" else channel) for channel in array
        ]
    return out


def _mask_stats(label: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Classes present, voxels per class, foreground size and connected components (face connectivity)."""
    counts = np.bincount(np.clip(label.ravel(), 0, None), minlength=num_classes)[:num_classes]
    foreground = label != 0
    voxels = int(foreground.sum())
    _, components = ndimage.label(foreground)
    return {
        "shape": [int(s) for s in label.shape],
        "classes": [int(c) for c in np.flatnonzero(counts)],
        "class_voxels": [int(c) for c in counts],
        "foreground_voxels": voxels,
        "foreground_fraction": voxels / label.size if label.size else 0.0,
        "components": int(components),
    }
