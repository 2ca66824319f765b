"""Weak / strong augmentation pairs of an unlabelled sample, for FixMatch-style semi-supervised training.

Why: FixMatch (Sohn et al. 2020) and MultiMix (Haque et al. 2021) learn from unlabelled images by
predicting on a *weakly* augmented view, keeping the confident predictions as targets, and training
the network to give the same answer on a *strongly* augmented view of the same image. Segmentation
tasks are trained with a per-voxel consistency loss between the two views, which only makes sense
when the views are aligned voxel for voxel. So the strong view here is the weak view (after its
random flips and affine) plus photometric changes and cut-out only: intensity scale and shift,
contrast (gamma), Gaussian blur and noise, and MONAI ``RandCoarseDropoutd`` holes; never a second,
independent spatial transform.

Everything is a stock MONAI dictionary transform assembled in a ``Compose`` (STYLE: compose, don't
re-implement), so ``set_random_state`` / ``set_determinism`` reach every random step and the chain
can be named in a bundle config with ``_target_``.

Chain, for each image key ``k`` (``image`` or the named views of a multi-view spec)::

    [preprocessing] -> RandFlipd per axis -> RandAffined (small rotation, zoom, shift)   <- weak
    -> CopyItemsd k -> k_weak, k_strong  (-> DeleteItemsd k)
    -> RandScaleIntensityd -> RandShiftIntensityd -> RandAdjustContrastd
    -> RandGaussianSmoothd -> RandGaussianNoised -> RandCoarseDropoutd  on k_strong   <- strong
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from monai.transforms import (
    Compose,
    CopyItemsd,
    DeleteItemsd,
    RandAdjustContrastd,
    RandAffined,
    RandCoarseDropoutd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

__all__ = ["build_weak_strong_transforms", "weak_key", "strong_key", "WEAK_SUFFIX", "STRONG_SUFFIX"]

WEAK_SUFFIX = "_weak"
"""Suffix of the weak view's key (``image`` -> ``image_weak``)."""
STRONG_SUFFIX = "_strong"
"""Suffix of the strong view's key (``image`` -> ``image_strong``)."""


def weak_key(key: str, suffix: str = WEAK_SUFFIX) -> str:
    """Batch key of the weak view of image key ``key``."""
    return f"{key}{suffix}"


def strong_key(key: str, suffix: str = STRONG_SUFFIX) -> str:
    """Batch key of the strong view of image key ``key``."""
    return f"{key}{suffix}"


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"build_weak_strong_transforms: {name}={value!r} is not a probability in [0, 1]")
    return float(value)


