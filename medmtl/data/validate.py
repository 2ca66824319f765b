"""Check a whole dataset before training: every problem of every case, in one report.

A training run must not die on case 312 of 400, or silently learn from a mask that is shifted,
rescaled or full of 255s. :func:`validate_dataset` runs nnU-Net's ``verify_dataset_integrity``
checks (file presence, readability, NaNs, label values, image/label shape and spacing) plus the
ones a multi-task, multi-format toolkit needs (ranks, several masks per case, weak-label masks,
DICOM folders), but never stops at the first finding: the spec, the case table and every file are checked, and
the user gets one list of :class:`~medmtl.data.problems.Problem` s, each naming the file, the
check and the fix.

Files are opened by top-level, picklable functions that return only findings and a few counts,
never arrays, so the main process stays small on datasets of any size. They run in this process
first; when the remaining work is estimated to outweigh the start-up of worker processes (each
imports torch and MONAI, seconds), a ``spawn`` pool (as in nnU-Net) takes the rest with this process
still helping, so 780 small PNGs take seconds and large 3D datasets still get every core.

Before a file is read, it must be a regular readable file (a FIFO, device or socket is reported without
being opened), its header must claim no more than the file holds and than ``max_image_bytes`` (default
2 GiB per image, environment variable ``MEDMTL_MAX_IMAGE_BYTES``; see :mod:`medmtl.data.header_guard`),
and its format must be what medmtl reads (colour model, palette, alpha, frames, NIfTI affine; see
:mod:`medmtl.data.format_checks`). Each file is read under a time limit (``file_timeout_s``, default
120 s, environment variable ``MEDMTL_FILE_TIMEOUT_S``): a file on a stalled network mount becomes a
``read_timeout`` finding naming it, later files of the same folder are skipped, and the report goes on.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.format_checks import affine_problem, extreme_value_problem, pil_problems
from medmtl.data.header_guard import file_kind_problem, header_problems, max_image_bytes
from medmtl.data.problems import DataError, Problem, Severity, format_problems
from medmtl.data.spec import DatasetSpec, SpecError, load_spec
from medmtl.data.splits import SPLIT_NAMES
from medmtl.data.tasks import TaskKind, present_key

__all__ = [
    "DEFAULT_FILE_TIMEOUT_S",
    "FILE_TIMEOUT_ENV",
    "DatasetExit",
    "DatasetInvalidError",
    "GeometryTolerance",
    "ValidationReport",
    "require_valid_dataset",
    "validate_dataset",
]

logger = logging.getLogger(__name__)

_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_EMPTY_EXAMPLES = 5  # case ids quoted in the empty-mask warning (the JSON report lists all)
_WEAK_SUFFIX = ":weak"  # empty_masks key of a task's weak masks
DEFAULT_FILE_TIMEOUT_S = 120.0
"""Longest wait for one file (header checks, reading and value checks) before it is reported as timed out."""
FILE_TIMEOUT_ENV = "MEDMTL_FILE_TIMEOUT_S"
"""Environment variable overriding :data:`DEFAULT_FILE_TIMEOUT_S` (seconds)."""
_NOT_DICOM_SUFFIXES = {".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".npy", ".npz"}


@dataclass(frozen=True)
class GeometryTolerance:
    """How far two grids of one case may differ and still count as the same grid.

    Args:
        spacing_rtol: relative difference allowed between voxel sizes.
        origin_voxels: origin difference allowed, as a fraction of the smallest voxel size.
        direction_atol: difference allowed between direction cosines (beyond it: an orientation
            mismatch, reported as a warning).
    """

    spacing_rtol: float = 1e-3
    origin_voxels: float = 1e-2
    direction_atol: float = 1e-3


# ---------------------------------------------------------------------------------------------
# the report


@dataclass
class ValidationReport:
    """Everything :func:`validate_dataset` found, plus the label counts of a usable dataset.

    Attributes:
        problems: every finding (errors and warnings), spec, structure and file checks together.
        dataset: the spec's ``name`` (``None`` when the spec could not be read).
        spec_path: the spec file, when the spec came from one.
        root: the data root the cases were resolved against.
        num_cases: cases in the case table (cases whose inputs are missing are not counted).
        files_checked: input and mask files opened.
        split_counts: ``{split: cases}``.
        label_counts: ``{split: {task: {"labelled", "missing", <class>: cases}}}`` with an ``all``
            split; for segmentation tasks the class counts are cases whose mask contains the class
            (only when files were checked).
        empty_masks: ``{task: [case_id, ...]}`` of all-background masks (``"<task>:weak"`` for weak-label
            masks).
        duration_s: wall time of the validation.
        workers: processes used for the file checks (1: in-process).
        check_files: whether files were opened at all.
    """

    problems: list[Problem] = field(default_factory=list)
    dataset: str | None = None
    spec_path: str | None = None
    root: str | None = None
    num_cases: int = 0
    files_checked: int = 0
    split_counts: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    empty_masks: dict[str, list[str]] = field(default_factory=dict)
    duration_s: float = 0.0
    workers: int = 1
    check_files: bool = True

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == Severity.WARNING]

    @property
    def ok(self) -> bool:
        """True when no problem is an error (warnings do not block training)."""
        return not self.errors

    def check_counts(self) -> dict[str, dict[str, int]]:
        """``{severity: {check: count}}``."""
        counts: dict[str, dict[str, int]] = {}
        for p in self.problems:
            by_check = counts.setdefault(p.severity.value, {})
            by_check[p.check] = by_check.get(p.check, 0) + 1
        return {sev: dict(sorted(c.items())) for sev, c in sorted(counts.items())}

    def format(self) -> str:
        """Human-readable report: every problem one per line and a count per check; when there is
        no error, the label-count table per task and split."""
        name = self.dataset or (Path(self.spec_path).name if self.spec_path else "dataset")
        where = f" under {self.root}" if self.root else ""
        if self.dataset is None:
            head = f"{self.spec_path}: the spec cannot be used"
        else:
            head = (
                f"{name}: {self.num_cases} cases{where}, {self.files_checked} files checked "
                f"in {self.duration_s:.1f} s ({self.workers} worker{'s' if self.workers != 1 else ''})"
            )
        lines = [head]
        if self.problems:
            lines.append(format_problems(self.problems))
        if not self.ok:
            lines.append(
                f"FAILED: {len(self.errors)} error(s), {len(self.warnings)} warning(s); "
                "fix every error above, then run again"
            )
            return "\n".join(lines)
        if not self.check_files:
            lines.append("files were not opened (--no-files): only the spec and the case table were checked")
        lines.append(self._format_table())
        lines.append(f"OK: no errors, {len(self.warnings)} warning(s)")
        return "\n".join(lines)

    def _format_table(self) -> str:
        splits = [s for s in (*SPLIT_NAMES, "all") if s in self.label_counts]
        if not splits:
            return "no cases"
        order = ", ".join(f"{s} {self.split_counts[s]}" for s in SPLIT_NAMES if s in self.split_counts)
        lines = [f"splits: {order}"]
        for task in self.label_counts[splits[-1]]:
            columns = list(self.label_counts[splits[-1]][task])
            rows = [["split", *columns]]
            rows += [[s, *(str(self.label_counts[s][task].get(c, 0)) for c in columns)] for s in splits]
            widths = [max(len(r[i]) for r in rows) for i in range(len(columns) + 1)]
            lines.append(f"task {task}:")
            for row in rows:
                cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
                lines.append("  " + "  ".join(cells))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: ok, counts per check, every problem, label counts."""
        return {
            "ok": self.ok,
            "dataset": self.dataset,
            "spec": self.spec_path,
            "root": self.root,
            "num_cases": self.num_cases,
            "files_checked": self.files_checked,
            "duration_s": round(self.duration_s, 3),
            "workers": self.workers,
            "check_files": self.check_files,
            "num_errors": len(self.errors),
            "num_warnings": len(self.warnings),
            "check_counts": self.check_counts(),
            "problems": [p.to_dict() for p in self.problems],
            "split_counts": self.split_counts,
            "label_counts": self.label_counts,
            "empty_masks": self.empty_masks,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


# ---------------------------------------------------------------------------------------------
# per-case work (top level, picklable: runs in worker processes)


@dataclass(frozen=True)
class _MaskRule:
    """How one task's mask voxels become class indices (the spec's ``binarize`` / ``values``)."""

    task: str
    num_classes: int
    binarize: bool = False
    values: tuple[tuple[int, int], ...] = ()
    weak: bool = False
    """A ``weak_label`` mask (machine-made): checked like the strong one, counted apart."""
    scaled: bool = False
    """The spec declares the mask at a whole-number fraction of the image resolution (2D)."""

    @property
    def role(self) -> str:
        return f"{'weak mask' if self.weak else 'mask'} of task '{self.task}'"

    @property
    def key(self) -> str:
        """The task's key in ``empty_masks`` (weak masks apart from the strong ones)."""
        return f"{self.task}{_WEAK_SUFFIX if self.weak else ''}"

    def describe(self) -> str:
        if self.binarize:
            return " (binarize: true)"
        return f" (after the spec's values map {dict(self.values)})" if self.values else ""


@dataclass(frozen=True)
class _CaseJob:
    case_id: str
    inputs: tuple[tuple[str, tuple[str, ...]], ...]
    masks: tuple[tuple[_MaskRule, tuple[str, ...]], ...]
    spatial_dims: int
    same_grid_inputs: bool
    tolerance: GeometryTolerance
    max_image_bytes: int | None = None
    """Cap on one file's decoded size (``None``: ``MEDMTL_MAX_IMAGE_BYTES`` or 2 GiB)."""
    file_timeout_s: float = DEFAULT_FILE_TIMEOUT_S


@dataclass
class _CaseResult:
    case_id: str
    problems: list[Problem]
    files: int = 0
    classes_present: dict[str, tuple[int, ...]] = field(default_factory=dict)
    empty: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Grid:
    """Shape and geometry of one file, without its voxels."""

    path: str
    role: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]


