"""Losses: masked per-task losses, the multi-task loss and task weighting strategies.

Partly labelled multi-source data needs losses that learn only from labelled samples, and
multi-task training needs a way to balance tasks. Both live here, keyed by ``Task`` objects so no
task is special-cased; strategies are chosen by ``_target_`` or registry name in a bundle.
"""

from __future__ import annotations

from medmtl.losses.gradient import GradNormWeighting, PCGradWeighting, project_conflicting
from medmtl.losses.multitask import MultiTaskLoss
from medmtl.losses.task_losses import (
    SEGMENTATION_LOSSES,
    MaskedBCELoss,
    MaskedCELoss,
    MaskedSegmentationLoss,
    MaskedTaskLoss,
    build_task_loss,
    present_flags,
)
from medmtl.losses.weighting import (
    SCHEDULES,
    WEIGHTINGS,
    DWAWeighting,
    FixedWeighting,
    ScheduledWeighting,
    UncertaintyWeighting,
    Weighting,
    available_weightings,
    build_weighting,
    register_weighting,
    schedule_value,
)

__all__ = [
    "MultiTaskLoss",
    "MaskedTaskLoss",
    "MaskedSegmentationLoss",
    "MaskedBCELoss",
    "MaskedCELoss",
    "SEGMENTATION_LOSSES",
    "present_flags",
    "build_task_loss",
    "Weighting",
    "WEIGHTINGS",
    "register_weighting",
    "build_weighting",
    "available_weightings",
    "FixedWeighting",
    "UncertaintyWeighting",
    "DWAWeighting",
    "ScheduledWeighting",
    "GradNormWeighting",
    "PCGradWeighting",
    "SCHEDULES",
    "schedule_value",
    "project_conflicting",
]
