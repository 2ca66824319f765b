"""The two ways in: check a DICOM file or folder (optionally decoding it), or read it to an array."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medmtl.data.dicom.pixels import decode_series
from medmtl.data.dicom.scan import _mixed_series_problem, _scan, scan_dicom
from medmtl.data.dicom.series import DicomError
from medmtl.data.problems import Problem, Severity

__all__ = ["check_dicom", "read_dicom"]


def check_dicom(path: str | os.PathLike, *, decode: bool = False, max_image_bytes: int | None = None) -> list[Problem]:
    """Every problem of a DICOM file or series folder, from the headers (and pixels if ``decode``); never raises.

    Used by the dataset validator: it reports empty folders, corrupt or non-DICOM files, folders mixing
    series, missing / duplicate / unevenly spaced slices, inconsistent slices, DICOM-SEG given as an
    image, Siemens mosaics, files without pixels and compressed pixels no installed decoder reads.

    Args:
        path: a DICOM file or a folder holding the files of one series.
        decode: also decode the pixels (slower; finds truncated pixel data).
        max_image_bytes: cap on the pixel bytes the headers claim, per file and per series (``None``:
            ``MEDMTL_MAX_IMAGE_BYTES`` or 2 GiB); uncompressed pixel data must also fit in its file.

    Returns:
        The problems (errors and warnings); an empty list for a clean input.

    Example::

        for problem in check_dicom("case_012/"):
            print(problem)
    """
    path = Path(path)
    try:
        found, problems = _scan(path, recursive=False, limit=max_image_bytes)
        if path.is_dir() and len(found) > 1:
            problems.append(_mixed_series_problem(path, [s.headers for s in found]))
        elif decode and len(found) == 1 and not any(p.severity == Severity.ERROR for p in problems):
            try:
                decode_series(found[0])
            except DicomError as err:
                problems += err.problems
        return problems
    except Exception as err:  # noqa: BLE001 - the validator must get a finding, not an exception
        return [
            Problem(
                "not_dicom",
                f"could not be checked ({type(err).__name__})",
                "check that the path is a readable DICOM file or series folder",
                path=str(path),
            )
        ]


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """:func:`scan_dicom` then :func:`decode_series`: the array and metadata of one DICOM file or series."""
    return decode_series(scan_dicom(path))