def _init_worker() -> None:
    """Worker set-up: one torch thread per process (the pool provides the parallelism)."""
    import torch

    torch.set_num_threads(1)
    logging.getLogger("monai").setLevel(logging.ERROR)


def _check_case(job: _CaseJob) -> _CaseResult:
    """Open every input and mask of one case and check them; returns findings, never arrays."""
    result = _CaseResult(case_id=job.case_id, problems=[])
    try:
        _run_case_checks(job, result)
    except Exception as err:  # noqa: BLE001 - a checker bug must not hide the other cases' findings
        result.problems.append(
            Problem(
                "check_failed",
                f"the checker failed on this case: {_describe(err)}",
                "report this as a medmtl bug (with the file), and check the case's files by hand",
                case_id=job.case_id,
            )
        )
    return result


def _run_case_checks(job: _CaseJob, result: _CaseResult) -> None:
    problems = result.problems
    reference: _Grid | None = None
    for key, paths in job.inputs:
        for path in paths:
            grid, _, _ = _inspect(path, f"input '{key}'", job, None, problems)
            result.files += 1
            if grid is None:
                continue
            if reference is None:
                reference = grid
            elif job.same_grid_inputs:
                _compare(grid, reference, "shape_mismatch", job, problems)
    first_mask: _Grid | None = None
    present: dict[str, tuple[int, ...]] = {}
    empty: list[str] = []
    for rule, paths in job.masks:
        task_first: _Grid | None = None
        classes: set[int] = set()
        readable = 0
        any_foreground = False
        unchecked = False  # a file whose values could not be read (colour mask): emptiness unknown
        for path in paths:
            grid, found, foreground = _inspect(path, rule.role, job, rule, problems)
            result.files += 1
            if grid is None:
                continue
            readable += 1
            classes |= found
            any_foreground = any_foreground or bool(foreground)
            unchecked = unchecked or foreground is None
            if task_first is None:
                task_first = grid
                against = reference or first_mask
                if against is not None:
                    check = "shape_mismatch" if against is reference else "mask_shape_mismatch"
                    _compare(grid, against, check, job, problems, scaled_ok=rule.scaled)
                first_mask = first_mask or grid
            else:  # several files OR-ed into one label must share a grid
                _compare(grid, task_first, "mask_shape_mismatch", job, problems)
        if readable:
            if not rule.weak:
                present[rule.task] = tuple(sorted(classes))
            if not any_foreground and not unchecked:
                empty.append(rule.key)
    result.classes_present = present
    result.empty = tuple(empty)


