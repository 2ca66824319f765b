"""Small synthetic DICOM files for tests, written with pydicom in the real on-disk layout.

Every file carries planted identifiers (:data:`PLANTED`) so tests can assert that none of them
reaches an output file, a file name, a log message or an error message. Arrays returned as
"expected" are in MONAI's layout: ``(columns, rows, slices)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["PLANTED", "PLANTED_STRINGS", "expected_affine", "make_dataset", "save", "slice_pixels", "write_series"]

PLANTED = {
    "PatientName": "DOE^JANE",
    "PatientID": "SECRET123",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC98765",
    "InstitutionName": "St Elsewhere General",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "StudyDate": "20240102",
    "OtherPatientIDs": "OTHERID77",
}
PLANTED_STRINGS = [
    "DOE^JANE",
    "JANE",
    "SECRET123",
    "19700101",
    "ACC98765",
    "Elsewhere",
    "GREGORY",
    "20240102",
    "OTHERID77",
]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_dataset(
    pixels: np.ndarray,
    *,
    series_uid: str,
    instance: int = 1,
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
    pixel_spacing: Sequence[float] | None = (0.8, 0.7),
    thickness: float | None = 2.5,
    sop_class: str = CT_IMAGE,
    modality: str = "CT",
    description: str = "AX TEST",
    photometric: str | None = None,
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """One image dataset with planted identifiers; ``pixels`` is (rows, cols), (frames, rows, cols) or (..., 3)."""
    pixels = np.asarray(pixels)
    colour = pixels.shape[-1] == 3 and pixels.dtype == np.uint8
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    rows, cols = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    for key, value in PLANTED.items():
        setattr(ds, key, value)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if thickness is not None:
        ds.SliceThickness = thickness
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.Rows, ds.Columns = int(rows), int(cols)
    if frames > 1:
        ds.NumberOfFrames = frames
    if colour:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric or "RGB"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric or "MONOCHROME2"
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def slice_pixels(rows: int, cols: int, k: int) -> np.ndarray:
    """Distinct int16 values per voxel and per slice."""
    return (np.arange(rows * cols, dtype=np.int16).reshape(rows, cols) + 1000 * k).astype(np.int16)


def write_series(
    folder: Path,
    n: int = 5,
    rows: int = 12,
    cols: int = 16,
    *,
    spacing: float = 2.5,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (-10.0, 20.0, 30.0),
    pixel_spacing: Sequence[float] = (0.8, 0.7),
    skip: Sequence[int] = (),
    offsets: Sequence[float] | None = None,
    series_uid: str | None = None,
    description: str = "AX TEST",
    prefix: str = "IM",
    reverse_instance_numbers: bool = False,
) -> tuple[list[Path], np.ndarray]:
    """``n`` slices along the orientation's normal; returns the files and the expected (cols, rows, n') volume.

    ``skip`` leaves slice indices out (a missing slice); ``offsets`` gives each slice's distance along
    the normal instead of ``k * spacing`` (uneven or duplicate slices).
    """
    series_uid = series_uid or generate_uid()
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    files, planes = [], []
    kept = [k for k in range(n) if k not in skip]
    for order, k in enumerate(kept):
        distance = offsets[k] if offsets is not None else k * spacing
        position = np.asarray(origin, dtype=float) + distance * normal
        pixels = slice_pixels(rows, cols, k)
        number = (n - k) if reverse_instance_numbers else k + 1
        ds = make_dataset(
            pixels,
            series_uid=series_uid,
            instance=number,
            position=position,
            orientation=orientation,
            pixel_spacing=pixel_spacing,
            thickness=spacing,
            description=description,
        )
        # file names in an order unrelated to position, as PACS exports often are
        files.append(save(ds, folder / f"{prefix}{(7 * order + 3) % 97:04d}.dcm"))
        planes.append(pixels.T)
    return files, np.stack(planes, axis=-1)


def expected_affine(
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (-10.0, 20.0, 30.0),
    pixel_spacing: Sequence[float] = (0.8, 0.7),
    spacing: float = 2.5,
) -> np.ndarray:
    """RAS affine of a (cols, rows, slices) volume written by :func:`write_series` (DICOM PS3.3 C.7.6.2.1.1)."""
    iop = np.asarray(orientation, dtype=float)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * pixel_spacing[1]
    lps[:3, 1] = iop[3:] * pixel_spacing[0]
    lps[:3, 2] = np.cross(iop[:3], iop[3:]) * spacing
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
