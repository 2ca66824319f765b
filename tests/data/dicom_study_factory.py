"""A small PACS export for tests: two studies, several series each, laid out as exports are.

Study 1 (MR): a three-plane localizer, an axial 3D MR volume and a one-image secondary capture
(another modality) that shares the volume's folder; study 2: a CT volume only (no series an MR
model takes). Every file carries the planted identifiers of :mod:`dicom_factory`; folder names carry
none. Volumes are given in medmtl's layout ``(columns, rows, slices)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dicom_factory import make_dataset, save
from pydicom.uid import generate_uid

__all__ = ["MR_IMAGE", "PacsExport", "write_pacs_export", "write_volume_series"]

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_PLANES = {"axial": (1, 0, 0, 0, 1, 0), "sagittal": (0, 1, 0, 0, 0, -1), "coronal": (1, 0, 0, 0, 0, -1)}


@dataclass
class PacsExport:
    """What :func:`write_pacs_export` wrote: the root, the study and series UIDs, the MR volume's files."""

    root: Path
    studies: list[str] = field(default_factory=list)
    series: dict[str, str] = field(default_factory=dict)  # name -> SeriesInstanceUID
    mr_files: list[Path] = field(default_factory=list)


def write_volume_series(
    folder: Path,
    volume: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    number: int,
    modality: str = "MR",
    description: str = "T1 AX 3D",
    spacing: tuple[float, float, float] = (0.9, 1.1, 2.0),
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M"),
    prefix: str = "IM",
    plane: str = "axial",
) -> list[Path]:
    """``volume`` (columns, rows, slices; float) as a series of int16 slices with a 0.01 rescale slope.

    ``spacing``: (between columns, between rows, between slices) in mm; ``plane``: axial, sagittal or coronal
    slices (positions along the slice normal).
    """
    files = []
    orientation = np.array(_PLANES[plane], dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    for k in range(volume.shape[2]):
        pixels = np.round(volume[:, :, k].T * 100).astype(np.int16)  # (rows, columns)
        ds = make_dataset(
            pixels,
            series_uid=series_uid,
            instance=k + 1,
            position=tuple(np.array((-20.0, -30.0, 10.0)) + k * spacing[2] * normal),
            orientation=_PLANES[plane],
            pixel_spacing=(spacing[1], spacing[0]),
            thickness=spacing[2],
            sop_class=MR_IMAGE if modality == "MR" else CT_IMAGE,
            modality=modality,
            description=description,
            rescale=(0.01, 0.0),
        )
        ds.StudyInstanceUID, ds.SeriesNumber, ds.ImageType = study_uid, number, list(image_type)
        files.append(save(ds, folder / f"{prefix}{k + 1:04d}"))  # no suffix: found by the DICM preamble
    return files


def write_pacs_export(root: Path, volume: np.ndarray) -> PacsExport:
    """The two studies under ``root`` (see the module docstring), ``volume`` as study 1's MR series."""
    export = PacsExport(Path(root))
    study1, study2 = generate_uid(), generate_uid()
    export.studies = [study1, study2]
    export.series = {name: generate_uid() for name in ("localizer", "mr", "screen", "ct")}
    for k, plane in enumerate(("axial", "sagittal", "coronal")):  # one image per plane
        ds = make_dataset(
            np.full((16, 16), 100 * k, dtype=np.int16),
            series_uid=export.series["localizer"],
            instance=k + 1,
            orientation=_PLANES[plane],
            sop_class=MR_IMAGE,
            modality="MR",
            description="LOCALIZER",
        )
        ds.StudyInstanceUID, ds.SeriesNumber, ds.ImageType = study1, 1, ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        save(ds, root / "EXPORT" / "S1" / "SE1" / f"IM{k + 1:04d}.dcm")
    export.mr_files = write_volume_series(
        root / "EXPORT" / "S1" / "SE2", volume, study_uid=study1, series_uid=export.series["mr"], number=2
    )
    screen = make_dataset(
        np.zeros((8, 8), dtype=np.int16),
        series_uid=export.series["screen"],
        sop_class=SECONDARY_CAPTURE,
        modality="OT",
        description="SCREEN SAVE",
        position=None,
        orientation=None,
    )
    screen.StudyInstanceUID, screen.SeriesNumber, screen.ImageType = study1, 99, ["DERIVED", "SECONDARY"]
    save(screen, root / "EXPORT" / "S1" / "SE2" / "SC0001.dcm")  # in the MR series' folder
    write_volume_series(
        root / "EXPORT" / "S2" / "SE1",
        np.full((12, 10, 4), 40.0),
        study_uid=study2,
        series_uid=export.series["ct"],
        number=1,
        modality="CT",
        description="CT HEAD",
    )
    (root / "EXPORT" / "README.TXT").write_text("exported by the PACS")
    return export
