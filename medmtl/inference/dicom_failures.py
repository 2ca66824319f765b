"""DICOM outputs that could not be written: one row per case and output in ``dicom_failed.csv``.

Why: a DICOM SEG or SR can fail for one case (a source series highdicom refuses, a mask off the
source grid) while its mask and table row are fine. One such case must not stop the inference of
all the others, nor pass unnoticed: the writer keeps the case's other outputs, logs the failure with
the case id, and lists it here; ``medmtl predict`` then exits with the status of failed inputs.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medmtl.atomic_io import atomic_write
from medmtl.csv_safety import csv_text

__all__ = ["DICOM_FAILED_FILE", "DicomFailure", "read_dicom_failures", "write_dicom_failures"]

#: the table of failed DICOM outputs, next to ``predictions.csv``.
DICOM_FAILED_FILE = "dicom_failed.csv"
_COLUMNS = ("case_id", "output", "reason")


@dataclass(frozen=True)
class DicomFailure:
    """One DICOM output not written: the case, which output (``lesion DICOM SEG``, ``DICOM SR``), why."""

    case_id: str
    output: str
    reason: str


def write_dicom_failures(failures: Sequence[DicomFailure], path: str | os.PathLike) -> Path:
    """``dicom_failed.csv`` (case id, output, reason), spreadsheet-safe, written atomically."""
    rows = [[f.case_id, f.output, f.reason] for f in failures]
    return atomic_write(Path(path), csv_text(list(_COLUMNS), rows))


def read_dicom_failures(path: str | os.PathLike) -> list[DicomFailure]:
    """The rows :func:`write_dicom_failures` wrote (cells as written: a spreadsheet-escaped id keeps its ``'``)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [DicomFailure(*(row.get(c) or "" for c in _COLUMNS)) for row in csv.DictReader(handle)]
