"""Transform presets built from a data spec: keys and interpolation modes are never written by hand.

Why: a multi-task sample has an image (or named views) and one mask per segmentation task, and
every spatial transform must move all of them together, with bilinear interpolation for images
and nearest for label maps. Writing those key and mode lists per config is where image and mask
silently drift apart (or a mask gets interpolated into fractions), so they are derived here from
the spec, as TorchIO derives them from ``ScalarImage``/``LabelMap``.

Order (STYLE.md "Transforms"): deterministic steps first, so ``CacheDataset`` caches them, random
ones after, :class:`~medmtl.transforms.dictionary.EnsureTaskLabelsd` last::

    LoadImaged -> EnsureChannelFirstd -> ToGreyd (2D) -> MergeMasksd (one per segmentation task)
    -> Orientationd (3D) -> FlagSafeSpacingd (3D, if pixdim) -> intensity scaling -> Resized / ResizeWithPadOrCropd
    [train: RandFlipd per axis -> RandAffined -> RandGaussianNoised -> RandAdjustContrastd]
    -> EnsureTaskLabelsd

With ``resize="resize"`` (2D) ``MergeMasksd`` runs right after the resize instead (per-pixel steps
commute exactly with the masks' nearest-neighbour resize, and cost less at the output size), and
the percentile scaling and anti-aliased resize are :mod:`medmtl.transforms.fast_preprocess`'s
(MONAI's values, computed more cheaply).

With ``batch_augment=True`` the bracketed random steps are left out of the chain and run on whole
batches instead (:class:`~medmtl.transforms.batch_augment.BatchAugment`, same distributions): the
dataset then caches every step, and the augmentation runs on the training device.

Every MONAI spatial transform used here is invertible (``Invertd``).

Multi-view inputs (MRNet's axial/coronal/sagittal stacks with different slice counts) go through
the same steps, each view resized to ``spatial_size`` independently, which makes them collatable
but does not keep their slice counts; stacking views with their own sizes is left to a dedicated
multi-plane preset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    ResizeWithPadOrCropd,
    ScaleIntensityd,
    ScaleIntensityRanged,
)

from medmtl.data.readers import MedmtlLoadImaged
from medmtl.data.spec import DatasetSpec, load_spec
from medmtl.data.tasks import LabelQuality, TaskKind
from medmtl.transforms.dictionary import EnsureTaskLabelsd, FlagSafeSpacingd, MergeMasksd, ToGreyd
from medmtl.transforms.fast_preprocess import FastPercentileScaled, FastResized

__all__ = ["TransformKeys", "transform_keys", "build_transforms", "INTENSITY_MODES", "RESIZE_MODES"]

INTENSITY_MODES = ("auto", "percentile", "zscore", "clip_zscore", "minmax", "none")
"""``percentile``: 0.5-99.5th percentiles to [0, 1], clipped (radiographs, ultrasound);
``zscore``: zero mean, unit variance over non-zero voxels (MRI); ``clip_zscore``: clipped to the
dataset's ``low``/``high`` then z-scored with its ``mean``/``std`` (``intensity_stats``; CT, as
nnU-Net: Hounsfield units mean the same in every scan, so one dataset-wide mapping); ``minmax``:
[0, 1]; ``auto``: ``percentile`` in 2D, ``zscore`` in 3D."""
RESIZE_MODES = ("auto", "resize", "pad_crop", "none")
"""``resize``: interpolate to ``spatial_size`` (2D pictures of any size); ``pad_crop``: centre pad or
crop, keeping the voxel size (3D, after ``Spacingd``); ``none``: keep each image's size (whole volumes
for sliding-window inference; batch size 1); ``auto``: ``resize`` in 2D, ``pad_crop`` in 3D."""


@dataclass(frozen=True)
class TransformKeys:
    """Which sample keys are images and which are label maps, and how each is interpolated.

    Attributes:
        images: the spec's input keys (``image`` or named views).
        masks: segmentation task names (their labels are mask files).
    """

    images: tuple[str, ...]
    masks: tuple[str, ...]

    @property
    def spatial(self) -> tuple[str, ...]:
        """Every key a spatial transform must move: images, then masks."""
        return self.images + self.masks

    @property
    def modes(self) -> tuple[str, ...]:
        """Interpolation per key of :attr:`spatial`: ``bilinear`` for images, ``nearest`` for masks."""
        return ("bilinear",) * len(self.images) + ("nearest",) * len(self.masks)


def transform_keys(spec: DatasetSpec) -> TransformKeys:
    """The :class:`TransformKeys` of a spec (inputs are images, segmentation tasks are masks)."""
    return TransformKeys(
        images=tuple(spec.inputs),
        masks=tuple(t.name for t in spec.tasks if t.kind == TaskKind.SEGMENTATION),
    )


def build_transforms(
    spec: DatasetSpec | str | os.PathLike | Mapping[str, Any],
    spatial_size: int | Sequence[int],
    train: bool = False,
    *,
    label_quality: str = "strong",
    intensity: str = "auto",
    intensity_stats: Mapping[str, float] | None = None,
    resize: str = "auto",
    orientation: str | None = "RAS",
    pixdim: float | Sequence[float] | None = None,
    grey: bool = True,
    flip_axes: Sequence[int] | None = None,
    rotate_degrees: float = 15.0,
    scale: float = 0.1,
    translate: float = 0.05,
    noise_std: float = 0.05,
    aug_prob: float = 0.5,
    seg_dtype: str = "float32",
    batch_augment: bool = False,
) -> Compose:
    """The training or evaluation transform chain for a dataset spec.

    Usable from a bundle config with plain arguments::

        "train_transforms": {"_target_": "medmtl.transforms.build_transforms",
                             "spec": "$@spec_path", "spatial_size": [64, 64], "train": true}

    Args:
        spec: a :class:`DatasetSpec`, the path of a spec YAML, or the spec as a mapping.
        spatial_size: output size of every image and mask: one int (same for all axes) or one per
            spatial axis of the spec's ``spatial_dims``.
        train: add the random augmentations (jointly on images and masks).
        label_quality: ``strong`` or ``weak``: whose mask settings (``binarize``, ``values``) to
            apply; match the ``label_quality`` the datalist was built with.
        intensity: one of :data:`INTENSITY_MODES`.
        intensity_stats: ``{"low", "high", "mean", "std"}`` of the foreground intensities over the
            dataset (``medmtl plan`` measures them); needed by ``clip_zscore`` only.
        resize: one of :data:`RESIZE_MODES`.
        orientation: axis codes to reorient 3D volumes to (``None``: keep the file's); not used in 2D.
        pixdim: voxel size to resample 3D volumes to (mm; one number or one per axis); ``None`` keeps it.
        grey: in 2D, turn colour (RGB/RGBA) inputs into one grey channel.
        flip_axes: spatial axes flipped at random (probability 0.5 each); ``None``: all axes, ``()``: none.
        rotate_degrees: largest random rotation (about every axis in 3D).
        scale: largest random zoom change (0.1: 90% to 110%).
        translate: largest random shift, as a fraction of ``spatial_size``.
        noise_std: largest standard deviation of the Gaussian noise added to images.
        aug_prob: probability of each of the affine, noise and contrast augmentations.
        seg_dtype: dtype of segmentation labels in the batch (see :class:`EnsureTaskLabelsd`).
        batch_augment: with ``train``, leave the random steps out: the chain is then fully
            deterministic (``TrainingCacheDataset`` caches all of it) and the augmentation runs on
            whole batches on the training device, by a :class:`~medmtl.transforms.BatchAugment` given
            to ``MultiTaskPrepareBatch(augment=...)`` with the same options. The options above are
            still checked, so a typo fails here as it would without the switch.

    Returns:
        A ``monai.transforms.Compose`` taking datalist dicts (``spec.datalist(...)``).

    Raises:
        ValueError: an unknown option, or a ``spatial_size``/``pixdim`` that does not fit the spec's
            ``spatial_dims``.

    Example::

        spec = load_spec("data_specs/demo.yaml", root="demo_data/demo2d")
        train_tf = build_transforms(spec, 64, train=True)
        ds = monai.data.CacheDataset(spec.datalist("train"), train_tf)
    """
    spec = _as_spec(spec)
    dims = spec.spatial_dims
    size = _per_axis(spatial_size, dims, "spatial_size", int)
    intensity = _choose(intensity, INTENSITY_MODES, "intensity", "percentile" if dims == 2 else "zscore")
    resize = _choose(resize, RESIZE_MODES, "resize", "resize" if dims == 2 else "pad_crop")
    quality = LabelQuality(label_quality)
    keys = transform_keys(spec)
    images, spatial, modes = list(keys.images), list(keys.spatial), list(keys.modes)

    steps: list[Any] = [
        MedmtlLoadImaged(spatial, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(spatial, allow_missing_keys=True),
    ]
    if grey and dims == 2:
        steps.append(ToGreyd(images, allow_missing_keys=True))
    merge_masks = []
    for task in spec.tasks:
        if task.kind != TaskKind.SEGMENTATION:
            continue
        source = task.weak_label if quality == LabelQuality.WEAK and task.weak_label is not None else task.label
        binarize, values = (source.binarize, source.values) if source is not None else (False, None)
        merge_masks.append(MergeMasksd(task.name, binarize=binarize, values=values, allow_missing_keys=True))
    if resize != "resize":
        steps += merge_masks
    if dims == 3 and orientation:
        steps.append(Orientationd(spatial, axcodes=orientation, labels=None, allow_missing_keys=True))
    if dims == 3 and pixdim is not None:
        spacing = _per_axis(pixdim, dims, "pixdim", float)
        steps.append(FlagSafeSpacingd(spatial, pixdim=spacing, mode=modes, allow_missing_keys=True))
    steps += _intensity(images, intensity, intensity_stats)
    if resize == "resize":
        anti_aliasing = [True] * len(images) + [False] * len(keys.masks)
        steps.append(
            FastResized(spatial, spatial_size=size, mode=modes, anti_aliasing=anti_aliasing, allow_missing_keys=True)
        )
        # merging, binarizing and mapping mask values are per pixel, so they commute exactly with the masks'
        # nearest-neighbour resize: done after it, on the output size instead of the full resolution
        steps += merge_masks
    elif resize == "pad_crop":
        steps.append(ResizeWithPadOrCropd(spatial, spatial_size=size, allow_missing_keys=True))

    if train:
        axes = range(dims) if flip_axes is None else flip_axes
        for axis in axes:
            if not 0 <= int(axis) < dims:
                raise ValueError(f"flip_axes has axis {axis}, but the spec has {dims} spatial axes (0..{dims - 1})")
    if train and not batch_augment:
        for axis in axes:
            steps.append(RandFlipd(spatial, prob=0.5, spatial_axis=int(axis), allow_missing_keys=True))
        angle = math.radians(rotate_degrees)
        steps.append(
            RandAffined(
                spatial,
                mode=modes,
                prob=aug_prob,
                rotate_range=(angle,) if dims == 2 else (angle,) * 3,
                scale_range=(scale,) * dims,
                translate_range=tuple(translate * s for s in size),
                padding_mode="zeros",
                allow_missing_keys=True,
            )
        )
        steps.append(RandGaussianNoised(images, prob=aug_prob, std=noise_std, allow_missing_keys=True))
        steps.append(RandAdjustContrastd(images, prob=aug_prob, gamma=(0.75, 1.35), allow_missing_keys=True))

    steps.append(EnsureTaskLabelsd(spec.task_list, image_key=images[0], seg_dtype=seg_dtype))
    return Compose(steps)


def _as_spec(spec: DatasetSpec | str | os.PathLike | Mapping[str, Any]) -> DatasetSpec:
    if isinstance(spec, DatasetSpec):
        return spec
    if isinstance(spec, str | os.PathLike):
        return load_spec(spec)
    if isinstance(spec, Mapping):
        return DatasetSpec.model_validate(dict(spec))
    raise ValueError(f"spec must be a DatasetSpec, a spec YAML path or a mapping, got {type(spec).__name__}")


def _choose(value: str, allowed: tuple[str, ...], name: str, auto: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")
    return auto if value == "auto" else value


def _per_axis(value: Any, dims: int, name: str, kind: type) -> tuple:
    values = (value,) * dims if isinstance(value, int | float) else tuple(value)
    bad = [v for v in values if not isinstance(v, int | float) or v <= 0 or (kind is int and v != int(v))]
    if len(values) != dims or bad:
        raise ValueError(
            f"{name}={value!r}: expected one positive number or {dims} (one per spatial axis of this "
            f"{dims}D spec), e.g. {name}={(64,) * dims}"
        )
    return tuple(kind(v) for v in values)


def _intensity(images: list[str], mode: str, stats: Mapping[str, float] | None = None) -> list[Any]:
    if mode == "clip_zscore":
        needed = ("low", "high", "mean", "std")
        if stats is None or any(not isinstance(stats.get(k), int | float) for k in needed) or stats["std"] <= 0:
            raise ValueError(
                f"intensity='clip_zscore' needs intensity_stats with numbers {list(needed)} (std > 0), got {stats!r}; "
                "medmtl plan writes them, or give e.g. {'low': -1000, 'high': 1500, 'mean': 40, 'std': 350}"
            )
        low, high, mean, std = (float(stats[k]) for k in needed)
        # clip to [low, high] and z-score in one linear map (MONAI's ScaleIntensityRanged with clip)
        return [
            ScaleIntensityRanged(
                images,
                a_min=low,
                a_max=high,
                b_min=(low - mean) / std,
                b_max=(high - mean) / std,
                clip=True,
                allow_missing_keys=True,
            )
        ]
    if mode == "percentile":
        return [
            FastPercentileScaled(
                images,
                lower=0.5,
                upper=99.5,
                b_min=0.0,
                b_max=1.0,
                clip=True,
                channel_wise=True,
                allow_missing_keys=True,
            )
        ]
    if mode == "zscore":
        return [NormalizeIntensityd(images, nonzero=True, channel_wise=True, allow_missing_keys=True)]
    if mode == "minmax":
        return [ScaleIntensityd(images, minv=0.0, maxv=1.0, channel_wise=True, allow_missing_keys=True)]
    return []
