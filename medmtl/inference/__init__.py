"""Inference: writing multi-task predictions (masks in the input geometry + a table of class results)."""

from __future__ import annotations

from medmtl.inference.writer import MultiTaskPredictionWriter

__all__ = ["MultiTaskPredictionWriter"]