def build_weak_strong_transforms(
    image_keys: str | Sequence[str] = "image",
    spatial_dims: int = 2,
    preprocessing: Callable[[Any], Any] | None = None,
    *,
    weak_suffix: str = WEAK_SUFFIX,
    strong_suffix: str = STRONG_SUFFIX,
    keep_source: bool = False,
    flip_axes: Sequence[int] | None = None,
    rotate_degrees: float = 10.0,
    scale: float = 0.1,
    translate: float = 0.0,
    affine_prob: float = 0.5,
    intensity_scale: float = 0.2,
    intensity_shift: float = 0.1,
    contrast_gamma: tuple[float, float] = (0.7, 1.5),
    blur_sigma: tuple[float, float] = (0.25, 1.0),
    noise_std: float = 0.1,
    cutout_holes: int = 4,
    cutout_size: int | Sequence[int] = 4,
    cutout_max_size: int | Sequence[int] | None = 12,
    strong_prob: float = 0.8,
) -> Compose:
    """A MONAI ``Compose`` giving an unlabelled sample a weak view and an aligned strong view.

    The weak view is what the model's pseudo-labels / consistency targets come from, so it is kept
    mild (flips and a small affine, as in FixMatch). The strong view starts from the *same* weak
    view and only adds photometric distortion and cut-out, so dense predictions on both views stay
    voxel-aligned for the segmentation consistency loss.

    Args:
        image_keys: keys of the (already loaded, channel-first, intensity-normalised) images; each
            gets ``<key><weak_suffix>`` and ``<key><strong_suffix>``.
        spatial_dims: 2 or 3; sets the flip axes and the affine's parameter count.
        preprocessing: a deterministic chain run first (loading, channel-first, intensity scaling,
            resizing), e.g. ``build_transforms(spec, size, train=False)``, so one object turns a
            datalist entry into a pair of views.
        weak_suffix: suffix of the weak views' keys.
        strong_suffix: suffix of the strong views' keys.
        keep_source: keep the original ``image_keys`` (holding the weak view) as well; off by
            default so a batch carries no third copy.
        flip_axes: spatial axes flipped with probability 0.5 each; ``None``: all, ``()``: none.
        rotate_degrees: largest rotation (about every axis in 3D) of the weak affine.
        scale: largest zoom change of the weak affine (0.1: 90% to 110%).
        translate: largest shift of the weak affine, in voxels.
        affine_prob: probability of the weak affine.
        intensity_scale: strong: intensities multiplied by a factor in ``1 +- intensity_scale``.
        intensity_shift: strong: intensities shifted by up to ``+- intensity_shift``.
        contrast_gamma: strong: range of the gamma (contrast) change.
        blur_sigma: strong: range of the Gaussian blur's sigma (voxels), per axis.
        noise_std: strong: largest standard deviation of the additive Gaussian noise.
        cutout_holes: strong: largest number of cut-out holes (``RandCoarseDropoutd`` draws 1 to
            this many, filled with random values in the image's intensity range); 0: no cut-out.
        cutout_size: strong: smallest hole size in voxels (one int or one per axis).
        cutout_max_size: strong: largest hole size in voxels; ``None``: all holes ``cutout_size``.
        strong_prob: probability of each strong step (cut-out included).

    Returns:
        A ``monai.transforms.Compose``; ``set_random_state(seed)`` makes it reproducible.

    Raises:
        ValueError: for an unsupported ``spatial_dims``, a flip axis outside it, a probability
            outside ``[0, 1]`` or suffixes that would overwrite the source keys.

    Example::

        pre = build_transforms(spec, (64, 64), train=False)
        pairs = build_weak_strong_transforms("image", spatial_dims=2, preprocessing=pre)
        sample = pairs(spec_datalist_entry)  # {"image_weak": ..., "image_strong": ..., ...}

    Bundle config::

        "unlabelled_preprocessing": {"_target_": "medmtl.transforms.build_weak_strong_transforms",
                                     "image_keys": "@input_keys", "spatial_dims": 2,
                                     "preprocessing": "@validate::preprocessing"}
    """
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"build_weak_strong_transforms: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    keys = [image_keys] if isinstance(image_keys, str) else list(image_keys)
    if not keys:
        raise ValueError("build_weak_strong_transforms: 'image_keys' is empty; give the image key(s), e.g. 'image'")
    if not weak_suffix or not strong_suffix or weak_suffix == strong_suffix:
        raise ValueError(
            f"build_weak_strong_transforms: weak_suffix={weak_suffix!r} and strong_suffix={strong_suffix!r} must be "
            "two different non-empty strings"
        )
    affine_prob = _check_probability("affine_prob", affine_prob)
    strong_prob = _check_probability("strong_prob", strong_prob)
    axes = list(range(spatial_dims)) if flip_axes is None else [int(a) for a in flip_axes]
    bad = [a for a in axes if not 0 <= a < spatial_dims]
    if bad:
        raise ValueError(f"build_weak_strong_transforms: flip_axes {bad} outside 0..{spatial_dims - 1}")
    weak_keys = [weak_key(k, weak_suffix) for k in keys]
    strong_keys = [strong_key(k, strong_suffix) for k in keys]

    steps: list[Any] = [] if preprocessing is None else [preprocessing]
    # weak: spatial only, applied once, so both views share the same geometry
    steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in axes]
    angle = math.radians(rotate_degrees)
    n_rot = 1 if spatial_dims == 2 else spatial_dims if spatial_dims == 3 else 0
    steps.append(
        RandAffined(
            keys,
            prob=affine_prob,
            rotate_range=(angle,) * n_rot if n_rot else None,
            scale_range=(scale,) * spatial_dims,
            translate_range=(translate,) * spatial_dims if translate else None,
            mode="bilinear",
            padding_mode="zeros",
        )
    )
    for key, weak, strong in zip(keys, weak_keys, strong_keys, strict=True):
        steps.append(CopyItemsd(key, times=2, names=[weak, strong]))
    if not keep_source:
        steps.append(DeleteItemsd(keys))
    # strong: photometric + cut-out on top of the weak view, no extra geometry
    sigma = tuple(float(s) for s in blur_sigma)
    steps += [
        RandScaleIntensityd(strong_keys, factors=intensity_scale, prob=strong_prob),
        RandShiftIntensityd(strong_keys, offsets=intensity_shift, prob=strong_prob),
        RandAdjustContrastd(strong_keys, prob=strong_prob, gamma=tuple(contrast_gamma)),
        RandGaussianSmoothd(strong_keys, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=strong_prob),
        RandGaussianNoised(strong_keys, prob=strong_prob, std=noise_std),
    ]
    if cutout_holes > 0:
        steps.append(
            RandCoarseDropoutd(
                strong_keys,
                holes=1,
                max_holes=int(cutout_holes),
                spatial_size=cutout_size,
                max_spatial_size=cutout_max_size,
                prob=strong_prob,
            )
        )
    return Compose(steps)
