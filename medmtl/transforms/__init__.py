"""Transforms: medmtl's MONAI dictionary transforms and the presets built from a data spec.

Why a package of its own: the data spec says which keys are images and which are label maps;
these presets turn that into MONAI transform chains (joint spatial augmentation, nearest
interpolation for masks) and end with :class:`EnsureTaskLabelsd`, which fixes every task's label
shape and ``<task>_present`` flag so batches mixing labelled and unlabelled cases collate.
"""

from __future__ import annotations

from medmtl.transforms.array import MergeMasks, ToGrey, colour_layout
from medmtl.transforms.augment_pairs import (
    STRONG_SUFFIX,
    WEAK_SUFFIX,
    build_weak_strong_transforms,
    strong_key,
    weak_key,
)
from medmtl.transforms.batch_augment import BatchAugment
from medmtl.transforms.dictionary import EnsureTaskLabelsd, FlagSafeSpacingd, MergeMasksd, ToGreyd
from medmtl.transforms.presets import (
    INTENSITY_MODES,
    RESIZE_MODES,
    TransformKeys,
    build_transforms,
    transform_keys,
)

__all__ = [
    "BatchAugment",
    "EnsureTaskLabelsd",
    "FlagSafeSpacingd",
    "INTENSITY_MODES",
    "MergeMasks",
    "MergeMasksd",
    "RESIZE_MODES",
    "ToGrey",
    "ToGreyd",
    "TransformKeys",
    "build_transforms",
    "colour_layout",
    "transform_keys",
    "STRONG_SUFFIX",
    "WEAK_SUFFIX",
    "build_weak_strong_transforms",
    "strong_key",
    "weak_key",
]
