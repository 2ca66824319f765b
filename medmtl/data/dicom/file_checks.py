"""Checks of one DICOM file before its pixels are used: transfer syntax and decoder, size, kind of object."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medmtl.data.dicom.series import _GDCM_SYNTAXES, _PLUGINS, _SEG_SOP_CLASSES
from medmtl.data.header_guard import max_image_bytes as _image_cap
from medmtl.data.header_guard import size_problem
from medmtl.data.problems import Problem, Severity

__all__ = [
    "_decoder_available",
    "_file_problems",
    "_frames",
    "_pixel_bytes",
    "_transfer_syntax",
]  # underscored: shared inside medmtl.data.dicom only


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


def _frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1
