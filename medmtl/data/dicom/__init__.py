"""DICOM in, arrays with geometry out: checks, decoding, NIfTI conversion and de-identification.

Hospital DICOM is the messiest input medmtl gets: folders mixing several series, missing or
unevenly spaced slices, compressed transfer syntaxes that need a plug-in, palette or YBR colour,
inverted MONOCHROME1 radiographs, multi-frame files, segmentations sent instead of images. MONAI's
``PydicomReader`` stacks whatever files it finds by ``InstanceNumber`` and warns; it does not
check the series, convert palette colour, invert MONOCHROME1 or place multi-frame frames on a
spatial axis. This module does that work once, with pydicom for headers and pixels (SimpleITK /
GDCM as the decoder of last resort), and reports every problem as a :class:`Problem` naming the
file and the fix, never a traceback and never patient data.

Array layout and affine follow MONAI's DICOM readers (``PydicomReader`` with ``swap_ij=True``,
``ITKReader``): axis 0 runs along a row (column index), axis 1 down the columns (row index), axis 2
over slices or frames, colour last; the affine maps voxel indices to millimetres in RAS (DICOM's
LPS with x and y negated). :class:`medmtl.data.readers.MedmtlDicomReader` wraps
:func:`scan_dicom` + :func:`decode_series` as a MONAI ``ImageReader``.

The work is split by job: :mod:`.series` (the series record, finding and opening files),
:mod:`.geometry` (planes, affines, gaps), :mod:`.file_checks` (one file), :mod:`.scan` (files into
checked series), :mod:`.pixels` (decoding), :mod:`.read` (``check_dicom`` / ``read_dicom``),
:mod:`.deidentify` and :mod:`.convert` (NIfTI).
"""

from __future__ import annotations

from medmtl.data.dicom.convert import convert_dicom, series_file_name
from medmtl.data.dicom.deidentify import deidentify_dataset
from medmtl.data.dicom.pixels import decode_series
from medmtl.data.dicom.read import check_dicom, read_dicom
from medmtl.data.dicom.scan import scan_dicom
from medmtl.data.dicom.series import CHECKS, DicomError, DicomSeries, is_dicom_file

__all__ = [
    "DicomError",
    "DicomSeries",
    "check_dicom",
    "convert_dicom",
    "decode_series",
    "deidentify_dataset",
    "is_dicom_file",
    "read_dicom",
    "scan_dicom",
    "series_file_name",
    "CHECKS",
]
