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
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medmtl.data.header_guard import max_image_bytes as _image_cap
from medmtl.data.header_guard import size_problem
from medmtl.data.problems import DataError, Problem, Severity

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


# -------------------------------------------------------------------------------------- geometry


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def _functional_item(ds: Dataset, sequence: str, frame: int | None) -> Dataset | None:
    """``sequence``'s item for ``frame`` in the per-frame functional groups, else in the shared ones."""
    if frame is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame is not None and frame < len(per_frame) and per_frame[frame].get(sequence):
            return per_frame[frame].get(sequence)[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0].get(sequence)[0]
    return None


def _attr(ds: Dataset, keyword: str, sequence: str, frame: int | None = None) -> Any:
    """A plane attribute, top-level first, then from the (per-frame, shared) functional groups."""
    if keyword in ds:
        return ds.get(keyword)
    item = _functional_item(ds, sequence, frame)
    return item.get(keyword) if item is not None else None


@dataclass
class _Plane:
    row_cos: np.ndarray | None  # direction of increasing column index (along a row), LPS
    col_cos: np.ndarray | None  # direction of increasing row index, LPS
    spacing: np.ndarray | None  # (between rows, between columns) in mm, as PixelSpacing
    position: np.ndarray | None  # centre of the first transmitted pixel, LPS mm
    thickness: float | None

    @property
    def oriented(self) -> bool:
        return self.row_cos is not None and self.position is not None

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cos, self.col_cos)


def _plane(ds: Dataset, frame: int | None = None) -> _Plane:
    iop = _floats(_attr(ds, "ImageOrientationPatient", "PlaneOrientationSequence", frame) or (), 6)
    ipp = _floats(_attr(ds, "ImagePositionPatient", "PlanePositionSequence", frame) or (), 3)
    spacing = None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        spacing = _floats(_attr(ds, keyword, "PixelMeasuresSequence", frame) or (), 2)
        if spacing is not None and (spacing > 0).all():
            break
        spacing = None
    thickness = None
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _floats([_attr(ds, keyword, "PixelMeasuresSequence", frame)], 1)
        if value is not None and value[0] > 0:
            thickness = float(value[0])
            break
    row_cos = col_cos = None
    if iop is not None and np.linalg.norm(iop[:3]) > 0.5 and np.linalg.norm(iop[3:]) > 0.5:
        row_cos, col_cos = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    return _Plane(row_cos, col_cos, spacing, ipp, thickness)


def _affine(plane: _Plane, step: np.ndarray | None) -> np.ndarray:
    """RAS affine of a (columns, rows, slices) array whose first plane is ``plane``; ``step`` in LPS mm."""
    spacing = plane.spacing if plane.spacing is not None else np.ones(2)
    if not plane.oriented:  # no patient space: spacing only, identity orientation in the array's own frame
        return np.diag([spacing[1], spacing[0], plane.thickness or 1.0, 1.0])
    lps = np.eye(4)
    lps[:3, 0] = plane.row_cos * spacing[1]
    lps[:3, 1] = plane.col_cos * spacing[0]
    lps[:3, 2] = step if step is not None else plane.normal * (plane.thickness or 1.0)
    lps[:3, 3] = plane.position
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _gap_problems(
    distances: np.ndarray, names: Sequence[str], where: str, unit: str = "slice"
) -> tuple[list[Problem], float]:
    """Duplicate positions, missing slices and uneven gaps along one stack; returns problems and the gap."""
    gaps = np.diff(distances)
    tol = lambda g: _GAP_RTOL * abs(g) + _GAP_ATOL  # noqa: E731
    dup = np.nonzero(np.abs(gaps) <= _GAP_ATOL)[0]
    if dup.size:
        i = int(dup[0])
        return [
            Problem(
                "duplicate_slices",
                f"{dup.size} {unit}(s) share a position with another (e.g. {names[i]} and {names[i + 1]} at "
                f"{distances[i]:.3f} mm): the {unit}s hold several echoes, time points or acquisitions of one series",
                "split the files into one folder per echo / time point (e.g. by EchoNumbers or AcquisitionNumber)",
                path=where,
            )
        ], 0.0
    step = float(np.median(gaps))
    bad = np.nonzero(np.abs(gaps - step) > tol(step))[0]
    if not bad.size:
        return [], step
    problems = []
    multiples = gaps[bad] / step
    if np.all((np.abs(multiples - np.round(multiples)) * abs(step) <= tol(step)) & (np.round(multiples) >= 2)):
        for i, k in zip(bad, np.round(multiples).astype(int), strict=True):
            problems.append(
                Problem(
                    "missing_slices",
                    f"{k - 1} {unit}(s) missing between {names[i]} and {names[i + 1]}: gap of {abs(gaps[i]):.3f} mm "
                    f"where the series is spaced {abs(step):.3f} mm ({len(distances)} {unit}s found)",
                    "export the complete series again from the PACS; a volume with a hole has the wrong geometry",
                    path=where,
                )
            )
    else:
        i = int(bad[0])
        problems.append(
            Problem(
                "uneven_spacing",
                f"{unit}s are not evenly spaced: gaps from {np.abs(gaps).min():.3f} to {np.abs(gaps).max():.3f} mm "
                f"(median {abs(step):.3f} mm; first odd gap {abs(gaps[i]):.3f} mm between {names[i]} and "
                f"{names[i + 1]})",
                "resample the series onto a regular grid (e.g. with SimpleITK) or export it again; "
                "a single affine cannot describe uneven slices",
                path=where,
            )
        )
    return problems, step


