"""DICOM-SEG output for PACS users: a predicted mask written as a DICOM Segmentation of its source series.

A mask predicted from a DICOM series can go back to the PACS as a DICOM Segmentation (SEG) object,
built with `highdicom <https://highdicom.readthedocs.io>`_ (the optional extra ``medmtl[dicom-seg]``),
so radiologists see it overlaid on the images it was predicted from.

**Patient identity.** The DICOM standard requires a SEG to reference its source instances and to
belong to their patient and study: the SEG copies the source's patient and study modules (name, ID,
birth date, sex, accession number, study UID...). It is therefore, with the DICOM SR of the findings
(:mod:`medmtl.inference.dicom_sr`), one of the two medmtl outputs that contain patient identity, because
they are meant to go back to the PACS the images came from. Writing it is opt-in (:class:`medmtl.inference.MultiTaskPredictionWriter` with ``dicom_seg=True``); do not share
SEG files outside the hospital. File names and log messages still carry only the spec's case ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

import medmtl
from medmtl.atomic_io import atomic_write_with
from medmtl.data.dicom import scan_dicom
from medmtl.data.tasks import Task, TaskKind

hd, has_highdicom = optional_import("highdicom")
codes, _ = optional_import("pydicom.sr.codedict", name="codes")

__all__ = ["INSTALL_HINT", "PATIENT_STUDY_TYPE2", "write_dicom_seg", "has_highdicom"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'medmtl[dicom-seg]' (or pip install highdicom)"
# Geometry tolerance when checking a mask's affine against its source series (millimetres / relative).
_AFFINE_ATOL = 1e-3
_AFFINE_RTOL = 1e-4
# Type 2 (required, may be empty) patient/study attributes highdicom copies from the first source
# image; exports often leave them out.
PATIENT_STUDY_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
    "StudyTime", "ReferringPhysicianName",
)  # fmt: skip


def _mask_array(mask: np.ndarray | torch.Tensor, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` as a NumPy array of the series' spatial shape (a leading channel of size 1 is dropped)."""
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim == len(spatial_shape) + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != tuple(spatial_shape):
        raise ValueError(
            f"write_dicom_seg: the mask has shape {tuple(arr.shape)}, its source series {tuple(spatial_shape)} "
            "(columns, rows[, slices], medmtl's DICOM reader order); predict on the input grid, or invert the "
            "preprocessing first (MultiTaskPredictionWriter(invert_transform=...))"
        )
    return arr


