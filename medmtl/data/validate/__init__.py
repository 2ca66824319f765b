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

The work is split by job: :mod:`.dataset` (spec, case table, the report and the bundles' gate),
:mod:`.pool` (this process, then a ``spawn`` pool), :mod:`.case_checks` (one case),
:mod:`.reading` (opening one file under limits), :mod:`.values` (what a file holds, grids),
:mod:`.jobs` (what a worker gets and returns), :mod:`.studies` (studies whose images disagree on a
label) and :mod:`.report`.
"""

from __future__ import annotations

from medmtl.data.validate.dataset import (
    DatasetExit,
    DatasetInvalidError,
    require_valid_dataset,
    validate_dataset,
)
from medmtl.data.validate.jobs import DEFAULT_FILE_TIMEOUT_S, FILE_TIMEOUT_ENV, GeometryTolerance
from medmtl.data.validate.report import ValidationReport

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