_STALLED: set[str] = set()
"""Folders where a read timed out (in this process): their other files are reported, not waited for again."""
_TIMEOUT_FIX = (
    "check that the disk or network mount holding it responds (e.g. `ls -l` on the file) or copy the data to a "
    f"local disk; if the file is only slow to read, raise the limit ({FILE_TIMEOUT_ENV}=seconds, or file_timeout_s=)"
)


def _inspect(
    path: str, role: str, job: _CaseJob, rule: _MaskRule | None, problems: list[Problem]
) -> tuple[_Grid | None, set[int], bool | None]:
    """:func:`_inspect_file` in a daemon thread waited for ``job.file_timeout_s`` at most.

    A read stuck in the kernel (a stalled NFS/SMB mount) cannot be interrupted: its thread is left behind
    and the file reported as ``read_timeout``; the other files of its folder are then reported without
    being waited for, so a stalled mount costs one timeout, not one per file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if folder in _STALLED:
        problems.append(
            Problem(
                "read_timeout",
                f"{role} not checked: an earlier file in {folder} timed out",
                _TIMEOUT_FIX,
                path=path,
                case_id=job.case_id,
            )
        )
        return None, set(), False
    found: list[Problem] = []
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append(_inspect_file(path, role, job, rule, found))
        except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
            outcome.append(err)

    thread = threading.Thread(target=work, name="medmtl-validate-file", daemon=True)
    thread.start()
    thread.join(job.file_timeout_s)
    if thread.is_alive():
        _STALLED.add(folder)
        problems.append(
            Problem(
                "read_timeout",
                f"timed out after {job.file_timeout_s:g} s reading {role}",
                _TIMEOUT_FIX,
                path=path,
                case_id=job.case_id,
            )
        )
        return None, set(), False
    problems.extend(found)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _inspect_file(
    path: str, role: str, job: _CaseJob, rule: _MaskRule | None, problems: list[Problem]
) -> tuple[_Grid | None, set[int], bool | None]:
    """Read one file and run the per-file checks.

    Returns:
        The file's grid (``None`` when it cannot be compared), and for a mask the classes present and
        whether any voxel is foreground (non-zero after the label mapping; ``None`` when the values
        could not be checked).
    """
    image = _read(path, role, job, rule is not None, problems)
    if image is None:
        return None, set(), False
    array = np.asarray(image)
    mode = (getattr(image, "meta", None) or {}).get("mode")
    if mode in ("LA", "La", "PA") and array.ndim == job.spatial_dims + 1 and array.shape[-1] == 2:
        array = array[..., :1]  # grey + alpha: the alpha band is dropped (ToGrey / MergeMasks do the same)
    channel_sizes = {1, 3, 4} if job.spatial_dims == 2 else {1}
    spatial, channel_axis = _spatial_shape(array.shape, job.spatial_dims, channel_sizes)
    if spatial is None:
        extra = " or RGB(A) with 3/4 channels" if job.spatial_dims == 2 else ""
        if array.ndim < job.spatial_dims:
            fix = (
                f"this file is {array.ndim}D: use a spec with spatial_dims: {array.ndim} for {array.ndim}D "
                f"images, or give a {job.spatial_dims}D file here"
            )
        else:
            fix = (
                "split channels / time points into separate files (one input per file), or fix spatial_dims in the spec"
            )
        problems.append(
            Problem(
                "wrong_rank",
                f"{role} has shape {tuple(array.shape)} ({array.ndim}D) but the spec's spatial_dims is "
                f"{job.spatial_dims}: expected {job.spatial_dims} spatial axes, optionally with one channel "
                f"axis of size 1{extra}",
                fix,
                path=path,
                case_id=job.case_id,
            )
        )
        return None, set(), False
    if channel_axis is not None:
        array = np.moveaxis(array, channel_axis, -1)
    _check_finite(array, role, path, job.case_id, problems)
    extreme = extreme_value_problem(array, path) if rule is None else None
    if extreme is not None:
        problems.append(dataclasses.replace(extreme, message=f"{role} {extreme.message}", case_id=job.case_id))
    classes: set[int] = set()
    foreground: bool | None = False
    if rule is not None:
        foreground = None
        if channel_axis is not None and array.shape[-1] > 1:
            array = _colour_mask(array, role, path, job.case_id, problems)
        else:
            array = array.reshape(spatial)
        if array is not None:
            classes, foreground = _check_mask_values(array, rule, role, path, job, problems)
    del array
    return _grid(image, path, role, spatial, job.spatial_dims), classes, foreground


def _read(path: str, role: str, job: _CaseJob, mask: bool, problems: list[Problem]) -> Any:
    """The file as a MetaTensor (:func:`medmtl.data.readers.load_image`), or ``None`` with a problem.

    What the path is, what its header claims and its format are checked first, so a FIFO is never opened
    and a header claiming gigabytes never allocated.
    """
    from medmtl.data.readers import diagnose_unreadable, load_image

    case_id = job.case_id
    file = Path(path)
    if not file.exists():
        broken = " (a broken symlink)" if file.is_symlink() else ""
        problems.append(
            Problem(
                "missing_file",
                f"{role} not found{broken}",
                "restore the file, or fix the spec's template",
                path=path,
                case_id=case_id,
            )
        )
        return None
    suffix = ".nii.gz" if file.name.lower().endswith(".nii.gz") else file.suffix.lower()
    kind = file_kind_problem(path, allow_dir=suffix not in _NOT_DICOM_SUFFIXES)
    if kind is not None:
        problems.append(dataclasses.replace(kind, message=f"{role} {kind.message}", case_id=case_id))
        return None
    if file.is_dir() or _looks_like_dicom(file):
        found = _dicom_problems(file, role, case_id, job.max_image_bytes)
        problems.extend(found)
        if any(p.severity == Severity.ERROR for p in found):
            return None
    else:
        found = header_problems(path, job.max_image_bytes)
        if not found:
            found = pil_problems(path, mask=mask) + [p for p in (affine_problem(path),) if p is not None]
        problems.extend(
            dataclasses.replace(p, message=f"{role}: {p.message}", case_id=case_id, path=path) for p in found
        )
        if any(p.severity == Severity.ERROR for p in found):
            return None
    try:
        return load_image(path, max_image_bytes=job.max_image_bytes)
    except Exception as err:  # noqa: BLE001 - every reader failure is a finding, not a crash
        found = list(getattr(err, "problems", []))
        if found:  # the reader's findings name the file's damage (truncated, not gzip...) and the fix
            problems.extend(
                dataclasses.replace(
                    p,
                    message=f"cannot read {role}: {p.message}" if p.check == "unreadable_file" else p.message,
                    case_id=p.case_id or case_id,
                    path=p.path or path,
                )
                for p in found
            )
            return None
        message, fix = diagnose_unreadable(path, err)
        problems.append(Problem("unreadable_file", f"cannot read {role}: {message}", fix, path=path, case_id=case_id))
        return None


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_problems(path: Path, role: str, case_id: str, limit: int | None = None) -> list[Problem]:
    """DICOM checks of :mod:`medmtl.data.dicom` (empty folder, mixed series...), when available."""
    try:
        check = getattr(importlib.import_module("medmtl.data.dicom"), "check_dicom", None)
    except ImportError:
        check = None
    if check is None:
        if path.is_dir() and not any(path.iterdir()):
            return [
                Problem(
                    "empty_folder",
                    f"{role} is an empty folder",
                    "put the case's DICOM series in it, or remove the case",
                    path=str(path),
                    case_id=case_id,
                )
            ]
        return []
    try:
        found = list(check(str(path), **({"max_image_bytes": limit} if limit is not None else {})))
    except Exception as err:  # noqa: BLE001
        return [
            Problem(
                "unreadable_file",
                f"cannot read {role} as DICOM: {_describe(err)}",
                "re-export the DICOM series, or remove the case",
                path=str(path),
                case_id=case_id,
            )
        ]
    return [
        dataclasses.replace(p, case_id=p.case_id or case_id, path=p.path or str(path))
        if isinstance(p, Problem)
        else Problem("dicom", str(p), path=str(path), case_id=case_id)
        for p in found
    ]


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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


# ---------------------------------------------------------------------------------------------
# orchestration (main process)


def validate_dataset(
    spec: str | os.PathLike | DatasetSpec,
    root: str | os.PathLike | None = None,
    workers: int = 0,
    check_files: bool = True,
    tolerance: GeometryTolerance | None = None,
    progress: bool | None = None,
    spec_overrides: dict[str, Any] | None = None,
    *,
    max_image_bytes: int | str | None = None,
    file_timeout_s: float | None = None,
) -> ValidationReport:
    """Check a dataset spec, its case table and every file it names; collect every problem.

    Args:
        spec: a spec YAML file or a :class:`DatasetSpec`. Problems in the YAML (unknown keys, wrong
            types...) become problems of the report instead of exceptions.
        root: data root overriding the spec's.
        workers: processes opening files, this one included: ``0`` uses every core, ``1`` runs only in
            this process, ``N`` adds ``N - 1`` spawned workers.
        check_files: open every input and mask (``False``: only the spec and the case table).
        tolerance: how far the grids of one case may differ (default :class:`GeometryTolerance`).
        progress: show a progress bar on stderr; ``None`` shows it when stderr is a terminal.
        spec_overrides: top-level keys replacing those of the spec file (as :func:`load_spec` takes
            them, e.g. a bundle's ``splits``); ignored when ``spec`` is a :class:`DatasetSpec`.
        max_image_bytes: cap on one file's decoded size, in bytes or as ``"4G"`` (``None``: the
            ``MEDMTL_MAX_IMAGE_BYTES`` environment variable, else 2 GiB); bigger headers are reported
            (``image_too_large``), never read.
        file_timeout_s: longest wait for one file (``None``: ``MEDMTL_FILE_TIMEOUT_S``, else 120 s);
            slower files are reported as ``read_timeout`` (a stalled network mount) and the report goes on.

    Returns:
        A :class:`ValidationReport`; ``report.ok`` is ``False`` when any problem is an error.

    Raises:
        ValueError: ``workers`` is negative, or a limit (argument or environment variable) is not a
            positive number.

    Example::

        report = validate_dataset("data_specs/breast_ultrasound.yaml", root="/data/Dataset_BUSI_with_GT")
        print(report.format())
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: every core, 1: in-process), got {workers}")
    limits = _limits(max_image_bytes, file_timeout_s)
    start = time.perf_counter()
    report = ValidationReport(check_files=check_files)
    if isinstance(spec, DatasetSpec):
        loaded: DatasetSpec | None = spec
        report.spec_path = spec.spec_path
    else:
        report.spec_path = str(spec)
        try:
            loaded = load_spec(spec, **(spec_overrides or {}))
        except SpecError as err:
            loaded = None
            report.problems.extend(err.problems)
    if loaded is not None:
        report.dataset = loaded.name
        _validate_spec(loaded, root, workers, tolerance or GeometryTolerance(), progress, report, limits)
    report.duration_s = time.perf_counter() - start
    logger.debug(
        "validated %s: %d errors, %d warnings in %.1f s",
        report.dataset,
        len(report.errors),
        len(report.warnings),
        report.duration_s,
    )
    return report


