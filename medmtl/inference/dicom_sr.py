"""DICOM SR output for PACS users: a case's findings and probabilities as a TID 1500 measurement report.

A SEG carries masks only; the classification answers (abnormal or not, which diagnosis, with what
probability) would never reach a DICOM viewer. This writes them, per case read from DICOM, as a
Comprehensive 3D SR document holding an Imaging Measurement Report (DICOM PS3.16 TID 1500), built
with `highdicom <https://highdicom.readthedocs.io>`_ (the ``medmtl[dicom-seg]`` extra):

- one measurement group (TID 1501) per image-level class or label: its probability (DCM 122157
  "Probability", unit UCUM ``1``), the decision threshold where the task has one, and the decision
  as a qualitative evaluation, the class coded Present (SCT 52101004) or Absent (SCT 272519000);
- one group per foreground class of each segmentation task: the predicted structure's volume
  (SCT 118565006, ``mm3``) or area in 2D (SCT 42798000, ``mm2``) and its voxel count; when a SEG
  was written, a volumetric (TID 1411) or planar (TID 1410) ROI group referencing its segment;
- the device observer (medmtl, the model's name and version) and each group's algorithm
  identification; the source series' instances (and the SEGs) as evidence, so the report is filed
  with its study and series.

Task and class names have no standard code: they are coded in the private coding scheme
``99MEDMTL`` (DICOM reserves designators starting ``99`` for local schemes), value ``<task>`` or
``<task>:<class>``, meaning the class name. The values are those of ``predictions.csv`` (the
writer's row of the case), so the SR and the table never disagree.

**Patient identity.** As for a SEG (:mod:`medmtl.inference.dicom_seg`), the standard requires an SR
to belong to the patient and study of its evidence: it copies their patient and study modules (name,
ID, birth date, sex, accession number, study UID...). It goes back to the PACS the images came
from; do not share it outside the hospital. File names and log messages carry only case ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import
from pydicom.uid import generate_uid

import medmtl
from medmtl.atomic_io import atomic_write_with
from medmtl.data.dicom import scan_dicom
from medmtl.data.tasks import Task, TaskKind
from medmtl.inference.dicom_seg import INSTALL_HINT, PATIENT_STUDY_TYPE2

hd, has_highdicom = optional_import("highdicom")
codes, _ = optional_import("pydicom.sr.codedict", name="codes")
Code, _ = optional_import("pydicom.sr.coding", name="Code")

__all__ = [
    "CODING_SCHEME",
    "ClassFinding",
    "SegmentFinding",
    "TaskFinding",
    "image_level_finding",
    "write_dicom_sr",
]

logger = logging.getLogger(__name__)

#: private coding scheme designator of task and class names (no standard code exists for them).
CODING_SCHEME = "99MEDMTL"


@dataclass(frozen=True)
class ClassFinding:
    """One class (or label) of an image-level task: its probability and whether the model decided it."""

    name: str
    probability: float
    present: bool
    threshold: float | None = None


@dataclass(frozen=True)
class TaskFinding:
    """The result of one image-level task for one case."""

    task: Task
    classes: tuple[ClassFinding, ...]


@dataclass(frozen=True)
class SegmentFinding:
    """One foreground class of a segmentation task for one case: its voxel count, and its SEG if written."""

    task: Task
    class_index: int
    voxels: int
    seg_path: Path | None = None


def image_level_finding(task: Task, row: Mapping[str, Any]) -> TaskFinding:
    """The finding of ``task`` from a case's ``predictions.csv`` row (as :class:`MultiTaskPredictionWriter` fills it).

    Multiclass: every class's ``<task>_p_<class>``, the decided class ``<task>`` present. Binary: the
    positive class, ``<task>_probability``, ``<task>`` (0/1) and ``<task>_threshold``. Multilabel: each
    label's ``<task>_<label>_probability``, ``<task>_<label>`` and ``<task>_<label>_threshold``.

    Raises:
        ValueError: ``task`` is a segmentation task, or the row lacks one of its columns.
    """
    if task.kind == TaskKind.SEGMENTATION:
        raise ValueError(f"image_level_finding: task '{task.name}' is a segmentation task")
    try:
        if task.kind == TaskKind.MULTICLASS:
            decided = row[task.name]
            found = tuple(ClassFinding(c, float(row[f"{task.name}_p_{c}"]), c == decided) for c in task.class_names)
        else:
            names = task.class_names[1:] if task.kind == TaskKind.BINARY else task.class_names
            keys = [task.name if task.kind == TaskKind.BINARY else f"{task.name}_{n}" for n in names]
            found = tuple(
                ClassFinding(n, float(row[f"{k}_probability"]), int(row[k]) == 1, float(row[f"{k}_threshold"]))
                for n, k in zip(names, keys, strict=True)
            )
    except KeyError as err:
        raise ValueError(f"image_level_finding: the row of task '{task.name}' has no column {err}") from None
    return TaskFinding(task, found)


def _code(value: str, meaning: str) -> Any:
    return hd.sr.CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=meaning[:64])


def _class_code(task: Task, name: str) -> Any:
    return _code(f"{task.name}:{name}", name)


def _unit(value: str, meaning: str) -> Any:
    return hd.sr.CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning)


def _voxel_size(series: Any) -> float | None:
    """mm3 per voxel (mm2 per pixel for one 2D image) from the series' affine; ``None`` without pixel spacing."""
    ds = series.headers[0]
    spaced = series.has_geometry or any(
        k in ds for k in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
    )
    if not spaced:
        return None
    axes = np.asarray(series.affine, dtype=np.float64)[:3, :3]
    if len(series.spatial_shape) == 2:
        return float(np.linalg.norm(np.cross(axes[:, 0], axes[:, 1])))
    return float(abs(np.linalg.det(axes)))


