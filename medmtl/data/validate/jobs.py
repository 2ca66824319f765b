"""What one case's check is given and gives back: picklable, so it can run in a worker process."""

from __future__ import annotations

from dataclasses import dataclass, field

from medmtl.data.problems import Problem

__all__ = [
    "GeometryTolerance",
    "DEFAULT_FILE_TIMEOUT_S",
    "FILE_TIMEOUT_ENV",
    "_CaseJob",
    "_CaseResult",
    "_DICOM_SUFFIXES",
    "_EMPTY_EXAMPLES",
    "_Grid",
    "_MaskRule",
    "_NOT_DICOM_SUFFIXES",
    "_WEAK_SUFFIX",
]  # underscored: shared inside medmtl.data.validate only


_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_EMPTY_EXAMPLES = 5  # case ids quoted in the empty-mask warning (the JSON report lists all)
_WEAK_SUFFIX = ":weak"  # empty_masks key of a task's weak masks
DEFAULT_FILE_TIMEOUT_S = 120.0
"""Longest wait for one file (header checks, reading and value checks) before it is reported as timed out."""
FILE_TIMEOUT_ENV = "MEDMTL_FILE_TIMEOUT_S"
"""Environment variable overriding :data:`DEFAULT_FILE_TIMEOUT_S` (seconds)."""
_NOT_DICOM_SUFFIXES = {".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".npy", ".npz"}


@dataclass(frozen=True)
class GeometryTolerance:
    """How far two grids of one case may differ and still count as the same grid.

    Args:
        spacing_rtol: relative difference allowed between voxel sizes.
        origin_voxels: origin difference allowed, as a fraction of the smallest voxel size.
        direction_atol: difference allowed between direction cosines (beyond it: an orientation
            mismatch, reported as a warning).
    """

    spacing_rtol: float = 1e-3
    origin_voxels: float = 1e-2
    direction_atol: float = 1e-3


# ---------------------------------------------------------------------------------------------
# per-case work (top level, picklable: runs in worker processes)


@dataclass(frozen=True)
class _MaskRule:
    """How one task's mask voxels become class indices (the spec's ``binarize`` / ``values``)."""

    task: str
    num_classes: int
    binarize: bool = False
    values: tuple[tuple[int, int], ...] = ()
    weak: bool = False
    """A ``weak_label`` mask (machine-made): checked like the strong one, counted apart."""
    scaled: bool = False
    """The spec declares the mask at a whole-number fraction of the image resolution (2D)."""

    @property
    def role(self) -> str:
        return f"{'weak mask' if self.weak else 'mask'} of task '{self.task}'"

    @property
    def key(self) -> str:
        """The task's key in ``empty_masks`` (weak masks apart from the strong ones)."""
        return f"{self.task}{_WEAK_SUFFIX if self.weak else ''}"

    def describe(self) -> str:
        if self.binarize:
            return " (binarize: true)"
        return f" (after the spec's values map {dict(self.values)})" if self.values else ""


@dataclass(frozen=True)
class _CaseJob:
    case_id: str
    inputs: tuple[tuple[str, tuple[str, ...]], ...]
    masks: tuple[tuple[_MaskRule, tuple[str, ...]], ...]
    spatial_dims: int
    same_grid_inputs: bool
    tolerance: GeometryTolerance
    max_image_bytes: int | None = None
    """Cap on one file's decoded size (``None``: ``MEDMTL_MAX_IMAGE_BYTES`` or 2 GiB)."""
    file_timeout_s: float = DEFAULT_FILE_TIMEOUT_S


@dataclass
class _CaseResult:
    case_id: str
    problems: list[Problem]
    files: int = 0
    classes_present: dict[str, tuple[int, ...]] = field(default_factory=dict)
    empty: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Grid:
    """Shape and geometry of one file, without its voxels."""

    path: str
    role: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]