# ------------------------------------------------------------------------------- per-file checks


@lru_cache(maxsize=64)
def _decoder_available(transfer_syntax: str) -> bool:
    """Whether pydicom can decode pixels in ``transfer_syntax`` with the installed plug-ins."""
    try:
        return bool(pydicom.pixels.get_decoder(UID(transfer_syntax)).is_available)
    except NotImplementedError:
        return False


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else "1.2.840.10008.1.2"  # files without meta: implicit VR little endian


_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def _pixel_bytes(ds: Dataset) -> tuple[int, int, str]:
    """``(stored bytes, decoded bytes, description)`` of the pixel data a header describes."""
    rows, cols, frames = int(ds.Rows), int(ds.Columns), _frames(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    count = rows * cols * frames * samples
    what = f"{rows} x {cols} pixels x {frames} frame(s) x {samples} sample(s) of {bits} bits"
    return -(-count * bits // 8), count * max(1, -(-bits // 8)), what


def _size_problem(path: Path, ds: Dataset, limit: int) -> Problem | None:
    """Pixel bytes the header claims against the file (uncompressed) and the cap, before any decoding."""
    try:
        stored, decoded, what = _pixel_bytes(ds)
    except (TypeError, ValueError):
        return None
    if _transfer_syntax(ds) in _UNCOMPRESSED:
        size = path.stat().st_size
        found = size_problem(path, stored, what, max_bytes=limit, capacity=size, file_size=size)
        if found is not None and found.check != "image_too_large":
            return found
    return size_problem(path, decoded, what, max_bytes=limit)


def _file_problems(path: Path, ds: Dataset, limit: int | None = None) -> list[Problem]:
    """What makes one file unusable as an image, from its header alone."""
    where = str(path)
    sop = str(ds.get("SOPClassUID", ""))
    if sop in _SEG_SOP_CLASSES or "SegmentSequence" in ds:
        return [
            Problem(
                "dicom_seg",
                f"is a DICOM-SEG segmentation ({len(ds.get('SegmentSequence', []))} segment(s)), not an image",
                "give the image series it segments as the image, and this file as a label "
                "(MedmtlDicomReader(seg='label') reads it as a mask)",
                path=where,
            )
        ]
    if "Rows" not in ds or "Columns" not in ds:
        kind = UID(sop).name if sop else "unknown SOP class"
        return [
            Problem(
                "no_pixel_data",
                f"holds no image ({kind}, modality {ds.get('Modality', '?')})",
                "remove it from the image folder (reports, structure sets and presentation states are not images)",
                path=where,
            )
        ]
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "MOSAIC" in image_type:
        n = ds.get((0x0019, 0x100A))
        count = f"{n.value} slices" if n is not None else "several slices"
        return [
            Problem(
                "siemens_mosaic",
                f"is a Siemens mosaic ({count} tiled in one {ds.Rows}x{ds.Columns} image); its position tags "
                "describe the mosaic, not the slices",
                "convert the series with dcm2niix (which unpacks mosaics) and use the NIfTI instead",
                path=where,
            )
        ]
    too_big = _size_problem(path, ds, _image_cap(limit))
    if too_big is not None:
        return [too_big]
    problems = []
    ts = _transfer_syntax(ds)
    if not _decoder_available(ts):
        name = UID(ts).name
        if ts in _GDCM_SYNTAXES:
            problems.append(
                Problem(
                    "decoder_fallback",
                    f"pixel data is '{name}' and pydicom has no decoder for it; SimpleITK (GDCM) decodes it instead",
                    f"pip install {_PLUGINS.get(ts, 'pylibjpeg')} so pydicom decodes it",
                    path=where,
                    severity=Severity.WARNING,
                )
            )
        else:
            fix = (
                f"pip install {_PLUGINS[ts]}"
                if ts in _PLUGINS
                else "no Python decoder exists for it: export the images again uncompressed or as JPEG / JPEG 2000 "
                "(e.g. `gdcmconv --raw in.dcm out.dcm`, or frames extracted with ffmpeg for video)"
            )
            problems.append(
                Problem(
                    "unsupported_transfer_syntax",
                    f"pixel data is compressed as '{name}' ({ts}), which no installed decoder reads",
                    fix,
                    path=where,
                )
            )
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        problems.append(
            Problem(
                "burned_in_annotation",
                "the file says patient data may be burned into the pixels",
                "check the images and mask the annotated region before sharing them",
                path=where,
                severity=Severity.WARNING,
            )
        )
    return problems


# ----------------------------------------------------------------------------------------- scans


def _frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


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


# ---------------------------------------------------------------------------------------- pixels


def _rescale(arr: np.ndarray, ds: Dataset, frame: int | None) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        return pydicom.pixels.apply_modality_lut(arr, ds).astype(np.float32)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None and intercept is None:
        item = _functional_item(ds, "PixelValueTransformationSequence", frame)
        if item is not None:
            slope, intercept = item.get("RescaleSlope"), item.get("RescaleIntercept")
    slope = 1.0 if slope is None else float(slope)
    intercept = 0.0 if intercept is None else float(intercept)
    if slope == 1.0 and intercept == 0.0:
        return arr
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _invert_monochrome1(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """MONOCHROME1 (white = low) to MONOCHROME2 over the stored bit range, so every file maps alike."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return (-1 - arr.astype(np.int32)).astype(arr.dtype)
    return ((1 << bits) - 1 - arr.astype(np.int64)).astype(arr.dtype)


def _palette_to_rgb(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    rgb = pydicom.pixels.apply_color_lut(arr, ds)
    if int(ds.get("BitsAllocated", 8)) <= 8 and rgb.dtype.itemsize > 1:
        # 16-bit LUT entries for an 8-bit image: keep 8 bits, as GDCM/SimpleITK do
        rgb = (rgb >> 8).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
    return rgb


def _decode_with_simpleitk(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(image)  # (frames, rows, cols[, samples]), frames kept even when 1
    return arr[0] if arr.ndim >= 3 and image.GetDimension() == 3 and image.GetSize()[2] == 1 else arr


def _pixels(path: Path, header: Dataset) -> np.ndarray:
    """Values of one file, (rows, cols[, 3]) or (frames, rows, cols[, 3]): RGB, MONOCHROME2, rescaled."""
    ts = _transfer_syntax(header)
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    frames = _frames(header)
    try:
        if not _decoder_available(ts) and ts in _GDCM_SYNTAXES:
            # GDCM converts palette/YBR to RGB, inverts MONOCHROME1 over the stored range and applies the
            # rescale itself: the same values as below (checked on the vendor test files)
            return _decode_with_simpleitk(path)
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array  # YBR_FULL(_422) and JPEG 2000 YBR_ICT/RCT arrive as RGB
    except Exception as err:  # noqa: BLE001 - decoders raise many types for truncated data
        raise DicomError(
            [
                Problem(
                    "decode_failed",
                    f"pixel data could not be decoded ({type(err).__name__}: {str(err)[:200]})",
                    "the file is probably truncated or corrupt: export it again from the PACS",
                    path=str(path),
                )
            ],
            context=str(path),
        ) from None
    if photometric == "PALETTE COLOR":
        return _palette_to_rgb(arr, ds)
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return arr
    if photometric == "MONOCHROME1":
        arr = _invert_monochrome1(arr, ds)
    if frames == 1:
        return _rescale(arr, ds, 0)
    return np.stack([_rescale(arr[i], ds, i) for i in range(frames)])


def decode_series(series: DicomSeries) -> tuple[np.ndarray, dict]:
    """Decode the pixels of a scanned series into MONAI's layout with its metadata.

    Args:
        series: from :func:`scan_dicom`.

    Returns:
        ``(array, meta)``: array ``(columns, rows[, slices or frames][, 3])``; meta with ``affine``
        and ``original_affine`` (RAS), ``spatial_shape``, ``spacing``, ``space``,
        ``original_channel_dim`` (-1 for colour, NaN otherwise) and non-identifying ``dicom_*``
        keys (modality, photometric, transfer syntax, number of files). No patient data.

    Raises:
        DicomError: ``decode_failed`` (or ``unsupported_transfer_syntax``) naming the file.
    """
    from monai.utils import MetaKeys, SpaceKeys

    if series.kind == "series":
        planes = [_pixels(p, h) for p, h in zip(series.files, series.headers, strict=True)]
        dtype = np.result_type(*[p.dtype for p in planes])
        arr = np.stack([p.astype(dtype, copy=False) for p in planes], axis=2)  # rows, cols, slices[, 3]
        arr = np.swapaxes(arr, 0, 1)
    else:
        arr = _pixels(series.files[0], series.headers[0])
        if series.kind == "multiframe":
            arr = np.moveaxis(arr, 0, 2)  # rows, cols, frames[, 3]
        arr = np.swapaxes(arr, 0, 1)
    arr = np.ascontiguousarray(arr)
    spatial = len(series.spatial_shape)
    if tuple(arr.shape[:spatial]) != series.spatial_shape:
        raise DicomError(
            [
                Problem(
                    "decode_failed",
                    f"decoded pixels have shape {arr.shape[:spatial]}, the header says {series.spatial_shape}",
                    "the file is probably corrupt: export it again",
                    path=str(series.files[0]),
                )
            ],
            context=str(series.files[0]),
        )
    ds = series.headers[0]
    affine = series.affine.astype(np.float64)
    colour = arr.ndim > spatial
    meta = {
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(series.spatial_shape),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if colour else float("nan"),
        "spacing": np.linalg.norm(affine[:3, :spatial], axis=0),  # also right for oblique 2D planes
        "dicom_modality": str(ds.get("Modality", "")),
        "dicom_photometric": "RGB" if colour else "MONOCHROME2",
        "dicom_transfer_syntax": _transfer_syntax(ds),
        "dicom_files": len(series.files),
        "dicom_kind": series.kind,
        "dicom_has_geometry": series.has_geometry,
    }
    return arr, meta


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """:func:`scan_dicom` then :func:`decode_series`: the array and metadata of one DICOM file or series."""
    return decode_series(scan_dicom(path))


# ------------------------------------------------------------------------------ de-identification

# DICOM PS3.15 Annex E basic application level confidentiality profile (Table E.1-1), by action.
# Z: kept empty (type 2 attributes of common IODs); X: removed. Dates/times, person names and
# instance UIDs are handled by VR in `deidentify_dataset`, private tags are removed.
_BLANK = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName",
    "StudyID", "StudyDate", "StudyTime", "ContentCreatorName", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "VerifyingObserverName", "PersonName",
)  # fmt: skip
_REMOVE = (
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "InstitutionalDepartmentTypeCodeSequence", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "ConsultingPhysicianIdentificationSequence",
    "StationName", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorsName", "OperatorIdentificationSequence",
    "RequestingPhysician", "RequestingService", "ScheduledPerformingPhysicianName", "OrderEnteredBy",
    "OrderEntererLocation", "OrderCallbackPhoneNumber", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientBirthTime",
    "PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers",
    "PatientMotherBirthName", "PatientPrimaryLanguageCodeSequence", "PatientReligiousPreference", "MilitaryRank",
    "BranchOfService", "MedicalRecordLocator", "EthnicGroup", "Occupation", "AdditionalPatientHistory",
    "PatientComments", "CountryOfResidence", "RegionOfResidence", "MedicalAlerts", "Allergies", "SmokingStatus",
    "LastMenstrualDate", "PregnancyStatus", "PatientInsurancePlanCodeSequence", "ResponsiblePerson",
    "ResponsiblePersonRole", "ResponsibleOrganization", "PatientState", "CurrentPatientLocation",
    "PatientInstitutionResidence", "AdmissionID", "IssuerOfAdmissionIDSequence", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "DischargeDiagnosisDescription", "ServiceEpisodeID",
    "ServiceEpisodeDescription", "VisitComments", "ReasonForVisit", "StudyDescription", "SeriesDescription",
    "ProtocolName", "RequestedProcedureDescription", "RequestedProcedureID", "ReasonForTheRequestedProcedure",
    "RequestedProcedureComments", "ScheduledProcedureStepDescription", "ScheduledProcedureStepID",
    "PerformedProcedureStepDescription", "PerformedProcedureStepID", "PerformedLocation",
    "PerformedStationName", "PerformedStationAETitle", "ScheduledStationName", "ScheduledStationAETitle",
    "RequestAttributesSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence", "ReferencedPatientPhotoSequence", "ImageComments",
    "StudyComments", "InterpretationText", "AcquisitionComments", "FrameComments", "TextComments", "TextString",
    "DerivationDescription", "DeviceSerialNumber", "DeviceUID", "PlateID", "CassetteID", "GantryID",
    "DetectorID", "GeneratorID", "SourceSerialNumber", "ModifiedAttributesSequence",
    "OriginalAttributesSequence", "DigitalSignaturesSequence", "DataSetTrailingPadding", "ContentSequence",
    "AuthorObserverSequence", "ParticipantSequence", "CustodialOrganizationSequence",
    "ClinicalTrialSponsorName", "ClinicalTrialSiteName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialCoordinatingCenterName",
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription", "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber", "ClinicalTrialSeriesID", "ClinicalTrialSeriesDescription",
    "InstanceCreatorUID", "StorageMediaFileSetID", "StorageMediaFileSetUID", "ReferringPhysicianIdentificationSequence",
    "PersonAddress", "PersonTelephoneNumbers", "PersonIdentificationCodeSequence", "DistributionName",
    "DistributionAddress", "InsurancePlanIdentification", "IdentifyingComments",
)  # fmt: skip
_DATE_VRS = {"DA", "DT", "TM"}
_SESSION_SALT = secrets.token_hex(16)


def _new_uid(uid: str, salt: str) -> str:
    if not uid or uid.startswith("1.2.840.10008."):  # standard UIDs (SOP classes, transfer syntaxes) are not PHI
        return uid
    return str(pydicom.uid.generate_uid(entropy_srcs=[salt, uid]))


def _deidentify(ds: Dataset, salt: str) -> None:
    for keyword in _REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in _BLANK:
        if keyword in ds:
            ds.data_element(keyword).value = ""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _deidentify(item, salt)
        elif elem.VR in _DATE_VRS or elem.VR == "PN":
            elem.value = ""
        elif elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            new = [_new_uid(str(v), salt) for v in values]
            elem.value = new if elem.VM > 1 else new[0]


def deidentify_dataset(ds: Dataset, *, salt: str | None = None) -> Dataset:
    """Strip a pydicom dataset of patient data, following the DICOM PS3.15 basic profile (in place).

    Removes private tags and the profile's "X" attributes (institution, physicians, other IDs,
    descriptions, comments, device serials...), empties its "Z" attributes (patient name, ID,
    birth date, sex, accession, study date/time/ID, referring physician), empties every date, time
    and person name left (nested sequences included), and replaces every instance UID by one derived
    from it and ``salt``, so files of one series still share their new Series Instance UID. Burned-in
    text in the pixels is not touched: a warning is logged when ``BurnedInAnnotation`` is YES.

    Args:
        ds: the dataset (``file_meta`` too, when present).
        salt: secret mixed into the new UIDs; the same salt maps one UID to the same new UID across
            calls. Default: one random salt per process (not reproducible across runs).

    Returns:
        ``ds`` itself, with ``PatientIdentityRemoved`` = ``YES`` and ``DeidentificationMethod`` set.

    Example::

        ds = deidentify_dataset(pydicom.dcmread("in.dcm"))
        ds.save_as("out.dcm")
    """
    salt = _SESSION_SALT if salt is None else salt
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        logger.warning("a dataset says patient data may be burned into its pixels: check the images before sharing")
    ds.remove_private_tags()
    _deidentify(ds, salt)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or _new_uid(meta.MediaStorageSOPInstanceUID, salt)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "DICOM PS3.15 basic profile (medmtl)"
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    return ds


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
    out.parent.mkdir(parents=True, exist_ok=True)
    # a unique hidden name next to the target (same file system, so the rename is atomic), normal permissions
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp.nii.gz"
    try:
        nib.save(img, tmp)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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
