"""Inference: multi-task sliding-window inferer, mirroring TTA and writers (masks in the input geometry + a table of class results)."""

from __future__ import annotations

from medmtl.inference.dicom_seg import write_dicom_seg
from medmtl.inference.dicom_sr import write_dicom_sr
from medmtl.inference.mc_dropout import MonteCarloDropoutInferer, dropout_layers
from medmtl.inference.sliding_window import CLASS_AGGREGATIONS, MultiTaskSlidingWindowInferer
from medmtl.inference.tta import MirrorTTAInferer, mirror_combinations
from medmtl.inference.writer import MultiTaskPredictionWriter
from medmtl.networks.memory import MemoryBudgetError, estimate_activation_bytes

__all__ = [
    "CLASS_AGGREGATIONS",
    "MemoryBudgetError",
    "MirrorTTAInferer",
    "MonteCarloDropoutInferer",
    "MultiTaskPredictionWriter",
    "MultiTaskSlidingWindowInferer",
    "dropout_layers",
    "estimate_activation_bytes",
    "mirror_combinations",
    "write_dicom_seg",
    "write_dicom_sr",
]
