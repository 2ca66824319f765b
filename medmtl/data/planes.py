"""Reformat one 3D knee MRI series into MRNet's three plane stacks (axial, coronal, sagittal).

Why: the MRNet-trained knee model reads three ``uint8`` stacks of shape ``(slices, 256, 256)``, one
per plane, as in the preprocessed MRNet v1.0 release (``{split}/{axial,coronal,sagittal}/{id}.npy``,
read by ``data_specs/mrnet.yaml``). A user's own knee exam is usually one 3D series (a sagittal 3D
DESS or PD acquisition, as NIfTI or a DICOM folder), so the three planes are derived from that one
volume: reoriented with MONAI's ``Orientation`` from its patient geometry (never from the array
layout, which differs per scanner and per acquisition plane), resampled with MONAI's ``Resize`` to
square in-plane pixels and thick slices, intensity-scaled like MRNet's arrays and written where the
MRNet spec finds them.

Plane convention (radiological display, as a scanner stores the pixels of standard DICOM planes;
``stack[s]`` is one 2D image shown with ``rows`` top to bottom and ``cols`` left to right):

=========  ===========================  ====================  =========================  =========
plane      slices (axis 0)              rows (axis 1)         cols (axis 2)              axcodes
=========  ===========================  ====================  =========================  =========
axial      inferior -> superior         anterior -> posterior patient right -> left      ``SPL``
coronal    anterior -> posterior        superior -> inferior  patient right -> left      ``PIL``
sagittal   patient right -> left        superior -> inferior  anterior -> posterior      ``LIP``
=========  ===========================  ====================  =========================  =========

So the patient's right is on the viewer's left in axial and coronal images, and anterior is on the
viewer's left in sagittal images; slices run in increasing DICOM (LPS) patient coordinates. From a
RAS-oriented array ``ras[x, y, z]`` (x towards the patient's right, y anterior, z superior) the
stacks are, before resampling::

    axial    = ras.transpose(2, 1, 0)[:, ::-1, ::-1]
    coronal  = ras.transpose(1, 2, 0)[::-1, ::-1, ::-1]
    sagittal = ras.transpose(0, 2, 1)[::-1, ::-1, ::-1]

An oblique series (a sagittal plane tilted along the ACL, say) goes to the nearest anatomical axes
(MONAI ``Orientation`` permutes and flips, it does not rotate), so its planes stay as tilted as the
acquisition. The slice order does not matter to ``MultiPlaneNet``, which max-pools over slices.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import Orientation, Resize, ScaleIntensityRangePercentiles, SpatialPad
from monai.utils import MetaKeys, SpaceKeys

from medmtl.atomic_io import atomic_write_with
from medmtl.data.format_checks import affine_problem
from medmtl.data.problems import DataError, Problem
from medmtl.data.readers import ImageReadError, MedmtlDicomReader, load_image, reader_for

__all__ = [
    "DEFAULT_SLICE_MM",
    "MRNET_SLICE_RANGE",
    "PERCENTILES",
    "PLANES",
    "SPLITS",
    "plane_stacks",
    "reformat_planes",
]

logger = logging.getLogger(__name__)

PLANES: Mapping[str, str] = {"axial": "SPL", "coronal": "PIL", "sagittal": "LIP"}
"""MONAI axcodes per plane: (slices, rows, cols) point towards these patient directions (see the module docstring)."""
DEFAULT_SLICE_MM = 3.0
"""Slice spacing when none is given: a typical clinical knee slice thickness."""
MRNET_SLICE_RANGE = (20, 60)
"""Slices per stack in automatic mode; MRNet's exams hold about 17-61 slices per plane."""
PERCENTILES = (0.5, 99.5)
"""Intensities at these percentiles of the volume map to 0 and 255 (clipped outside), like MRNet's arrays."""
SPLITS = ("train", "valid")
"""Split folders that ``data_specs/mrnet.yaml`` reads (``valid`` is its test split)."""

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_CASE_ID = re.compile(r"\d{4}")


