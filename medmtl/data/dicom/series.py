"""A DICOM series as medmtl sees it: the checks it reports, the series record, finding and opening files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medmtl.data.problems import DataError, Problem, Severity

__all__ = [
    "DicomError",
    "DicomSeries",
    "is_dicom_file",
    "CHECKS",
    "_GAP_ATOL",
    "_GAP_RTOL",
    "_GDCM_SYNTAXES",
    "_PLUGINS",
    "_SEG_SOP_CLASSES",
    "_candidate_files",
    "_read_header",
]  # underscored: shared inside medmtl.data.dicom only

logger = logging.getLogger(__name__)

# Problem.check names used by this module (errors unless noted).
CHECKS = {
    "missing_file": "the path does not exist",
    "empty_folder": "a folder holds no DICOM file",
    "not_dicom": "a file is corrupt or not DICOM",
    "mixed_series": "a folder holds files of several series",
    "missing_slices": "a series has a gap of one or more slices",
    "uneven_spacing": "slices are not evenly spaced",
    "duplicate_slices": "several files share one slice position",
    "inconsistent_slices": "files of one series differ in size, orientation, spacing or colour",
    "unsupported_transfer_syntax": "no installed decoder for the pixel compression",
    "dicom_seg": "a DICOM-SEG (segmentation) was given as an image",
    "no_pixel_data": "the file holds no image (report, structure set, ...)",
    "siemens_mosaic": "a Siemens mosaic (slices tiled in one image)",
    "multiframe_stack": "a multi-frame file whose frames are not one evenly spaced stack",
    "decode_failed": "pixel data could not be decoded (truncated or corrupt)",
    "unreadable_file": "the headers claim more pixel bytes than an uncompressed file holds",
    "image_too_large": "the headers claim more pixel bytes than the cap (MEDMTL_MAX_IMAGE_BYTES, 2 GiB)",
    "no_geometry": "warning: no patient position/orientation, an identity orientation is used",
    "gantry_tilt": "warning: slices are sheared (CT gantry tilt); the affine keeps the shear",
    "decoder_fallback": "warning: pydicom lacks the decoder plug-in, SimpleITK/GDCM decodes",
    "burned_in_annotation": "warning: the pixels may show patient data (BurnedInAnnotation YES)",
}

_SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}  # SEG, label map SEG
_NON_DICOM_SUFFIXES = {
    ".txt", ".json", ".xml", ".csv", ".md", ".html", ".htm", ".pdf", ".ini", ".log", ".yaml", ".yml",
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".nii", ".gz", ".zip", ".npy", ".npz",
    ".mha", ".mhd", ".nrrd", ".raw", ".db", ".exe", ".py", ".sh", ".bat",
}  # fmt: skip
_IGNORED_NAMES = {"DICOMDIR", "Thumbs.db", "desktop.ini", "LOCKFILE", "VERSION"}

# Plug-ins that give pydicom a decoder, by transfer syntax UID.
_JPEG = "pylibjpeg pylibjpeg-libjpeg"
_J2K = "pylibjpeg pylibjpeg-openjpeg"
_PLUGINS = {
    "1.2.840.10008.1.2.4.50": _JPEG + " (or pillow)",
    "1.2.840.10008.1.2.4.51": _JPEG + " (or pillow)",
    "1.2.840.10008.1.2.4.57": _JPEG,
    "1.2.840.10008.1.2.4.70": _JPEG,
    "1.2.840.10008.1.2.4.80": _JPEG,
    "1.2.840.10008.1.2.4.81": _JPEG,
    "1.2.840.10008.1.2.4.90": _J2K,
    "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.92": _J2K,
    "1.2.840.10008.1.2.4.93": _J2K,
    "1.2.840.10008.1.2.4.201": _J2K,
    "1.2.840.10008.1.2.4.202": _J2K,
    "1.2.840.10008.1.2.4.203": _J2K,
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}
# Compressed transfer syntaxes SimpleITK's GDCM decodes without any plug-in.
_GDCM_SYNTAXES = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
}  # fmt: skip

# Relative tolerance on slice gaps: scanners round positions to ~1e-4 mm, real gaps differ by far more.
_GAP_RTOL = 0.01
_GAP_ATOL = 1e-3


class DicomError(DataError):
    """A DICOM input that cannot be read; ``problems`` lists every reason, ``checks`` their names."""

    def __init__(self, problems: Iterable[Problem], context: str = "the DICOM input"):
        super().__init__(problems, context)
        self.context = context

    def __reduce__(self):  # picklable across process pools (validator workers, DataLoader workers)
        return type(self), (self.problems, self.context)

    @property
    def checks(self) -> set[str]:
        return {p.check for p in self.problems if p.severity == Severity.ERROR}


@dataclass
class DicomSeries:
    """One image (a series folder, or one file) as headers plus geometry, before any pixel is decoded.

    Attributes:
        files: the files, sorted along the slice axis (one file for single and multi-frame files).
        headers: their pydicom headers (no pixel data), in the same order.
        kind: ``"series"`` (one 2D file per slice), ``"single"`` (one 2D image) or ``"multiframe"``.
        affine: 4x4 voxel-to-RAS-millimetre matrix (MONAI convention, see the module docstring).
        spatial_shape: ``(columns, rows)`` or ``(columns, rows, slices_or_frames)``.
        has_geometry: False when the files carry no patient position/orientation (identity used).
        warnings: warning-level problems found while scanning (already logged).
    """

    files: list[Path]
    headers: list[Dataset]
    kind: str
    affine: np.ndarray
    spatial_shape: tuple[int, ...]
    has_geometry: bool = True
    warnings: list[Problem] = field(default_factory=list)

    @property
    def series_uid(self) -> str:
        return str(self.headers[0].get("SeriesInstanceUID", ""))


# ----------------------------------------------------------------------------------------- files


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file with a DICOM name (``.dcm``/``.dicom``/``.ima``) or the ``DICM`` preamble."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() in {".dcm", ".dicom", ".ima"}:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _candidate_files(folder: Path, recursive: bool) -> list[Path]:
    walker = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for path in walker:
        if path.name.startswith(".") or path.name in _IGNORED_NAMES or not path.is_file():
            continue
        if path.suffix.lower() in _NON_DICOM_SUFFIXES:
            logger.debug("skipping %s: not a DICOM file name", path)
            continue
        files.append(path)
    return sorted(files)


def _read_header(path: Path) -> Dataset | Problem:
    """The header of ``path`` (no pixels), or a ``not_dicom`` problem naming it."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        # some archives write DICOM without the 128-byte preamble: accept it only if it looks like an image
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "SOPClassUID" in ds and ("Rows" in ds or "SeriesInstanceUID" in ds):
                return ds
        except Exception:  # noqa: BLE001 - any parser failure means "not DICOM"
            pass
        reason = "it has no DICOM header (no 'DICM' marker and no readable data elements)"
    except Exception as err:  # noqa: BLE001 - truncated or garbled headers raise many types
        reason = f"its header could not be parsed ({type(err).__name__})"
    return Problem(
        "not_dicom",
        f"not a readable DICOM file: {reason}",
        "remove the file from the folder, or export it again from the PACS (it may be truncated or corrupt)",
        path=str(path),
    )
