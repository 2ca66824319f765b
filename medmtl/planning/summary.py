"""The dataset part of the fingerprint: per-case statistics reduced to what a plan chooses from.

Why its own module: the reduction is pure data (per-case dicts in, summary dicts out), tested apart from
the reading. Shapes and spacings are reduced per axis (median, min, max) as nnU-Net does. Intensities:
the median over cases of each per-case statistic (min and max: the extremes over all cases), where
nnU-Net pools foreground voxels sampled from every case; the median keeps one odd case from moving the
figures and needs no voxels stored, so a cached case costs nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from medmtl.data.tasks import TaskKind

__all__ = ["summarise_inputs", "summarise_tasks", "summarise_intensity"]

_STAT_KEYS = ("p00_5", "p50", "p99_5", "mean", "std")


def summarise_intensity(stats: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Median over cases of each statistic, minimum of the minima, maximum of the maxima; ``cases`` counted."""
    found = [s for s in stats if s and "min" in s]
    if not found:
        return None
    out: dict[str, Any] = {key: float(np.median([s[key] for s in found])) for key in _STAT_KEYS}
    out["min"] = float(min(s["min"] for s in found))
    out["max"] = float(max(s["max"] for s in found))
    out["cases"] = len(found)
    return out


def summarise_inputs(names: Iterable[str], cases: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per input: channels, median/min/max shape and spacing, orientations, anisotropy, intensities."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        records = [c["inputs"][name] for c in cases.values() if name in (c.get("inputs") or {})]
        if not records:
            continue
        rank = Counter(len(r["shape"]) for r in records).most_common(1)[0][0]
        shapes = np.array([r["shape"] for r in records if len(r["shape"]) == rank], dtype=np.float64)
        spacings = np.array([r["spacing"] for r in records if len(r["spacing"]) == rank], dtype=np.float64)
        median_spacing = np.median(spacings, axis=0)
        channels = Counter(r["channels"] for r in records)
        summary: dict[str, Any] = {
            "channels": channels.most_common(1)[0][0],
            "stored_channels": Counter(r["stored_channels"] for r in records).most_common(1)[0][0],
            "median_shape": [float(v) for v in np.median(shapes, axis=0)],
            "min_shape": [int(v) for v in shapes.min(axis=0)],
            "max_shape": [int(v) for v in shapes.max(axis=0)],
            "median_spacing": [float(v) for v in median_spacing],
            "min_spacing": [float(v) for v in spacings.min(axis=0)],
            "max_spacing": [float(v) for v in spacings.max(axis=0)],
            "orientations": dict(Counter(str(r["orientation"] or "none") for r in records)),
            "anisotropy": float(median_spacing.max() / median_spacing.min()) if median_spacing.min() > 0 else None,
        }
        if len(channels) > 1:
            summary["channel_counts"] = {str(k): v for k, v in sorted(channels.items())}
        summary.update(_intensities(records))
        out[name] = summary
    return out


def _intensities(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """``intensity`` over the foreground of the cases that have one (else whole images), and ``intensity_image``."""
    inside = [r["intensity"] for r in records if r["intensity"].get("region") == "foreground"]
    region = "foreground" if inside else "image"
    chosen = summarise_intensity(inside if inside else (r["intensity_image"] for r in records))
    out: dict[str, Any] = {
        "intensity": {**(chosen or {}), "region": region},
        "intensity_image": summarise_intensity(r["intensity_image"] for r in records),
    }
    per_channel = [r["intensity_channels"] for r in records if r.get("intensity_channels")]
    if per_channel:
        width = max(len(p) for p in per_channel)
        out["intensity_channels"] = [summarise_intensity(p[i] for p in per_channel if len(p) > i) for i in range(width)]
    return out


def summarise_tasks(tasks: Iterable[Any], cases: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: labelled cases, class counts, and for segmentation foreground sizes and components.

    ``class_counts``: image-level tasks count cases per class (multilabel: positives per label);
    segmentation tasks count the labelled cases whose mask holds the class, and give foreground
    fractions and connected components over the masks with foreground (``empty`` counts the others:
    a "no lesion" label must not halve the typical lesion size).
    """
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        entries = [c["tasks"][task.name] for c in cases.values() if task.name in c.get("tasks", {})]
        labelled = [e for e in entries if e.get("labelled")]
        names = list(task.class_names)
        summary: dict[str, Any] = {
            "kind": task.kind.value,
            "num_classes": len(names),
            "classes": names,
            "labelled": len(labelled),
            "missing": len(entries) - len(labelled),
        }
        if task.kind == TaskKind.SEGMENTATION:
            summary.update(_segmentation(labelled, len(names)))
        else:
            summary["class_counts"] = _label_counts(task.kind, [e["label"] for e in labelled], len(names))
        out[task.name] = summary
    return out


def _label_counts(kind: TaskKind, labels: list[Any], width: int) -> list[int]:
    if kind == TaskKind.MULTILABEL:
        return [int(v) for v in np.sum(np.array(labels, dtype=np.int64).reshape(-1, width), axis=0)]
    return [sum(int(label) == i for label in labels) for i in range(width)]


def _segmentation(labelled: list[Mapping[str, Any]], width: int) -> dict[str, Any]:
    """Foreground fractions and component counts over the masks that have foreground (empty ones counted apart)."""
    read = [e for e in labelled if "classes" in e]
    shown = [e for e in read if e["foreground_voxels"] > 0]
    fractions = np.array([e["foreground_fraction"] for e in shown], dtype=np.float64)
    components = np.array([e["components"] for e in shown], dtype=np.float64)
    class_voxels = np.sum([e["class_voxels"] for e in read], axis=0) if read else np.zeros(width)
    return {
        "class_counts": [sum(i in e["classes"] for e in read) for i in range(width)],
        "class_voxels": [int(v) for v in class_voxels],
        "empty": sum(e["foreground_voxels"] == 0 for e in read),
        "foreground_fraction": {
            "median": float(np.median(fractions)) if shown else None,
            "p05": float(np.percentile(fractions, 5)) if shown else None,
            "p95": float(np.percentile(fractions, 95)) if shown else None,
        },
        "components": {
            "median": float(np.median(components)) if shown else None,
            "max": int(components.max()) if shown else None,
        },
    }