def _check_options(size: int, slice_spacing_mm: float | None, max_slices: int | None) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"reformat_planes: size must be an integer >= 8 (pixels per side), got {size!r}")
    if slice_spacing_mm is not None and not (math.isfinite(slice_spacing_mm) and slice_spacing_mm > 0):
        raise ValueError(f"reformat_planes: slice_spacing_mm must be a positive number of mm, got {slice_spacing_mm!r}")
    if max_slices is not None and (isinstance(max_slices, bool) or not isinstance(max_slices, int) or max_slices < 1):
        raise ValueError(f"reformat_planes: max_slices must be a positive integer, got {max_slices!r}")


def _slice_count(extent_mm: float, slice_spacing_mm: float | None, max_slices: int | None) -> int:
    """Slices covering ``extent_mm``: at the given spacing, or at 3 mm kept within MRNet's 20-60."""
    if slice_spacing_mm is None:
        low, high = MRNET_SLICE_RANGE
        count = min(max(round(extent_mm / DEFAULT_SLICE_MM), low), high)
    else:
        count = max(1, round(extent_mm / slice_spacing_mm))
    return count if max_slices is None else min(count, max_slices)


def _volume(image: torch.Tensor, name: str) -> MetaTensor:
    """A channel-first ``(1, X, Y, Z)`` float MetaTensor holding only the geometry, or a ``not_3d`` DataError.

    Only the affine is kept: DICOM metadata (and the source file name) never travel further.
    """
    shape = tuple(image.shape)
    meta = image.meta if isinstance(image, MetaTensor) else {}
    spatial, channels = shape, 1
    if meta.get(MetaKeys.ORIGINAL_CHANNEL_DIM) == -1:  # colour DICOM, 4D NIfTI: channels last
        spatial, channels = shape[:-1], shape[-1]
    while len(spatial) > 3 and spatial[-1] == 1:  # a plain (X, Y, Z, 1) tensor
        spatial = spatial[:-1]
    if channels > 1 or len(spatial) != 3 or min(spatial) < 2:
        if channels > 1:
            what = f"has {channels} channels (colour, or a time series)"
        elif len(spatial) <= 3:
            what = "is a single 2D image"
        else:
            what = f"has {len(spatial)} dimensions"
        raise DataError(
            [
                Problem(
                    "not_3d",
                    f"{what}: shape {shape}; reformatting needs one 3D volume with at least 2 voxels per axis",
                    "give one 3D greyscale series (a NIfTI volume or the folder of one DICOM series)",
                    path=name,
                )
            ],
            context=name,
        )
    affine = torch.as_tensor(np.asarray(image.affine if isinstance(image, MetaTensor) else np.eye(4)))
    data = torch.nan_to_num(torch.as_tensor(image, dtype=torch.float32).reshape(spatial))
    return MetaTensor(data[None], affine=affine.double(), meta={MetaKeys.SPACE: SpaceKeys.RAS})


def _resample(image: MetaTensor, target: tuple[int, int, int]) -> MetaTensor:
    """``image`` on a ``target`` grid of the same field of view: box averages where it shrinks, then trilinear.

    Averaging (MONAI ``Resize(mode="area")``) is what a thicker slice or a larger pixel measures, it
    needs no aliasing filter, and it is much faster than ``Resize(anti_aliasing=True)``'s Gaussian
    (the 512x512x80 knee series: about 5 s in all instead of 17 s on 2 CPU cores). Axes that grow (the 1.5 mm slice axis of a sagittal series
    seen in an axial image, say) are interpolated trilinearly afterwards.
    """
    shrunk = tuple(min(t, n) for t, n in zip(target, image.shape[1:], strict=True))
    if shrunk != tuple(image.shape[1:]):
        image = Resize(spatial_size=shrunk, mode="area")(image)
    if shrunk != tuple(target):
        image = Resize(spatial_size=target, mode="trilinear")(image)
    return image