def _check_labels(arr: np.ndarray, task: Task) -> np.ndarray:
    """Class indices of ``task`` as unsigned integers; raises when ``arr`` holds anything else."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
        raise ValueError("write_dicom_seg: the mask must hold class indices (whole numbers), got fractional values")
    if arr.dtype.kind not in "uif":
        raise ValueError(f"write_dicom_seg: the mask must hold class indices, got dtype {arr.dtype}")
    n = task.num_outputs
    values = np.unique(arr)
    bad = values[(values < 0) | (values >= n)]
    if bad.size:
        raise ValueError(
            f"write_dicom_seg: the mask holds values {bad[:8].tolist()} outside task '{task.name}''s class indices "
            f"0..{n - 1} ({list(task.class_names)})"
        )
    return arr.astype(np.uint8 if n <= 256 else np.uint16)


def _segment_descriptions(
    task: Task, algorithm_name: str, algorithm_version: str, segment_codes: Mapping[str, tuple[Any, Any]] | None
) -> list[Any]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=str(algorithm_version)[:64],
    )
    segment_codes = dict(segment_codes or {})
    unknown = sorted(set(segment_codes) - set(task.class_names[1:]))
    if unknown:
        raise ValueError(
            f"write_dicom_seg: segment_codes names {unknown}, not foreground classes of task '{task.name}' "
            f"({list(task.class_names[1:])})"
        )
    descriptions = []
    for number, name in enumerate(task.class_names[1:], start=1):
        category, kind = segment_codes.get(name, (codes.SCT.Tissue, codes.SCT.Tissue))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    return descriptions


def write_dicom_seg(
    mask: np.ndarray | torch.Tensor,
    source_dir: str | os.PathLike,
    output_path: str | os.PathLike,
    task: Task,
    *,
    series_description: str | None = None,
    algorithm_name: str = "medmtl",
    algorithm_version: str = medmtl.__version__,
    manufacturer: str = "medmtl",
    series_number: int = 1000,
    segment_codes: Mapping[str, tuple[Any, Any]] | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
) -> Path:
    """Write a class-index mask as a BINARY DICOM Segmentation of the series it was predicted from.

    One segment per foreground class of ``task`` (segment ``k`` is class ``k``, labelled with its
    class name; background is not a segment). Frame ``i`` of the mask's slice axis is the source file
    at position ``i`` of :func:`medmtl.data.dicom.scan_dicom`'s order, the order medmtl's DICOM
    reader stacks slices in (along the slice normal), so the SEG frames reference the right source
    instances whatever the files' names or instance numbers. Empty frames are left out, as
    highdicom does by default. The file is written to a temporary name and renamed.

    **The SEG contains patient identity**: the standard requires it to copy the patient and study
    modules of its source images (name, ID, birth date, accession number...) and to reference them.
    It (and the DICOM SR of :mod:`medmtl.inference.dicom_sr`) is the medmtl output that does, because it
    goes back to the PACS; keep it there.

    Args:
        mask: class indices of ``task``, in medmtl's DICOM reader layout: ``(columns, rows, slices)``
            for a series folder or multi-frame file, ``(columns, rows)`` for a single image (an extra
            leading channel of size 1 is accepted), on the source grid.
        source_dir: the DICOM series folder (or file) the case was read from.
        output_path: the ``.dcm`` file to write (parent folders are created).
        task: the segmentation task; its class names become the segment labels.
        series_description: of the new SEG series; default ``"medmtl <task>"``.
        algorithm_name: algorithm identification of every segment (and manufacturer model name).
        algorithm_version: its version (also the SEG's software version).
        manufacturer: the SEG's manufacturer.
        series_number: series number of the new SEG series.
        segment_codes: ``{class name: (category, type)}`` coded concepts (``pydicom.sr.codedict.codes``)
            per foreground class; default ``codes.SCT.Tissue`` for both, e.g. give
            ``{"lesion": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion)}``.
        affine: the mask's voxel-to-RAS affine (``MetaTensor.affine``); when given it must match the
            series' affine, which catches masks left on a reoriented or resampled grid.

    Returns:
        ``output_path``.

    Raises:
        ImportError: highdicom is not installed.
        ValueError: ``task`` is not a segmentation; the mask's shape, values or affine do not fit the
            series and task; ``segment_codes`` names an unknown class.
        medmtl.data.dicom.DicomError: the source is not one readable DICOM series.

    Example::

        image, meta = read_dicom("case_012/")  # (512, 512, 80)
        mask = predict(image)  # class indices, (512, 512, 80)
        write_dicom_seg(mask, "case_012/", "out/lesion/case_012_seg.dcm", task)
    """
    if not has_highdicom:
        raise ImportError(f"write_dicom_seg needs highdicom: {INSTALL_HINT}")
    if task.kind != TaskKind.SEGMENTATION:
        raise ValueError(f"write_dicom_seg: task '{task.name}' is {task.kind.value}, expected a segmentation task")
    series = scan_dicom(source_dir)
    arr = _check_labels(_mask_array(mask, series.spatial_shape), task)
    if affine is not None:
        got = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
        if got.shape == series.affine.shape and not np.allclose(
            got, series.affine, rtol=_AFFINE_RTOL, atol=_AFFINE_ATOL
        ):
            raise ValueError(
                "write_dicom_seg: the mask's affine differs from its source series' affine: the mask is not on the "
                "series' grid (reoriented or resampled); invert the preprocessing first "
                f"(mask affine\n{np.round(got, 4)}\nseries affine\n{np.round(series.affine, 4)})"
            )
    for ds in series.headers:  # headers read for this call only: filling them changes no file
        for keyword in PATIENT_STUDY_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    # medmtl's layout (columns, rows[, slices]) -> highdicom's (frames, rows, columns)
    frames = arr.T[None] if arr.ndim == 2 else np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))

    seg = hd.seg.Segmentation(
        source_images=series.headers,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(task, algorithm_name, algorithm_version, segment_codes),
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer[:64],
        manufacturer_model_name=algorithm_name[:64],
        software_versions=str(algorithm_version)[:64],
        device_serial_number="0",
        content_label=task.name.upper()[:16],
        content_description=f"medmtl {task.name} prediction"[:64],
        series_description=(series_description or f"medmtl {task.name}")[:64],
    )

    out = atomic_write_with(output_path, lambda handle: seg.save_as(handle, enforce_file_format=True))
    logger.info("wrote DICOM-SEG %s (%d segment(s), %d source file(s))", out, task.num_outputs - 1, len(series.files))
    return out