def _validate_spec(
    spec: DatasetSpec,
    root: str | os.PathLike | None,
    workers: int,
    tolerance: GeometryTolerance,
    progress: bool | None,
    report: ValidationReport,
    limits: tuple[int | None, float] = (None, DEFAULT_FILE_TIMEOUT_S),
) -> None:
    try:
        table = spec.build_cases(root=root)
    except SpecError as err:  # e.g. an unset environment variable in the spec's root
        report.problems.extend(err.problems)
        return
    report.root = str(table.root)
    report.problems.extend(table.problems)
    weak_masks = _weak_masks(spec, root, table.cases, report)
    report.num_cases = len(table.cases)
    report.split_counts = {s: n for s, n in sorted(table.split_counts().items(), key=lambda kv: _split_order(kv[0]))}
    splits = [s for s in SPLIT_NAMES if s in report.split_counts]
    report.label_counts = {s: table.label_counts(s) for s in (*splits, "all")} if table.cases else {}
    if not report.check_files or not table.cases:
        return
    jobs = [_job(spec, case, tolerance, weak_masks.get(case["case_id"], {})) for case in table.cases]
    jobs = [dataclasses.replace(j, max_image_bytes=limits[0], file_timeout_s=limits[1]) for j in jobs]
    results = _run_jobs(jobs, workers, progress, report)
    present_by_case: dict[str, dict[str, tuple[int, ...]]] = {}
    for result in results:
        report.problems.extend(result.problems)
        report.files_checked += result.files
        present_by_case[result.case_id] = result.classes_present
        for task in result.empty:
            report.empty_masks.setdefault(task, []).append(result.case_id)
    _add_segmentation_counts(spec, table.cases, present_by_case, report)
    for key, case_ids in report.empty_masks.items():
        examples = ", ".join(case_ids[:_EMPTY_EXAMPLES]) + (", ..." if len(case_ids) > _EMPTY_EXAMPLES else "")
        task, weak = key.removesuffix(_WEAK_SUFFIX), key.endswith(_WEAK_SUFFIX)
        if weak:
            labelled = sum(task in masks for masks in weak_masks.values())
        else:
            labelled = report.label_counts.get("all", {}).get(task, {}).get("labelled", len(case_ids))
        report.problems.append(
            Problem(
                "empty_mask",
                f"task '{task}': {len(case_ids)} of {labelled} {'weak ' if weak else ''}masks are all background "
                f"({examples})",
                "expected for negative cases; otherwise check the masks and the label's values/binarize "
                "(the --json report lists every case)",
                severity=Severity.WARNING,
            )
        )