def plane_stacks(
    image: torch.Tensor,
    size: int = 256,
    slice_spacing_mm: float | None = None,
    max_slices: int | None = None,
) -> dict[str, np.ndarray]:
    """The axial, coronal and sagittal ``uint8`` stacks ``(slices, size, size)`` of one 3D volume.

    Each plane's field of view is kept whole: the longer in-plane side fills ``size`` pixels
    (square pixels), the shorter one is padded with 0 on both sides. Downsampling averages (MONAI
    ``Resize(mode="area")``), so a 3 mm slice is the mean of the thinner source slices it covers,
    as a thick acquired slice would be; upsampling is trilinear. Intensities are scaled once for
    the whole volume (:data:`PERCENTILES` to 0-255), so the three planes share one grey scale.

    Args:
        image: a 3D volume ``(X, Y, Z)`` (or ``(X, Y, Z, 1)``) whose ``affine`` is RAS, as
            :func:`medmtl.data.readers.load_image` returns it (a plain tensor is taken as RAS with
            1 mm voxels).
        size: pixels per side of every plane image (MRNet: 256).
        slice_spacing_mm: distance between output slices. ``None``: 3 mm, adjusted so each stack
            holds 20-60 slices (:data:`MRNET_SLICE_RANGE`).
        max_slices: upper bound on slices per stack (the spacing grows to cover the same extent).

    Returns:
        ``{"axial": ..., "coronal": ..., "sagittal": ...}``, laid out as in the module docstring.

    Raises:
        DataError: ``not_3d`` when the image is not one 3D volume.
        ValueError: for a ``size``, ``slice_spacing_mm`` or ``max_slices`` out of range.
    """
    _check_options(size, slice_spacing_mm, max_slices)
    name = str(image.meta.get("filename_or_obj", "the image")) if isinstance(image, MetaTensor) else "the image"
    volume = _volume(image, name)
    low, high = PERCENTILES
    volume = ScaleIntensityRangePercentiles(lower=low, upper=high, b_min=0.0, b_max=255.0, clip=True)(volume)
    stacks = {}
    for plane, axcodes in PLANES.items():
        oriented = Orientation(axcodes=axcodes, labels=_RAS_LABELS)(volume)
        spacing = np.linalg.norm(np.asarray(oriented.affine)[:3, :3], axis=0)
        extent = np.asarray(oriented.shape[1:]) * spacing  # mm from edge to edge of the voxels
        pixel_mm = max(extent[1], extent[2]) / size
        target = (
            _slice_count(float(extent[0]), slice_spacing_mm, max_slices),
            min(size, max(1, round(extent[1] / pixel_mm))),
            min(size, max(1, round(extent[2] / pixel_mm))),
        )
        padded = SpatialPad(spatial_size=(-1, size, size), method="symmetric", value=0)(_resample(oriented, target))
        stack = np.asarray(padded.detach().cpu())[0]
        stacks[plane] = np.clip(np.rint(stack), 0, 255).astype(np.uint8)
    return stacks


def _load(source: Path) -> torch.Tensor:
    """The volume at ``source`` with its geometry; only formats that carry a patient orientation."""
    name = str(source)
    reader = reader_for(source)  # missing_file / unsupported_format, naming the path
    if not isinstance(reader, NibabelReader | MedmtlDicomReader):
        raise ImageReadError(
            [
                Problem(
                    "unsupported_format",
                    "has no patient orientation (plane images and arrays carry no geometry)",
                    "give the 3D series as NIfTI (.nii/.nii.gz) or the folder of its DICOM files",
                    path=name,
                )
            ],
            context=name,
        )
    image = load_image(source)  # first: it refuses pipes, devices and oversized headers unopened
    broken = affine_problem(source)  # NaN/Inf or 0 mm: the planes and spacing would come from a broken matrix
    if broken is not None:
        raise DataError([broken], context=name)
    if image.meta.get("dicom_has_geometry") is False:
        raise DataError(
            [
                Problem(
                    "no_geometry",
                    "the DICOM series has no Image Position/Orientation (Patient), so its planes are unknown",
                    "export the series from the scanner or PACS with its geometry, or convert it to NIfTI",
                    path=name,
                )
            ],
            context=name,
        )
    if image.meta.get("qform_code", 1) == 0 and image.meta.get("sform_code", 1) == 0:
        logger.warning("the NIfTI file has no qform/sform orientation: the planes follow nibabel's default axes")
    return image


