"""The ``predictions.csv`` columns of one image-level task of one case: written once, for every consumer.

Why: the inference writer (``predictions.csv``), the MLflow model (:mod:`medmtl.deploy.mlflow_model`) and
anything else that reports a case must name and decide the same way, or a served model and the
inference table would disagree on the same image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmtl.data.tasks import Task, TaskKind
from medmtl.metrics.calibration import CalibrationRecord, apply_temperature
from medmtl.metrics.decisions import Decisions
from medmtl.metrics.uncertainty import predictive_entropy

__all__ = ["image_level_columns", "output_names"]


def output_names(task: Task) -> list[str]:
    """The column stems of a binary / multilabel task's outputs: the task's name, or ``<task>_<class>`` per label."""
    if task.kind == TaskKind.BINARY:
        return [task.name]
    return [f"{task.name}_{name}" for name in task.class_names]


def _rounded(value: float, decimals: int | None) -> float:
    return round(float(value), decimals) if decimals is not None else float(value)


def image_level_columns(
    task: Task,
    logits: torch.Tensor,
    decisions: Decisions | None = None,
    calibration: CalibrationRecord | None = None,
    threshold: float = 0.5,
    decimals: int | None = None,
) -> dict[str, Any]:
    """One case's columns of an image-level task, named as in ``predictions.csv``.

    Probabilities after the temperature of ``calibration``. Binary / multilabel outputs are decided at
    the thresholds of ``decisions`` (else ``threshold``) on the uncalibrated probability, the threshold
    shown on the calibrated scale; multiclass is the argmax after the prior correction of ``decisions``.

    Args:
        task: a binary, multilabel or multiclass task.
        logits: the case's ``(C,)`` logits of the task.
        decisions: the run's chosen thresholds / class weights, if any.
        calibration: the run's temperatures, if any.
        threshold: the threshold of outputs ``decisions`` does not set.
        decimals: round probabilities, thresholds and entropy (a table's precision), or keep them exact.
    """
    kind = task.kind
    multiclass = kind == TaskKind.MULTICLASS
    logits = torch.as_tensor(logits).detach().float().cpu()
    raw = (torch.softmax(logits, 0) if multiclass else torch.sigmoid(logits).reshape(-1)).double().numpy()
    temperature = calibration.tasks.get(task.name) if calibration is not None else None
    shown = apply_temperature(raw[None], temperature.temperature, kind)[0] if temperature else raw
    decision = decisions.tasks.get(task.name) if decisions is not None else None
    row: dict[str, Any] = {}
    if multiclass:
        index = int(decision.decide(raw[None])[0]) if decision is not None else int(raw.argmax())
        row[task.name] = task.class_names[index]
        for name, p in zip(task.class_names, shown.tolist(), strict=True):
            row[f"{task.name}_p_{name}"] = _rounded(p, decimals)
    else:
        keys = output_names(task)
        chosen = decision is not None and decision.thresholds is not None
        thresholds = np.asarray(decision.thresholds if chosen else [threshold] * len(keys), dtype=np.float64)
        shown_thresholds = (
            apply_temperature(thresholds[None], temperature.temperature, kind)[0] if temperature else thresholds
        )
        for i, key in enumerate(keys):
            row[f"{key}_probability"] = _rounded(shown[i], decimals)
            row[key] = int(raw[i] >= thresholds[i])
            row[f"{key}_threshold"] = _rounded(shown_thresholds[i], decimals)
    row[f"{task.name}_entropy"] = _rounded(predictive_entropy(shown[None], kind)[0], decimals)
    return row