def _limits(max_bytes: int | str | None, timeout_s: float | None) -> tuple[int | None, float]:
    """``(max_image_bytes, file_timeout_s)`` checked here, once (``None`` bytes: each reader reads the environment)."""
    if max_bytes is not None:
        max_bytes = max_image_bytes(max_bytes)
    else:
        max_image_bytes()  # a malformed environment variable fails here, not in every worker
    where = "file_timeout_s"
    if timeout_s is None:
        raw = os.environ.get(FILE_TIMEOUT_ENV, "").strip()
        where = f"the environment variable {FILE_TIMEOUT_ENV}"
        timeout_s = raw or DEFAULT_FILE_TIMEOUT_S
    try:
        seconds = float(timeout_s)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{where} must be a positive number of seconds, got {timeout_s!r}")
    return max_bytes, seconds


def _weak_masks(
    spec: DatasetSpec, root: str | os.PathLike | None, cases: list[dict], report: ValidationReport
) -> dict[str, dict[str, str | list[str]]]:
    """``{case_id: {task: weak mask path(s)}}`` for tasks with a ``weak_label`` mask, and the weak labels' own problems.

    Weak-label pre-training reads these masks as training targets, so they get the same checks as the
    strong ones; the weak case table's problems that the strong one does not have (a weak mask outside
    the root, an invalid weak class label...) join the report.
    """
    if not any(t.weak_label is not None for t in spec.tasks):
        return {}
    try:
        weak = spec.build_cases(root=root, label_quality="weak")
    except SpecError:  # already reported by the strong table
        return {}
    known = set(report.problems)
    report.problems.extend(p for p in weak.problems if p not in known)
    tasks = [t.name for t in spec.tasks if t.weak_label is not None and t.weak_label.mask is not None]
    ids = {c["case_id"] for c in cases}
    return {
        c["case_id"]: {t: c[t] for t in tasks if c.get(present_key(t)) and t in c}
        for c in weak.cases
        if c["case_id"] in ids
    }