def reformat_planes(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    case_id: str,
    split: str = "valid",
    size: int = 256,
    slice_spacing_mm: float | None = None,
    max_slices: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write one 3D series as MRNet's ``<output_dir>/<split>/{axial,coronal,sagittal}/<case_id>.npy``.

    The stacks are :func:`plane_stacks` of the volume (see the module docstring for the plane
    convention). Nothing from the source's header goes into a file name, an array or a log message:
    the case is named by ``case_id`` only. ``data_specs/mrnet.yaml`` also reads the header-less
    label tables ``<split>-abnormal.csv``, ``<split>-acl.csv`` and ``<split>-meniscus.csv`` in
    ``output_dir``: they must exist. Empty ones put the case in the spec's ``unlabelled`` split
    (select that split for inference); a row ``<case_id>,<0 or 1>`` in each gives it labels (for
    evaluation) and, for ``split="valid"``, the ``test`` split. No table is written here, so an
    MRNet copy's tables are never touched.

    Args:
        source: a NIfTI file or the folder of one DICOM series (a single DICOM file of a 3D
            multi-frame series works too).
        output_dir: the MRNet root (``MRNet-v1.0``-like folder) to write into.
        case_id: four digits, as MRNet's ids (the spec matches ``\\d{4}``), e.g. ``"0001"``.
        split: ``"valid"`` (MRNet's held-out set, the test split of the spec) or ``"train"``.
        size: pixels per side of each plane image (MRNet: 256).
        slice_spacing_mm: distance between slices of every stack; ``None``: 3 mm, kept within
            20-60 slices per stack.
        max_slices: upper bound on slices per stack.
        overwrite: replace this case's files if they exist (default: refuse, so an MRNet copy is
            never silently changed).

    Returns:
        The written files by plane: ``{"axial": Path, "coronal": Path, "sagittal": Path}``.

    Raises:
        DataError: the source is missing, unreadable, an empty folder, not 3D or without geometry
            (``missing_file``, ``unsupported_format``, ``unreadable_file``, ``empty_folder``,
            ``not_3d``, ``no_geometry``...), or the case's files exist (``output_exists``).
        ValueError: a ``case_id``, ``split`` or option out of range.

    Example::

        reformat_planes("knee_dicom/", "my_mrnet", case_id="0001")
        # my_mrnet/valid/axial/0001.npy (53, 256, 256), coronal (53, ...), sagittal (40, ...)
    """
    case_id = str(case_id)
    if not _CASE_ID.fullmatch(case_id):
        raise ValueError(
            f"reformat_planes: case_id must be 4 digits like MRNet's ids (data_specs/mrnet.yaml matches \\d{{4}}), got {case_id!r}"
        )
    if split not in SPLITS:
        raise ValueError(f"reformat_planes: split must be one of {list(SPLITS)}, got {split!r}")
    _check_options(size, slice_spacing_mm, max_slices)
    root = Path(output_dir)
    outputs = {plane: root / split / plane / f"{case_id}.npy" for plane in PLANES}
    existing = [path for path in outputs.values() if path.exists()]
    if existing and not overwrite:
        raise DataError(
            [
                Problem(
                    "output_exists",
                    f"case {case_id} already exists in the {split} split",
                    "choose another case id, or overwrite it (overwrite=True, --overwrite)",
                    path=str(path),
                )
                for path in existing
            ],
            context=str(root),
        )
    stacks = plane_stacks(_load(Path(source)), size=size, slice_spacing_mm=slice_spacing_mm, max_slices=max_slices)
    for plane, path in outputs.items():
        atomic_write_with(path, lambda handle, stack=stacks[plane]: np.save(handle, stack))  # never half a case
        logger.info("case %s: wrote %s %s", case_id, path, "x".join(map(str, stacks[plane].shape)))
    return outputs