def _groups_for_task(finding: TaskFinding, algorithm: Any, sources: list[Any]) -> list[Any]:
    groups = []
    for found in finding.classes:
        code = _class_code(finding.task, found.name)
        measurements = [hd.sr.Measurement(name=codes.DCM.Probability, value=found.probability, unit=codes.UCUM.NoUnits)]
        if found.threshold is not None:
            threshold = _code("threshold", "Decision threshold")
            measurements.append(hd.sr.Measurement(name=threshold, value=found.threshold, unit=codes.UCUM.NoUnits))
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{finding.task.name} {found.name}"
                ),
                finding_type=code,
                finding_category=_code(finding.task.name, finding.task.name),
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=code, value=codes.SCT.Present if found.present else codes.SCT.Absent
                    )
                ],
                source_images=sources,
            )
        )
    return groups


def _segment_group(found: SegmentFinding, seg: Any, voxel_size: float | None, planar: bool, algorithm: Any) -> Any:
    name = found.task.class_names[found.class_index]
    code = _class_code(found.task, name)
    measurements = [
        hd.sr.Measurement(
            name=_code("voxels", "Voxel count"), value=float(found.voxels), unit=_unit("{voxels}", "voxels")
        )
    ]
    if voxel_size is not None:
        size, unit = (
            (codes.SCT.Area, _unit("mm2", "square millimeter"))
            if planar
            else (codes.SCT.Volume, codes.UCUM.CubicMillimeter)
        )
        measurements.append(hd.sr.Measurement(name=size, value=found.voxels * voxel_size, unit=unit))
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{found.task.name} {name}"),
        "finding_type": code,
        "finding_category": _code(found.task.name, found.task.name),
        "algorithm_id": algorithm,
        "measurements": measurements,
        "qualitative_evaluations": [
            hd.sr.QualitativeEvaluation(name=code, value=codes.SCT.Present if found.voxels else codes.SCT.Absent)
        ],
    }
    if seg is None or not found.voxels:  # no segment to point at (not written, or empty: SEGs leave empty frames out)
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    if planar:
        reference = hd.sr.ReferencedSegmentationFrame.from_segmentation(seg, segment_number=found.class_index)
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_segment=reference, **common)
    reference = hd.sr.ReferencedSegment.from_segmentation(seg, segment_number=found.class_index)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=reference, **common)