def _split_order(split: str) -> int:
    return SPLIT_NAMES.index(split) if split in SPLIT_NAMES else len(SPLIT_NAMES)


def _job(
    spec: DatasetSpec, case: dict, tolerance: GeometryTolerance, weak_masks: dict[str, str | list[str]]
) -> _CaseJob:
    """The picklable description of one case's files (paths and label rules, no spec object)."""

    def paths(value: str | list[str]) -> tuple[str, ...]:
        return (value,) if isinstance(value, str) else tuple(value)

    def rule(task: Any, label: Any, weak: bool) -> _MaskRule:
        return _MaskRule(
            task=task.name,
            num_classes=task.num_outputs,
            binarize=bool(label is not None and label.binarize),
            values=tuple(sorted((label.values or {}).items())) if label is not None else (),
            weak=weak,
            scaled=bool(label is not None and label.scaled_mask),
        )

    masks = []
    for task in spec.tasks:
        if task.kind != TaskKind.SEGMENTATION:
            continue
        if case.get(task.present_key) and task.name in case:
            masks.append((rule(task, task.label, False), paths(case[task.name])))
        if task.name in weak_masks:
            masks.append((rule(task, task.weak_label, True), paths(weak_masks[task.name])))
    return _CaseJob(
        case_id=case["case_id"],
        inputs=tuple((key, paths(case[key])) for key in spec.inputs if key in case),
        masks=tuple(masks),
        spatial_dims=spec.spatial_dims,
        same_grid_inputs=any(t.kind == TaskKind.SEGMENTATION for t in spec.tasks),
        tolerance=tolerance,
    )


