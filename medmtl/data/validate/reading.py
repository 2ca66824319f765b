"""Opening one file for the checks: kind, header and size first, then a read under a time limit."""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.format_checks import affine_problem, extreme_value_problem, pil_problems
from medmtl.data.header_guard import file_kind_problem, header_problems
from medmtl.data.problems import Problem, Severity
from medmtl.data.validate.jobs import (
    _DICOM_SUFFIXES,
    _NOT_DICOM_SUFFIXES,
    FILE_TIMEOUT_ENV,
    _CaseJob,
    _Grid,
    _MaskRule,
)
from medmtl.data.validate.values import _check_finite, _check_mask_values, _colour_mask, _grid, _spatial_shape

__all__ = ["_STALLED", "_describe", "_inspect"]  # underscored: shared inside medmtl.data.validate only


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