def write_dicom_sr(
    source: str | os.PathLike,
    output_path: str | os.PathLike,
    findings: Sequence[TaskFinding] = (),
    segments: Sequence[SegmentFinding] = (),
    *,
    model_name: str = "medmtl model",
    algorithm_version: str = medmtl.__version__,
    manufacturer: str = "medmtl",
    series_number: int = 1001,
    series_description: str = "medmtl findings",
) -> Path:
    """Write a case's findings as a Comprehensive 3D SR (TID 1500 measurement report) of its source series.

    Args:
        source: the DICOM series folder (or file) the case was read from.
        output_path: the ``.dcm`` file to write (parent folders are created; written to a temporary
            name and renamed).
        findings: image-level task results (:func:`image_level_finding`).
        segments: segmentation results; a ``seg_path`` makes the group reference that SEG's segment.
        model_name: the model, as the device observer's model name and each group's algorithm name.
        algorithm_version: its version (also the SR's software version).
        manufacturer: the SR's manufacturer and the device's.
        series_number: series number of the new SR series.
        series_description: of the new SR series.

    Returns:
        ``output_path``.

    Raises:
        ImportError: highdicom is not installed.
        ValueError: nothing to report.
        medmtl.data.dicom.DicomError: the source is not one readable DICOM series.

    Example::

        row = writer.write_sample(sample)  # a case's predictions.csv row
        write_dicom_sr("case_012/", "out/dicom_sr/case_012_sr.dcm", [image_level_finding(task, row)])
    """
    if not has_highdicom:
        raise ImportError(f"write_dicom_sr needs highdicom: {INSTALL_HINT}")
    if not findings and not segments:
        raise ValueError("write_dicom_sr: no finding and no segment given; there is nothing to report")
    series = scan_dicom(source)
    for ds in series.headers:  # headers read for this call only: filling them changes no file
        for keyword in PATIENT_STUDY_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    algorithm = hd.sr.AlgorithmIdentification(name=model_name[:64], version=str(algorithm_version)[:64])
    frames = [int(n) for n in range(1, int(series.headers[0].get("NumberOfFrames") or 1) + 1)]
    multiframe = series.kind == "multiframe"
    sources = [
        hd.sr.SourceImageForMeasurementGroup(
            ds.SOPClassUID, ds.SOPInstanceUID, referenced_frame_numbers=frames if multiframe else None
        )
        for ds in series.headers
    ]
    groups = [group for finding in findings for group in _groups_for_task(finding, algorithm, sources)]
    voxel_size, planar = _voxel_size(series), len(series.spatial_shape) == 2
    segs: dict[Path, Any] = {}
    for found in segments:
        if found.seg_path is not None and found.seg_path not in segs:
            segs[found.seg_path] = hd.seg.segread(found.seg_path)
        seg = segs.get(found.seg_path) if found.seg_path is not None else None
        groups.append(_segment_group(found, seg, voxel_size, planar, algorithm))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["medmtl", model_name, str(algorithm_version)]),
        name=model_name[:64],
        manufacturer_name=manufacturer[:64],
        model_name=model_name[:64],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*series.headers, *segs.values()],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer[:64],
        is_complete=True,
        series_description=series_description[:64],
        manufacturer_model_name=model_name[:64],
        software_versions=str(algorithm_version)[:64],
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=CODING_SCHEME, name="medmtl task and class names", responsible_organization="medmtl"
            )
        ],
    )
    out = atomic_write_with(output_path, lambda handle: sr.save_as(handle, enforce_file_format=True))
    logger.info("wrote DICOM SR %s (%d measurement group(s))", out, len(groups))
    return out