_ADAPTIVE = True
"""Check cases in this process first and start worker processes only when the remaining work is worth
their start-up; this process keeps checking cases beside them (tests switch it off to force the pool)."""
_POOL_WORTH_S = 10.0
"""Estimated remaining in-process time above which worker processes are started (each one imports
torch and MONAI first: a few seconds)."""


def _run_jobs(jobs: list[_CaseJob], workers: int, progress: bool | None, report: ValidationReport) -> list[_CaseResult]:
    """Run :func:`_check_case` on every job, in this process and, when worth it, a ``spawn`` pool; in job order."""
    from tqdm import tqdm

    _STALLED.clear()  # a folder that stalled in an earlier validation gets one more chance

    from medmtl.data.readers import load_image  # noqa: F401 - imported before timing the first cases

    count = min(workers or os.cpu_count() or 1, len(jobs))
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(jobs), desc="validate", unit="case", file=sys.stderr, disable=not show, leave=False)
    results: list[_CaseResult] = []
    try:
        warm = 0.0
        while (_ADAPTIVE or count <= 1) and len(results) < len(jobs):
            results.append(_check_case(jobs[len(results)]))
            bar.update()
            done = len(results)
            if done == 1:  # the first case pays for lazy imports and reader set-up: not timed
                warm = time.perf_counter()
            elif count > 1 and (time.perf_counter() - warm) / (done - 1) * (len(jobs) - done) > _POOL_WORTH_S:
                break
        report.workers = 1
        if len(results) < len(jobs):
            report.workers = count
            results += _run_pool(jobs[len(results) :], count, bar)
        return results
    finally:
        bar.close()


def _run_pool(jobs: list[_CaseJob], count: int, bar: Any) -> list[_CaseResult]:
    """``count`` processes: this one and ``count - 1`` spawned workers.

    The workers take jobs from the front, this process takes them from the back (cancelling their
    futures) until the two meet.
    """
    context = multiprocessing.get_context("spawn")
    results: list[_CaseResult | None] = [None] * len(jobs)
    pool = ProcessPoolExecutor(max_workers=count - 1, mp_context=context, initializer=_init_worker)
    try:
        futures = [pool.submit(_check_case, job) for job in jobs]
        for future in futures:
            future.add_done_callback(lambda f: f.cancelled() or bar.update())
        for index in range(len(jobs) - 1, -1, -1):
            if not _ADAPTIVE or not futures[index].cancel():
                break
            results[index] = _check_case(jobs[index])
            bar.update()
        for index, future in enumerate(futures):
            if results[index] is None:
                try:
                    results[index] = future.result()
                except BrokenProcessPool:
                    results[index] = _crashed(jobs[index])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [r for r in results if r is not None]


def _crashed(job: _CaseJob) -> _CaseResult:
    """A worker process died (a reader crashing on a damaged file takes the whole pool down)."""
    return _CaseResult(
        case_id=job.case_id,
        problems=[
            Problem(
                "check_crashed",
                "the checker process died before this case was checked (a reader crashed on a damaged file "
                "of this or another case)",
                "fix the other errors and run again; if it persists, check this case's files one by one",
                case_id=job.case_id,
            )
        ],
    )


