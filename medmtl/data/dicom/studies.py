"""DICOM files into studies and series, from headers only: what a PACS export folder holds.

Why: a PACS export mixes studies and series (localizers, reformats, other sequences, reports, a
segmentation) in folders named anything. Before a model can be given "the" series of a study, each
series must be known by what selection rules look at: modality, image type, orientation, number of
images, description. This groups files by ``StudyInstanceUID`` and ``SeriesInstanceUID`` reading
headers only (``stop_before_pixels``: nothing is decoded), and describes each series. Nothing here
keeps a patient's name or ID: studies are told apart by their UIDs and numbered by the caller.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medmtl.data.dicom.file_checks import _frames
from medmtl.data.dicom.geometry import _plane
from medmtl.data.dicom.series import _candidate_files, _read_header
from medmtl.data.problems import Problem

__all__ = ["DicomStudy", "SeriesHeaders", "group_studies", "series_folder", "slice_orientation"]

#: the anatomical plane of a slice, by the patient axis its normal runs along most (LPS: x, y, z).
_PLANES = ("sagittal", "coronal", "axial")


def slice_orientation(ds: Dataset, frame: int | None = None) -> str:
    """``axial``, ``sagittal`` or ``coronal``: the plane nearest to the image's (``unknown`` without geometry).

    The slice normal's largest patient-axis component decides (x: left-right -> sagittal, y:
    anterior-posterior -> coronal, z: feet-head -> axial), as viewers name oblique slices.
    """
    plane = _plane(ds, frame)
    if plane.row_cos is None:
        return "unknown"
    return _PLANES[int(np.argmax(np.abs(plane.normal)))]


@dataclass(frozen=True)
class SeriesHeaders:
    """One series of a study as its headers describe it (no pixel read).

    Attributes:
        study_uid: ``StudyInstanceUID``.
        series_uid: ``SeriesInstanceUID``.
        number: ``SeriesNumber`` (``None`` when absent or not a number).
        modality: ``Modality`` (upper case).
        description: ``SeriesDescription``.
        image_type: ``ImageType`` values of its first file (upper case).
        orientation: ``axial``/``sagittal``/``coronal``, ``mixed`` when its images differ (a localizer),
            ``unknown`` without geometry.
        files: its files, sorted by ``InstanceNumber`` then path.
        frames: frames of each file (1 for a single-frame image).
        has_pixels: its files hold images (``Rows``); reports and structure sets do not.
    """

    study_uid: str
    series_uid: str
    number: int | None
    modality: str
    description: str
    image_type: tuple[str, ...]
    orientation: str
    files: tuple[Path, ...]
    frames: tuple[int, ...]
    has_pixels: bool

    @property
    def slices(self) -> int:
        """Images in the series: single-frame files plus the frames of multi-frame ones."""
        return int(sum(self.frames))

    @property
    def multiframe(self) -> bool:
        return any(n > 1 for n in self.frames)


@dataclass(frozen=True)
class DicomStudy:
    """A study: its UID, its series (by series number, then UID) and the folder that holds all its files."""

    uid: str
    series: tuple[SeriesHeaders, ...]
    folder: Path


def _text(ds: Dataset, keyword: str) -> str:
    return " ".join(str(ds.get(keyword, "") or "").split())


def _number(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _series(study_uid: str, series_uid: str, items: list[tuple[Path, Dataset]]) -> SeriesHeaders:
    items = sorted(items, key=lambda item: (_number(item[1].get("InstanceNumber")) or 0, str(item[0])))
    first = items[0][1]
    frames = tuple(_frames(ds) for _, ds in items)
    has_pixels = all("Rows" in ds for _, ds in items)
    planes: set[str] = set()
    for (_, ds), n in zip(items, frames, strict=True):
        if "Rows" in ds:
            planes.update(slice_orientation(ds, i if n > 1 else None) for i in range(n))
    orientation = planes.pop() if len(planes) == 1 else ("mixed" if len(planes) > 1 else "unknown")
    image_type = first.get("ImageType") or ()
    image_type = (image_type,) if isinstance(image_type, str) else image_type
    return SeriesHeaders(
        study_uid=study_uid,
        series_uid=series_uid,
        number=_number(first.get("SeriesNumber")),
        modality=_text(first, "Modality").upper(),
        description=_text(first, "SeriesDescription"),
        image_type=tuple(str(v).strip().upper() for v in image_type),
        orientation=orientation,
        files=tuple(path for path, _ in items),
        frames=frames,
        has_pixels=has_pixels,
    )


def group_studies(files: Iterable[str | os.PathLike]) -> tuple[list[DicomStudy], list[Problem]]:
    """The studies and series ``files`` belong to, read from their headers only.

    Args:
        files: DICOM files (from any folders; a study may be spread over several).

    Returns:
        The studies, ordered by their first file's path (series by number, then UID), and a
        ``not_dicom`` problem for each file whose header cannot be read (naming it). A file without
        a ``StudyInstanceUID`` or ``SeriesInstanceUID`` is grouped under an empty UID.
    """
    problems: list[Problem] = []
    groups: dict[str, dict[str, list[tuple[Path, Dataset]]]] = defaultdict(lambda: defaultdict(list))
    first_file: dict[str, Path] = {}
    for name in sorted(Path(f) for f in files):
        header = _read_header(name)
        if isinstance(header, Problem):
            problems.append(header)
            continue
        study, series = _text(header, "StudyInstanceUID"), _text(header, "SeriesInstanceUID")
        groups[study][series].append((name, header))
        first_file.setdefault(study, name)
    studies = []
    for study_uid in sorted(groups, key=lambda uid: str(first_file[uid])):
        series = [_series(study_uid, uid, items) for uid, items in groups[study_uid].items()]
        series.sort(key=lambda s: (s.number is None, s.number or 0, s.series_uid))
        paths = [str(p.parent) for s in series for p in s.files]
        studies.append(DicomStudy(study_uid, tuple(series), Path(os.path.commonpath(paths))))
    return studies, problems


def series_folder(files: Iterable[Path]) -> Path | None:
    """The folder that holds exactly ``files`` as medmtl's DICOM reader sees a folder, else ``None``.

    A series exported into its own folder can be read from that folder as it is; a folder that also
    holds other series (or a file the reader would try) cannot.
    """
    files = [Path(f) for f in files]
    parents = {f.parent for f in files}
    if len(parents) != 1:
        return None
    folder = parents.pop()
    found = {p.resolve() for p in _candidate_files(folder, recursive=False)}
    return folder if found == {f.resolve() for f in files} else None
