"""DICOM to NIfTI: de-identified voxels and geometry only, one file per series, written atomically."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from medmtl.atomic_io import atomic_write_with
from medmtl.data.dicom.pixels import decode_series
from medmtl.data.dicom.scan import _log_warnings, _mixed_series_problem, _scan
from medmtl.data.dicom.series import DicomError
from medmtl.data.problems import Problem, Severity

__all__ = ["series_file_name", "convert_dicom"]

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ conversion


def series_file_name(series_uid: str) -> str:
    """``series-<12 hex>.nii.gz``: a one-way hash of the Series Instance UID, never patient data."""
    digest = hashlib.sha256(series_uid.encode()).hexdigest()[:12]
    return f"series-{digest}.nii.gz"


def _compact(arr: np.ndarray) -> np.ndarray:
    """The smallest integer type holding ``arr`` exactly when its values are whole numbers."""
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        lo, hi = arr.min(), arr.max()
        for dtype in (np.uint8, np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return arr.astype(dtype)
    return arr


def _write_nifti(arr: np.ndarray, affine: np.ndarray, spatial: int, out: Path) -> None:
    import nibabel as nib

    data = _compact(arr)
    if spatial == 2:  # a 2D image becomes one slice of a 3D volume, keeping its slice direction
        data = data[:, :, None, ...]
    intent = None
    if data.ndim == 4:  # colour: NIfTI keeps vector components in dim 5
        data = data[:, :, :, None, :]
        intent = "vector"
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if intent:
        img.header.set_intent(intent)
    payload = img.to_bytes()
    if out.name.lower().endswith(".gz"):  # nibabel's own compression level for .nii.gz
        payload = gzip.compress(payload, compresslevel=nib.openers.Opener.default_compresslevel)
    atomic_write_with(out, lambda handle: handle.write(payload))


def convert_dicom(input: str | os.PathLike, output: str | os.PathLike) -> list[Path]:
    """Convert a DICOM file or folder to de-identified NIfTI with its geometry.

    Only voxels and geometry are written: no DICOM header, no patient data, no dates. Each file is
    written to a temporary name and renamed, so a crash never leaves a half-written output.

    Args:
        input: a DICOM file, a series folder, or a folder whose files and sub-folders hold several
            series (then ``output`` must be a folder).
        output: a ``.nii``/``.nii.gz`` file (one series), or a folder that receives one
            ``series-<hash>.nii.gz`` per series (hash of the Series Instance UID, see :func:`series_file_name`).

    Returns:
        The files written, one per series.

    Raises:
        DicomError: every problem of every series, before anything is written.

    Example::

        convert_dicom("knee_dicom/", "knee.nii.gz")
        convert_dicom("study/", "nifti/")  # one file per series
    """
    src, dst = Path(input), Path(output)
    to_file = dst.name.lower().endswith((".nii", ".nii.gz"))
    found, problems = _scan(src, recursive=src.is_dir() and not to_file)
    if src.is_dir() and to_file and len(found) > 1:
        problems.append(_mixed_series_problem(src, [s.headers for s in found]))
        problems[-1] = Problem(
            problems[-1].check,
            problems[-1].message,
            f"give an output folder instead of {dst.name} to get one NIfTI per series, or one series folder",
            path=str(src),
        )
    if any(p.severity == Severity.ERROR for p in problems) or not found:
        raise DicomError(problems, context=str(src))
    _log_warnings(problems)
    decoded = [(series, *decode_series(series)) for series in found]  # all pixels checked before writing
    written = []
    for series, arr, meta in decoded:
        out = dst if to_file else dst / series_file_name(series.series_uid)
        if out in written:
            out = dst / series_file_name(f"{series.series_uid}/{len(written)}")
        _write_nifti(arr, meta["affine"], len(series.spatial_shape), out)
        spacing = "x".join(f"{s:g}" for s in meta["spacing"])
        logger.info("wrote %s (%s voxels, %s mm)", out, "x".join(map(str, arr.shape)), spacing)
        written.append(out)
    return written