def _add_segmentation_counts(
    spec: DatasetSpec,
    cases: list[dict],
    present_by_case: dict[str, dict[str, tuple[int, ...]]],
    report: ValidationReport,
) -> None:
    """Per segmentation class: labelled cases whose mask contains it, per split."""
    for task in spec.tasks:
        if task.kind != TaskKind.SEGMENTATION:
            continue
        for split, counts in report.label_counts.items():
            tally: Counter[int] = Counter()
            for case in cases:
                if split == "all" or case["split"] == split:
                    tally.update(present_by_case.get(case["case_id"], {}).get(task.name, ()))
            entry = counts.get(task.name)
            if entry is not None:
                for index, name in enumerate(task.class_names):
                    entry[name] = tally[index]


class DatasetInvalidError(DataError):
    """:func:`require_valid_dataset` found errors; ``str()`` is the whole report, ``report`` the findings.

    A :class:`~medmtl.data.problems.DataError` (so a ``ValueError``) whose text is exactly what
    ``medmtl validate`` prints: every problem on its own line with the file and the fix, the counts per
    check and the ``FAILED`` line.
    """

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.problems, f"dataset '{report.dataset}' under {report.root}")
        self.args = (report.format(),)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):
        """Rebuild from the report, so the error survives process pools."""
        return (type(self), (self.report,))


class DatasetExit(SystemExit):
    """:func:`require_valid_dataset` with ``exit_on_error=True`` found errors: exit with the report, no traceback.

    Python prints a ``SystemExit``'s text to stderr and exits with status 1 without a traceback, and
    MONAI's bundle runner lets it through (``ConfigExpression.evaluate`` wraps every ``Exception`` in a
    ``RuntimeError`` whose traceback buries the report; ``SystemExit`` is not an ``Exception``).
    """

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.format())


def require_valid_dataset(
    spec: str | os.PathLike | DatasetSpec,
    root: str | os.PathLike | None = None,
    workers: int = 0,
    *,
    spec_overrides: dict[str, Any] | None = None,
    exit_on_error: bool = False,
    max_image_bytes: int | str | None = None,
    file_timeout_s: float | None = None,
    check_files: bool = True,
) -> ValidationReport:
    """Validate before a run starts: stop with the whole report on any error, else log the warnings.

    What bundles call in ``initialize``, so a bad case stops the run before the first epoch (with
    the file and the fix), never half-way through training. Pass the spec *file* (and the bundle's
    overrides) rather than a loaded spec, so mistakes in the YAML are reported the same way instead
    of failing while the config is parsed.

    Args:
        spec: a spec YAML file, or a loaded :class:`DatasetSpec`.
        root: data root overriding the spec's.
        workers: processes opening files (see :func:`validate_dataset`).
        spec_overrides: top-level keys replacing the spec file's (what the bundle passes to ``load_spec``).
        exit_on_error: raise :class:`DatasetExit` (a ``SystemExit``: the report on stderr, exit status 1,
            no traceback) instead of :class:`DatasetInvalidError`; for bundle configs run with
            ``python -m monai.bundle run``.
        max_image_bytes, file_timeout_s: limits of :func:`validate_dataset` (default: environment, 2 GiB, 120 s).
        check_files: open every file (``False``: only the spec and the case table, which still stops a
            run on a missing file or a bad table without a traceback; an inference bundle's
            ``--validate_data false``).

    Returns:
        The report, when it has no error.

    Raises:
        DatasetInvalidError: some problem is an error (the report is logged at ERROR level first).
        DatasetExit: the same, with ``exit_on_error=True`` (not logged: Python prints it).

    Example (bundle ``initialize``; no ``@spec``/``@cases`` in this expression, even in an ``else``:
    MONAI resolves every reference of an expression first, and loading a broken spec there fails with a
    traceback)::

        "$medmtl.data.validate.require_valid_dataset(@data_spec, @dataset_dir,
            spec_overrides=@spec_overrides, exit_on_error=True) if @validate_data else None",
        "$@cases.raise_for_errors()",
    """
    report = validate_dataset(
        spec,
        root=root,
        workers=workers,
        progress=False,
        spec_overrides=spec_overrides,
        check_files=check_files,
        max_image_bytes=max_image_bytes,
        file_timeout_s=file_timeout_s,
    )
    if not report.ok:
        if exit_on_error:
            raise DatasetExit(report)
        logger.error("%s", report.format())
        raise DatasetInvalidError(report)
    for problem in report.warnings:
        logger.warning("%s", problem)
    logger.info(
        "dataset %s: %d cases, no errors, %d warning(s)", report.dataset, report.num_cases, len(report.warnings)
    )
    return report
