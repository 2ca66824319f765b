"""Checks on what a file holds: finite values, mask classes, colour masks, and grids that must agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.problems import Problem, Severity
from medmtl.data.validate.jobs import _CaseJob, _Grid, _MaskRule

__all__ = [
    "_check_finite",
    "_check_mask_values",
    "_colour_mask",
    "_compare",
    "_grid",
    "_spatial_shape",
]  # underscored: shared inside medmtl.data.validate only


def _spatial_shape(
    shape: tuple[int, ...], spatial_dims: int, channel_sizes: set[int]
) -> tuple[tuple[int, ...] | None, int | None]:
    """``(spatial shape, channel axis)``: a trailing or leading channel axis is allowed."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == spatial_dims:
        return shape, None
    if len(shape) == spatial_dims + 1:
        if shape[-1] in channel_sizes:
            return shape[:-1], len(shape) - 1
        if shape[0] in channel_sizes:
            return shape[1:], 0
    return None, None


def _check_finite(array: np.ndarray, role: str, path: str, case_id: str, problems: list[Problem]) -> None:
    """Report NaN/Inf voxels."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(array.size - finite.sum()) - n_nan
    problems.append(
        Problem(
            "non_finite",
            f"{role} has {n_nan} NaN and {n_inf} Inf voxel(s) of {array.size}",
            "replace them in the file (e.g. by 0 or the background value), or re-export it",
            path=path,
            case_id=case_id,
        )
    )


def _colour_mask(array: np.ndarray, role: str, path: str, case_id: str, problems: list[Problem]) -> np.ndarray | None:
    """A 2D mask stored as RGB(A): usable (channel 0) when the colour channels agree."""
    colours = array[..., :3]
    if np.all(colours == colours[..., :1]):
        problems.append(
            Problem(
                "colour_mask",
                f"{role} is stored with {array.shape[-1]} identical colour channels",
                "save masks as single-channel (grey / label) images",
                path=path,
                case_id=case_id,
                severity=Severity.WARNING,
            )
        )
        return array[..., 0]
    problems.append(
        Problem(
            "colour_mask",
            f"{role} has {array.shape[-1]} colour channels with different values: a mask needs one channel",
            "convert the mask to a single-channel label image (one integer per class)",
            path=path,
            case_id=case_id,
        )
    )
    return None


def _check_mask_values(
    array: np.ndarray, rule: _MaskRule, role: str, path: str, job: _CaseJob, problems: list[Problem]
) -> tuple[set[int], bool]:
    """Non-integer values and values outside the task's classes (non-finite ones are reported apart).

    Returns:
        The classes present, and whether any voxel is non-zero after the mapping.
    """
    values, counts = np.unique(array, return_counts=True)
    keep = np.isfinite(values)
    values, counts = values[keep], counts[keep]
    if rule.binarize:
        classes = {int(v != 0) for v in values}
        return classes, 1 in classes
    integral = values == np.round(values)
    if not integral.all():
        odd = values[~integral]
        problems.append(
            Problem(
                "non_integer_mask",
                f"{role} has {int(counts[~integral].sum())} voxel(s) with non-integer values (e.g. {_examples(odd)})",
                "save masks as integer label maps (resample them with nearest-neighbour interpolation), "
                "or set 'binarize: true' on the task's label in the spec",
                path=path,
                case_id=job.case_id,
            )
        )
    mapping = dict(rule.values)
    present: set[int] = set()
    bad: list[tuple[int, int]] = []
    for value, count in zip(values[integral], counts[integral], strict=True):
        raw = int(value)
        mapped = mapping.get(raw, raw)
        if 0 <= mapped < rule.num_classes:
            present.add(mapped)
        else:
            bad.append((raw, int(count)))
    if bad:
        listed = ", ".join(f"{raw} ({count} voxels)" for raw, count in bad[:10])
        problems.append(
            Problem(
                "label_out_of_range",
                f"{role} has values {listed} outside the classes 0..{rule.num_classes - 1}{rule.describe()}",
                "fix the mask, or map the values in the spec (label 'values: {255: 1}' or 'binarize: true'), "
                "or add the classes to the task",
                path=path,
                case_id=job.case_id,
            )
        )
    foreground = bool(present - {0}) or bool(bad) or bool(np.any(values[~integral] != 0))
    return present, foreground


def _examples(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(f"{float(v):g}" for v in values[:limit])
    return shown + (f", ... ({len(values)} distinct)" if len(values) > limit else "")


def _grid(image: Any, path: str, role: str, spatial: tuple[int, ...], spatial_dims: int) -> _Grid:
    raw = getattr(image, "affine", None)
    affine = np.asarray(raw if raw is not None else np.eye(spatial_dims + 1), dtype=float)
    if affine.ndim != 2 or affine.shape[0] != affine.shape[1] or affine.shape[0] < 2:
        affine = np.eye(spatial_dims + 1)
    rows = affine.shape[0] - 1
    axes = min(spatial_dims, rows)
    columns = affine[:rows, :axes]
    spacing = np.linalg.norm(columns, axis=0)
    direction = columns / np.where(spacing > 0, spacing, 1.0)
    return _Grid(
        path=path,
        role=role,
        shape=spatial,
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in affine[:rows, -1]),
        direction=tuple(tuple(float(d) for d in row) for row in direction),
    )


def _same_view_scaled(shape: tuple[int, ...], reference: tuple[int, ...]) -> bool:
    """Two 2D shapes that differ by one whole-number factor on every axis (same field of view)."""
    if len(shape) != 2 or len(reference) != 2 or min(*shape, *reference) <= 0:
        return False
    big, small = (reference, shape) if reference[0] >= shape[0] else (shape, reference)
    factors = {b / s for b, s in zip(big, small, strict=True)}
    return len(factors) == 1 and float(next(iter(factors))).is_integer()


def _compare(
    grid: _Grid,
    reference: _Grid,
    shape_check: str,
    job: _CaseJob,
    problems: list[Problem],
    scaled_ok: bool = False,
) -> None:
    """Shape, spacing, origin and orientation of ``grid`` against ``reference``."""
    versus = f"{reference.role} ({Path(reference.path).name})"

    def add(check: str, message: str, fix: str, severity: Severity = Severity.ERROR) -> None:
        problems.append(Problem(check, message, fix, path=grid.path, case_id=job.case_id, severity=severity))

    if scaled_ok and grid.shape != reference.shape and _same_view_scaled(grid.shape, reference.shape):
        # 2D masks drawn at a whole-number fraction of the image resolution (JSRT's SCR masks are
        # 1024 px for 2048 px images): the 2D presets resize image and masks to one size, so they line up
        return
    if grid.shape != reference.shape:
        add(
            shape_check,
            f"{grid.role} has shape {grid.shape} but {versus} has {reference.shape}",
            "the files of a case must be on the same voxel grid: re-export or resample the mask onto the image",
        )
        return
    tol = job.tolerance
    spacing, ref_spacing = np.array(grid.spacing), np.array(reference.spacing)
    if not np.allclose(spacing, ref_spacing, rtol=tol.spacing_rtol, atol=1e-6):
        add(
            "spacing_mismatch",
            f"{grid.role} has spacing {_fmt(spacing)} but {versus} has {_fmt(ref_spacing)}",
            "resample the mask onto the image grid (nearest neighbour), or fix the file's header",
        )
        return
    if not np.allclose(grid.direction, reference.direction, rtol=0, atol=tol.direction_atol):
        add(
            "orientation_mismatch",
            f"{grid.role} has axis directions {_fmt(np.array(grid.direction))} but {versus} has "
            f"{_fmt(np.array(reference.direction))} (same shape and spacing)",
            "check that the mask is not flipped; reorient both files the same way (e.g. RAS) to be sure",
            Severity.WARNING,
        )
        return
    origin, ref_origin = np.array(grid.origin), np.array(reference.origin)
    smallest = float(ref_spacing.min(initial=1.0))
    limit = tol.origin_voxels * (smallest if smallest > 0 else 1.0)
    if np.abs(origin - ref_origin).max(initial=0.0) > limit:
        add(
            "affine_mismatch",
            f"{grid.role} has origin {_fmt(origin)} but {versus} has {_fmt(ref_origin)}: "
            "the grids are shifted against each other",
            "re-export the mask from the image it was drawn on, or copy the image's affine into the mask "
            "if only the header is wrong",
        )


def _fmt(values: np.ndarray) -> str:
    return str(np.round(values, 4).tolist())
