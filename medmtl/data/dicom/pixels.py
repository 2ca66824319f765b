"""Decoding a checked series to an array with its geometry (rescale, MONOCHROME1, palette colour, frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medmtl.data.dicom.file_checks import _decoder_available, _frames, _transfer_syntax
from medmtl.data.dicom.geometry import _functional_item
from medmtl.data.dicom.series import _GDCM_SYNTAXES, DicomError, DicomSeries
from medmtl.data.problems import Problem

__all__ = ["decode_series"]


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
