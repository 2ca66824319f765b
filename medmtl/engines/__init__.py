"""Engines: MONAI's SupervisedTrainer/Evaluator made multi-task through prepare_batch, handlers and hooks."""

from __future__ import annotations

from medmtl.engines.handlers import MultiTaskLossHandler, ResumableCheckpoint, atomic_torch_save, unwrap
from medmtl.engines.iteration import GradientSurgeryIteration
from medmtl.engines.prepare_batch import (
    FlattenTaskOutputsd,
    MultiTaskPrepareBatch,
    label_key,
    pred_key,
    probabilities,
)
from medmtl.engines.progress import EpochProgress, log_run_summary, run_summary

__all__ = [
    "EpochProgress",
    "log_run_summary",
    "run_summary",
    "FlattenTaskOutputsd",
    "GradientSurgeryIteration",
    "MultiTaskLossHandler",
    "MultiTaskPrepareBatch",
    "ResumableCheckpoint",
    "atomic_torch_save",
    "label_key",
    "pred_key",
    "probabilities",
    "unwrap",
]
