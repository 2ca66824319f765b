"""Reading a file or folder into checked series: grouping, ordering and gaps, one problem list."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medmtl.data.dicom.file_checks import _file_problems, _frames, _pixel_bytes
from medmtl.data.dicom.geometry import _affine, _gap_problems, _Plane, _plane
from medmtl.data.dicom.series import _GAP_ATOL, DicomError, DicomSeries, _candidate_files, _read_header
from medmtl.data.header_guard import max_image_bytes as _image_cap
from medmtl.data.header_guard import size_problem
from medmtl.data.problems import Problem, Severity

__all__ = [
    "scan_dicom",
    "_log_warnings",
    "_mixed_series_problem",
    "_scan",
]  # underscored: shared inside medmtl.data.dicom only

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------- scans


def _single_file(path: Path, ds: Dataset, limit: int | None = None) -> tuple[DicomSeries | None, list[Problem]]:
    problems = _file_problems(path, ds, limit)
    if any(p.severity == Severity.ERROR for p in problems):
        return None, problems
    rows, cols, n = int(ds.Rows), int(ds.Columns), _frames(ds)
    if n == 1:
        plane = _plane(ds, 0)
        series = DicomSeries([path], [ds], "single", _affine(plane, None), (cols, rows), plane.oriented)
        return series, problems
    planes = [_plane(ds, i) for i in range(n)]
    first = planes[0]
    step = None
    if first.oriented and all(p.oriented for p in planes):
        positions = np.stack([p.position for p in planes])
        distances = positions @ first.normal
        if np.ptp(distances) <= _GAP_ATOL:  # cine / time series: every frame at one place
            step = None
        else:
            names = [f"frame {i + 1}" for i in range(n)]
            stack_problems, _ = _gap_problems(distances, names, str(path), unit="frame")
            if stack_problems or not (np.all(np.diff(distances) > 0) or np.all(np.diff(distances) < 0)):
                return None, [
                    Problem(
                        "multiframe_stack",
                        f"its {n} frames are not one evenly spaced stack in file order "
                        f"({len(np.unique(np.round(distances, 3)))} distinct positions): "
                        + "; ".join(p.message for p in stack_problems[:1]),
                        "split the file into one stack per position set (e.g. with highdicom or dcm2niix)",
                        path=str(path),
                    )
                ]
            step = (positions[-1] - positions[0]) / (n - 1)
            problems += _tilt_warning(first, step, str(path))
    affine = _affine(first, step)
    series = DicomSeries([path], [ds], "multiframe", affine, (cols, rows, n), first.oriented)
    return series, problems


def _geometry_warning(plane: _Plane, where: str) -> list[Problem]:
    if plane.oriented:
        return []
    what = "no pixel spacing either (1 mm used)" if plane.spacing is None else "pixel spacing kept"
    return [
        Problem(
            "no_geometry",
            f"no patient position/orientation (ImagePositionPatient/ImageOrientationPatient): identity orientation "
            f"used, {what}",
            "fine for 2D images (ultrasound, secondary captures); for volumes export them with geometry",
            path=where,
            severity=Severity.WARNING,
        )
    ]


def _tilt_warning(plane: _Plane, step: np.ndarray, where: str) -> list[Problem]:
    norm = np.linalg.norm(step)
    if norm > 0 and abs(abs(float(step @ plane.normal)) / norm - 1.0) > 1e-3:
        angle = np.degrees(np.arccos(min(1.0, abs(float(step @ plane.normal)) / norm)))
        return [
            Problem(
                "gantry_tilt",
                f"slices are sheared by {angle:.1f} degrees (gantry tilt); the affine keeps the shear",
                "resample to an orthogonal grid before training if your transforms expect one",
                path=where,
                severity=Severity.WARNING,
            )
        ]
    return []


def _one_warning_per_check(problems: list[Problem], n_files: int, where: str) -> list[Problem]:
    """One warning per check for a whole series (not 300 identical lines), saying how many files have it."""
    by_check: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_check[p.check].append(p)
    return [
        found[0]
        if len(found) == 1
        else Problem(
            check,
            f"{len(found)} of {n_files} files (e.g. {Path(found[0].path or '').name}): {found[0].message}",
            found[0].fix,
            path=where,
            severity=found[0].severity,
        )
        for check, found in by_check.items()
    ]


def _describe(headers: Sequence[Dataset]) -> str:
    ds = headers[0]
    desc = str(ds.get("SeriesDescription", "") or "").strip()
    number = ds.get("SeriesNumber", "?")
    return f"series #{number} {ds.get('Modality', '?')}" + (f" '{desc}'" if desc else "")


def _series_from_files(
    where: Path, items: list[tuple[Path, Dataset]], limit: int | None = None
) -> tuple[DicomSeries | None, list[Problem]]:
    """Sort the files of one series along the slice normal and check it is one regular volume."""
    if len(items) == 1:
        return _single_file(*items[0], limit)
    problems: list[Problem] = []
    for path, ds in items:
        problems += _file_problems(path, ds, limit)
    if any(p.severity == Severity.ERROR for p in problems):
        return None, problems
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        total = sum(_pixel_bytes(ds)[1] for _, ds in items)
        series_size = size_problem(where, total, f"{len(items)} slices", max_bytes=_image_cap(limit))
        if series_size is not None:
            return None, [series_size]
    w = str(where)
    problems = _one_warning_per_check(problems, len(items), w)

    def differ(what: str, values: list, fix: str) -> Problem:
        counts = Counter(values)
        odd = next(p for (p, _), v in zip(items, values, strict=True) if v != counts.most_common(1)[0][0])
        return Problem(
            "inconsistent_slices",
            f"the {len(items)} files of {_describe([items[0][1]])} have {len(counts)} different {what} "
            f"({', '.join(f'{n} x {v}' for v, n in counts.most_common(4))}); e.g. {odd.name} differs",
            fix,
            path=w,
        )

    multi = [p for p, ds in items if _frames(ds) > 1]
    if multi:
        return None, [
            Problem(
                "inconsistent_slices",
                f"{len(multi)} of the {len(items)} files are multi-frame (e.g. {multi[0].name}); a series folder "
                "must hold one 2D image per file",
                "give each multi-frame file on its own",
                path=w,
            )
        ]
    shapes = [(int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))) for _, ds in items]
    if len(set(shapes)) > 1:
        return None, [differ("sizes (rows, columns, samples)", shapes, "remove the odd files (localizers, reformats)")]
    planes = [_plane(ds) for _, ds in items]
    oriented = all(p.oriented for p in planes)
    if oriented:
        iops = [tuple(np.round(np.concatenate([p.row_cos, p.col_cos]), 3)) for p in planes]
        if len({tuple(np.round(np.asarray(i), 2)) for i in iops}) > 1:
            return None, [differ("orientations", iops, "keep the files of one orientation (a scout has several)")]
    spacings = [tuple(np.round(p.spacing, 4)) if p.spacing is not None else None for p in planes]
    if len(set(spacings)) > 1:
        return None, [differ("pixel spacings", spacings, "remove the files with another field of view")]

    names = [p.name for p, _ in items]
    if oriented:
        normal = planes[0].normal
        distances = np.array([p.position @ normal for p in planes])
        order = np.argsort(distances, kind="stable")
        items = [items[i] for i in order]
        planes = [planes[i] for i in order]
        distances = distances[order]
        gap_problems, _ = _gap_problems(distances, [names[i] for i in order], w)
        if gap_problems:
            return None, gap_problems
        step = (planes[-1].position - planes[0].position) / (len(items) - 1)
        problems += _tilt_warning(planes[0], step, w)
        affine = _affine(planes[0], step)
    else:
        numbers = [ds.get("InstanceNumber") for _, ds in items]
        if all(n is not None for n in numbers):
            order = np.argsort([int(n) for n in numbers], kind="stable")
            items = [items[i] for i in order]
        problems += _geometry_warning(planes[0], w)
        affine = _affine(planes[0], None)
    ds0 = items[0][1]
    shape = (int(ds0.Columns), int(ds0.Rows), len(items))
    series = DicomSeries([p for p, _ in items], [ds for _, ds in items], "series", affine, shape, oriented)
    return series, problems


def _scan(path: Path, recursive: bool, limit: int | None = None) -> tuple[list[DicomSeries], list[Problem]]:
    """Every series under ``path`` plus every problem found; never raises (``limit``: the pixel-byte cap)."""
    if not path.exists():
        return [], [Problem("missing_file", "does not exist", "check the path (and the data root)", path=str(path))]
    if path.is_file():
        header = _read_header(path)
        if isinstance(header, Problem):
            return [], [header]
        series, problems = _single_file(path, header, limit)
        return ([series] if series else []), problems

    files = _candidate_files(path, recursive)
    problems: list[Problem] = []
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for file in files:
        header = _read_header(file)
        if isinstance(header, Problem):
            problems.append(header)
        else:
            groups[str(header.get("SeriesInstanceUID", "") or "")].append((file, header))
    if not groups:
        subfolders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        hint = (
            f"; it has {len(subfolders)} sub-folder(s): give one series folder" if subfolders and not recursive else ""
        )
        if not problems:
            problems.append(
                Problem(
                    "empty_folder",
                    f"holds no DICOM file ({len(files)} candidate file(s)){hint}",
                    "point to the folder that contains the .dcm files of one series",
                    path=str(path),
                )
            )
        return [], problems
    all_series = []
    for items in groups.values():
        series, found = _series_from_files(path, items, limit)
        problems += found
        if series is not None:
            all_series.append(series)
    return all_series, problems


def _mixed_series_problem(path: Path, series: list[list[Dataset]]) -> Problem:
    parts = [f"{_describe(headers)}: {len(headers)} file(s)" for headers in series]
    return Problem(
        "mixed_series",
        f"mixes {len(series)} series ({'; '.join(parts)})",
        "put each series in its own folder (or run `medmtl convert-dicom FOLDER OUT_FOLDER`, which writes one "
        "NIfTI per series)",
        path=str(path),
    )


def _log_warnings(problems: Iterable[Problem]) -> None:
    for p in problems:
        if p.severity == Severity.WARNING:
            logger.warning("%s", p)


def scan_dicom(path: str | os.PathLike, *, max_image_bytes: int | None = None) -> DicomSeries:
    """The headers and geometry of the one series in ``path`` (a file or a series folder).

    Args:
        path: a DICOM file (single or multi-frame) or a folder holding the files of one series.
        max_image_bytes: cap on the pixel bytes the headers claim (``None``: ``MEDMTL_MAX_IMAGE_BYTES`` or 2 GiB).

    Returns:
        The series, sorted along its slice normal, ready for :func:`decode_series`.

    Raises:
        DicomError: with every problem found (see :data:`CHECKS`), each naming the file and the fix.
    """
    path = Path(path)
    found, problems = _scan(path, recursive=False, limit=max_image_bytes)
    if len(found) > 1:
        problems.append(_mixed_series_problem(path, [s.headers for s in found]))
    if any(p.severity == Severity.ERROR for p in problems) or not found:
        raise DicomError(problems, context=str(path))
    _log_warnings(problems)
    found[0].warnings = problems
    return found[0]
