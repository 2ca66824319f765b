"""Calibration of image-level probabilities: ECE / MCE / Brier, reliability bins, temperature scaling.

A probability a clinician reads ("malignant: 0.83") is only useful when 83 % of such cases are
malignant. This module measures that for every image-level task and corrects it with the
one-parameter fix that keeps the ranking (and so AUROC) unchanged: temperature scaling (Guo et
al., "On Calibration of Modern Neural Networks", ICML 2017).

- binary / each label of a multilabel task: the predicted probability against the label;
- multiclass: the top-label confidence (largest probability) against whether the argmax is right,
  and the multi-class Brier score ``mean(sum_k (p_k - y_k)^2)`` (range 0..2);
- bins are equal-width on [0, 1] with scikit-learn's edge rule (a value on an inner edge goes to
  the lower bin); ECE is the case-weighted mean gap |observed frequency - mean confidence| over
  the non-empty bins, MCE the largest such gap.

Temperature scaling divides the logit by ``T``: binary / multilabel ``sigmoid(logit(p) / T)``,
multiclass ``softmax(log p / T)``; ``T > 1`` softens an over-confident model. One ``T`` per task,
shared by the labels of a multilabel task (one parameter is what a few hundred validation cases
can support, and the labels share one head). ``T`` is fitted on validation (or out-of-fold)
predictions by minimising the negative log-likelihood, never on the test cases it is judged on.

The fitted temperatures travel as ``calibration.json`` (:class:`CalibrationRecord`), which names
its tasks so that it is refused for a model with other tasks.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, logit, softmax
from sklearn.metrics import brier_score_loss

from medmtl.atomic_io import atomic_write
from medmtl.data.tasks import Task, TaskKind
from medmtl.json_file import read_json
from medmtl.metrics.results import EvaluationResults, TaskResult

__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_VERSION",
    "DEFAULT_BINS",
    "TEMPERATURE_BOUNDS",
    "MIN_FIT_CASES",
    "ReliabilityBins",
    "CalibrationScores",
    "CalibrationFileError",
    "TaskTemperature",
    "CalibrationRecord",
    "reliability_bins",
    "binary_calibration",
    "multiclass_calibration",
    "task_calibration",
    "task_reliability",
    "calibration_summary",
    "negative_log_likelihood",
    "TemperatureFit",
    "fit_temperature",
    "fit_temperatures",
    "apply_temperature",
    "apply_calibration",
    "write_calibration",
    "read_calibration",
]

#: file name of the fitted temperatures, beside the model or in an evaluation folder.
CALIBRATION_FILE = "calibration.json"
#: format version of ``calibration.json``; a newer file is refused with a clear message.
CALIBRATION_VERSION = 1
#: equal-width confidence bins of the ECE and the reliability diagram.
DEFAULT_BINS = 10
#: the range a fitted temperature is searched in (a bound hit means the data cannot pin it down).
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: fewest labelled cases a temperature is fitted on.
MIN_FIT_CASES = 10
logger = logging.getLogger(__name__)

_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before any log / logit
_IMAGE_LEVEL = (TaskKind.BINARY, TaskKind.MULTILABEL, TaskKind.MULTICLASS)


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin data of a reliability diagram.

    Args:
        edges: ``n_bins + 1`` bin edges on [0, 1].
        confidence: mean predicted probability (or top-label confidence) per bin, NaN where empty.
        frequency: observed frequency of the event (or accuracy) per bin, NaN where empty.
        count: cases per bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    frequency: np.ndarray
    count: np.ndarray

    def errors(self) -> tuple[float, float]:
        """``(ECE, MCE)`` over the non-empty bins; NaN without cases."""
        filled = self.count > 0
        if not filled.any():
            return math.nan, math.nan
        gaps = np.abs(self.frequency[filled] - self.confidence[filled])
        weights = self.count[filled] / self.count[filled].sum()
        return float(np.sum(weights * gaps)), float(gaps.max())

    def to_list(self) -> list[dict[str, Any]]:
        """One JSON-ready record per bin: ``low``, ``high``, ``count``, ``confidence``, ``frequency``."""
        return [
            {
                "low": round(float(self.edges[i]), 12),  # 0.3, not linspace's 0.30000000000000004
                "high": round(float(self.edges[i + 1]), 12),
                "count": int(self.count[i]),
                "confidence": float(self.confidence[i]),
                "frequency": float(self.frequency[i]),
            }
            for i in range(len(self.count))
        ]


def reliability_bins(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Equal-width bins of ``confidence`` with the observed frequency of ``outcome`` (0/1) in each.

    Why our own: scikit-learn's ``calibration_curve`` (same bin rule) drops empty bins without
    saying which and returns no per-bin counts, which the ECE weights and the diagram need.

    Raises:
        ValueError: for fewer than one bin, mismatched lengths or probabilities outside [0, 1].
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    hit = np.asarray(outcome, dtype=np.float64).reshape(-1)
    if conf.shape != hit.shape:
        raise ValueError(f"{conf.size} confidences but {hit.size} outcomes; expected one outcome per case")
    if conf.size and (np.nanmin(conf) < 0 or np.nanmax(conf) > 1 or np.isnan(conf).any()):
        raise ValueError("probabilities must lie in [0, 1] (no NaN); got values outside that range")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    ids = np.searchsorted(edges[1:-1], conf)
    count = np.bincount(ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(ids, weights=conf, minlength=n_bins) / count
        freq = np.bincount(ids, weights=hit, minlength=n_bins) / count
    return ReliabilityBins(edges, mean_conf, freq, count.astype(np.int64))


@dataclass(frozen=True)
class CalibrationScores:
    """ECE, MCE and Brier score of one probability (binary / one label) or a multiclass top label."""

    ece: float
    mce: float
    brier: float
    num_cases: int
    bins: ReliabilityBins

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the scores, ``num_cases``, ``n_bins`` and ``bins`` (NaN kept as float NaN)."""
        return {
            "ece": self.ece,
            "mce": self.mce,
            "brier": self.brier,
            "num_cases": self.num_cases,
            "n_bins": len(self.bins.count),
            "bins": self.bins.to_list(),
        }


def binary_calibration(probability: np.ndarray, label: np.ndarray, n_bins: int = DEFAULT_BINS) -> CalibrationScores:
    """Scores of one probability of the positive class against 0/1 labels (Brier: scikit-learn's)."""
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    y = np.asarray(label, dtype=np.float64).reshape(-1)
    bins = reliability_bins(p, y, n_bins)
    ece, mce = bins.errors()
    brier = float(brier_score_loss(y.astype(np.int64), p, pos_label=1)) if p.size else math.nan
    return CalibrationScores(ece, mce, brier, int(p.size), bins)


def multiclass_calibration(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS
) -> CalibrationScores:
    """Top-label confidence against accuracy; Brier is the multi-class one (sum over classes, 0..2)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    k = p.shape[1] if p.ndim == 2 else 0
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"multiclass probabilities must be (cases, classes) for {y.size} labels, got {p.shape}")
    if not y.size:
        return CalibrationScores(math.nan, math.nan, math.nan, 0, reliability_bins(np.zeros(0), np.zeros(0), n_bins))
    bins = reliability_bins(p.max(axis=1), p.argmax(axis=1) == y, n_bins)
    ece, mce = bins.errors()
    sums = p.sum(axis=1, keepdims=True)
    if np.allclose(sums, 1.0, atol=1e-4):  # float32 softmax rows drift by ~1e-7, which scikit-learn warns about
        p = p / sums
    brier = float(brier_score_loss(y, p, labels=list(range(k)), scale_by_half=False))
    return CalibrationScores(ece, mce, brier, int(y.size), bins)


def _scores_entry(task: Task, probabilities: np.ndarray, labels: np.ndarray, n_bins: int) -> dict[str, Any]:
    """The JSON-ready scores of one task's probabilities (multilabel: per label plus their mean / max)."""
    if task.kind == TaskKind.MULTICLASS:
        return multiclass_calibration(probabilities, labels, n_bins).to_dict()
    if task.kind == TaskKind.BINARY:
        return binary_calibration(probabilities[:, 0], labels[:, 0], n_bins).to_dict()
    per_label = {
        name: binary_calibration(probabilities[:, j], labels[:, j], n_bins) for j, name in enumerate(task.class_names)
    }
    eces = np.array([s.ece for s in per_label.values()])
    mces = np.array([s.mce for s in per_label.values()])
    briers = np.array([s.brier for s in per_label.values()])
    return {
        "ece": float(np.nanmean(eces)) if np.isfinite(eces).any() else math.nan,
        "mce": float(np.nanmax(mces)) if np.isfinite(mces).any() else math.nan,
        "brier": float(np.nanmean(briers)) if np.isfinite(briers).any() else math.nan,
        "num_cases": int(probabilities.shape[0]),
        "n_bins": int(n_bins),
        "labels": {name: s.to_dict() for name, s in per_label.items()},
    }


def task_calibration(
    result: TaskResult, n_bins: int = DEFAULT_BINS, temperature: TaskTemperature | None = None
) -> dict[str, Any]:
    """The ``summary.json`` calibration entry of one image-level task.

    Keys: ``kind``, ``confidence`` (what was binned), ``ece``, ``mce``, ``brier``, ``num_cases``,
    ``n_bins`` and ``bins`` (binary, multiclass) or ``labels`` (multilabel: per label; the task's
    ECE and Brier are the mean over labels, its MCE the largest). With a ``temperature``, also
    ``temperature``: ``value``, ``fitted_on``, the same scores after recalibration and the
    negative log-likelihood before / after on these cases.

    Raises:
        ValueError: for a segmentation task.
    """
    task = result.task
    if task.kind not in _IMAGE_LEVEL:
        raise ValueError(f"task '{task.name}' is {task.kind.value}; calibration is for image-level tasks")
    entry: dict[str, Any] = {
        "kind": task.kind.value,
        "confidence": "top-label" if task.kind == TaskKind.MULTICLASS else "probability",
        **_scores_entry(task, result.probabilities, result.labels, n_bins),
    }
    if temperature is not None:
        after = apply_temperature(result.probabilities, temperature.temperature, task.kind)
        entry["temperature"] = {
            "value": temperature.temperature,
            "fitted_on": temperature.fitted_on,
            "nll_before": negative_log_likelihood(result.probabilities, result.labels, task.kind),
            "nll_after": negative_log_likelihood(after, result.labels, task.kind),
            **_scores_entry(task, after, result.labels, n_bins),
        }
    return entry


def task_reliability(
    result: TaskResult, n_bins: int = DEFAULT_BINS, temperature: TaskTemperature | None = None
) -> tuple[dict[str, ReliabilityBins], dict[str, ReliabilityBins] | None]:
    """Reliability bins of a task for the diagram, ``({curve: bins}, {curve: bins after T} or None)``.

    One curve per label of a multilabel task, one named after the task otherwise (multiclass: top label).
    """
    task = result.task

    def curves(p: np.ndarray) -> dict[str, ReliabilityBins]:
        if task.kind == TaskKind.MULTICLASS:
            return {task.name: multiclass_calibration(p, result.labels, n_bins).bins}
        if task.kind == TaskKind.BINARY:
            return {task.name: reliability_bins(p[:, 0], result.labels[:, 0], n_bins)}
        return {n: reliability_bins(p[:, j], result.labels[:, j], n_bins) for j, n in enumerate(task.class_names)}

    before = curves(result.probabilities)
    if temperature is None:
        return before, None
    return before, curves(apply_temperature(result.probabilities, temperature.temperature, task.kind))


def calibration_summary(
    results: EvaluationResults,
    tasks: Sequence[Task] | None = None,
    record: CalibrationRecord | None = None,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, dict[str, Any]]:
    """``{task: task_calibration(...)}`` for every image-level task (segmentation tasks left out)."""
    tasks = list(tasks) if tasks is not None else results.tasks
    temps = record.tasks if record is not None else {}
    return {
        t.name: task_calibration(results[t.name], n_bins, temps.get(t.name)) for t in tasks if t.kind in _IMAGE_LEVEL
    }


def _kind(kind: TaskKind | str) -> TaskKind:
    k = TaskKind(kind)
    if k not in _IMAGE_LEVEL:
        raise ValueError(f"kind '{k.value}' has no calibration; expected one of {[x.value for x in _IMAGE_LEVEL]}")
    return k


def _log_inputs(probabilities: np.ndarray, kind: TaskKind) -> np.ndarray:
    """``logit(p)`` (binary / multilabel) or ``log p`` (multiclass) of the clipped probabilities."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) if kind == TaskKind.MULTICLASS else logit(p)


def _nll_of_logits(z: np.ndarray, labels: np.ndarray, kind: TaskKind) -> float:
    if kind == TaskKind.MULTICLASS:
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        return float(-np.mean(log_softmax(z, axis=1)[np.arange(y.size), y]))
    y = np.asarray(labels, dtype=np.float64).reshape(z.shape)
    return float(-np.mean(y * log_expit(z) + (1.0 - y) * log_expit(-z)))


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray, kind: TaskKind | str) -> float:
    """Mean NLL per case (multilabel: per case and label) of clipped probabilities; NaN without cases."""
    k = _kind(kind)
    p = np.asarray(probabilities, dtype=np.float64)
    if not p.size:
        return math.nan
    z = _log_inputs(p, k)
    if k == TaskKind.MULTICLASS:  # log p of a row summing to 1 is its own log-softmax
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        return float(-np.mean(z[np.arange(y.size), y]))
    return _nll_of_logits(z, labels, k)


def apply_temperature(probabilities: np.ndarray, temperature: float, kind: TaskKind | str) -> np.ndarray:
    """Recalibrated probabilities: ``sigmoid(logit(p) / T)`` or ``softmax(log p / T)`` (same shape).

    Args:
        probabilities: binary ``(N,)`` / ``(N, 1)``, multilabel ``(N, K)``, multiclass ``(N, K)``
            (rows summing to 1); clipped to ``[1e-7, 1 - 1e-7]`` before the log.
        temperature: ``T > 0``; 1 leaves the probabilities as they are (up to the clipping).
        kind: the task kind.

    Raises:
        ValueError: for a temperature that is not a positive number, a multiclass array that is
            not 2D, or a segmentation kind.
    """
    k = _kind(kind)
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    p = np.asarray(probabilities, dtype=np.float64)
    if k == TaskKind.MULTICLASS:
        if p.ndim != 2:
            raise ValueError(f"multiclass probabilities must be (cases, classes), got shape {p.shape}")
        return softmax(_log_inputs(p, k) / t, axis=1) if p.size else p.copy()
    return expit(_log_inputs(p, k) / t)


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the NLL (on the fitting cases) before and after it."""

    temperature: float
    nll_before: float
    nll_after: float
    num_cases: int


def _fit_problems(p: np.ndarray, y: np.ndarray, kind: TaskKind, min_cases: int) -> list[str]:
    n = p.shape[0] if p.ndim else 0
    problems = []
    if n < min_cases:
        problems.append(f"{n} labelled cases, fewer than the {min_cases} a temperature is fitted on")
    if kind == TaskKind.MULTICLASS:
        seen = np.unique(y).size
        if n and seen < 2:
            problems.append(f"only one class ({int(np.unique(y)[0])}) among the labels")
    elif n and np.unique(y).size < 2:
        problems.append(f"only {'positive' if y.flat[0] == 1 else 'negative'} labels")
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        problems.append("probabilities outside [0, 1] or not finite")
    if kind == TaskKind.MULTICLASS and (p.ndim != 2 or p.shape[0] != y.reshape(-1).size):
        problems.append(f"probabilities of shape {p.shape} do not match {y.size} labels")
    elif kind == TaskKind.MULTICLASS and n and (y.min() < 0 or y.max() >= p.shape[1]):
        problems.append(f"labels must be class indices in [0, {p.shape[1]})")
    elif kind != TaskKind.MULTICLASS and p.size != y.size:
        problems.append(f"probabilities of shape {p.shape} do not match labels of shape {y.shape}")
    return problems


def fit_temperature(
    probabilities: np.ndarray,
    labels: np.ndarray,
    kind: TaskKind | str,
    *,
    name: str = "task",
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    min_cases: int = MIN_FIT_CASES,
) -> TemperatureFit:
    """Temperature minimising the NLL of ``apply_temperature(probabilities, T, kind)`` on ``labels``.

    Fit it on validation or out-of-fold predictions: fitted on the test cases, the after-numbers
    measure nothing. Multilabel: one ``T`` for all labels (pooled NLL).

    Args:
        probabilities: as :func:`apply_temperature` takes them.
        labels: 0/1 (binary / multilabel, same shape) or class indices (multiclass, ``(N,)``).
        kind: the task kind.
        name: the task, for messages.
        bounds: the search interval of ``T`` (scipy's bounded Brent search).
        min_cases: fewest labelled cases accepted.

    Raises:
        ValueError: naming the task and every problem: too few cases, a single class, mismatched
            shapes, bad bounds.

    Example::

        fit = fit_temperature(val_probs, val_labels, "multiclass", name="diagnosis")
        test_probs = apply_temperature(test_probs, fit.temperature, "multiclass")
    """
    k = _kind(kind)
    low, high = float(bounds[0]), float(bounds[1])
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    problems = _fit_problems(p, y, k, min_cases)
    if not (0 < low < 1 < high and math.isfinite(high)):
        problems.append(f"bounds {bounds} must satisfy 0 < low < 1 < high")
    if problems:
        raise ValueError(
            f"cannot fit a temperature for task '{name}': {'; '.join(problems)}; fit it on a validation / "
            "out-of-fold set with both classes (several labelled cases of each), or leave the task uncalibrated"
        )
    z = _log_inputs(p, k)
    if k != TaskKind.MULTICLASS:
        y = y.astype(np.float64).reshape(z.shape)
    # search log T: the NLL is smoother there and both bounds are equally far from T = 1
    found = minimize_scalar(
        lambda log_t: _nll_of_logits(z / math.exp(log_t), y, k),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    t = float(math.exp(found.x))
    if min(t / low, high / t) < 1.01:
        logger.warning(
            "task '%s': the fitted temperature %.3g is at the edge of %s; the predictions cannot pin it down",
            name,
            t,
            bounds,
        )
    return TemperatureFit(t, _nll_of_logits(z, y, k), _nll_of_logits(z / t, y, k), int(p.shape[0]))


class CalibrationFileError(ValueError):
    """A ``calibration.json`` cannot be used: the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class TaskTemperature:
    """The fitted temperature of one task, with what it was fitted on.

    Args:
        kind: the task kind (binary, multilabel, multiclass).
        classes: the task's class / label names (checked against the model's task).
        temperature: ``T`` of :func:`apply_temperature`.
        num_cases: labelled cases it was fitted on.
        nll_before: NLL on those cases before scaling.
        nll_after: NLL on those cases after scaling.
        fitted_on: which predictions (``validation``, ``out-of-fold``, ...).
    """

    kind: str
    classes: list[str]
    temperature: float
    num_cases: int
    nll_before: float
    nll_after: float
    fitted_on: str = "validation"


@dataclass
class CalibrationRecord:
    """Fitted temperatures per task: what ``calibration.json`` holds (``to_dict`` / ``from_dict``).

    Example::

        record = fit_temperatures(validation_results, fitted_on="out-of-fold")
        write_calibration(record, "runs/cv/calibration.json")
        record = read_calibration("runs/cv/calibration.json", tasks)  # refused for other tasks
    """

    tasks: dict[str, TaskTemperature]
    version: int = CALIBRATION_VERSION
    method: str = "temperature"
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``version``, ``method``, ``tasks``, ``notes``)."""
        return {
            "version": self.version,
            "method": self.method,
            "tasks": {name: asdict(t) for name, t in self.tasks.items()},
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = CALIBRATION_FILE) -> CalibrationRecord:
        """Check and read what :meth:`to_dict` wrote; every problem in one :class:`CalibrationFileError`."""
        fix = "fit the temperatures again (medmtl.metrics.calibration.fit_temperatures) and write the file anew"
        if not isinstance(data, dict):
            raise CalibrationFileError(f"{source}: expected a JSON object with 'version' and 'tasks'; {fix}")
        version = data.get("version")
        if not isinstance(version, int) or version < 1:
            raise CalibrationFileError(f"{source}: 'version' is {version!r}, not a positive integer; {fix}")
        if version > CALIBRATION_VERSION:
            raise CalibrationFileError(
                f"{source}: format version {version} is newer than this medmtl reads ({CALIBRATION_VERSION}); "
                "upgrade medmtl"
            )
        if data.get("method", "temperature") != "temperature":
            raise CalibrationFileError(f"{source}: method {data.get('method')!r} is unknown (expected 'temperature')")
        raw = data.get("tasks")
        if not isinstance(raw, dict) or not raw:
            raise CalibrationFileError(f"{source}: 'tasks' must be a non-empty object of task temperatures; {fix}")
        problems, tasks = [], {}
        for name, entry in raw.items():
            try:
                t = TaskTemperature(**entry)
                if not isinstance(t.classes, list):
                    raise ValueError(f"'classes' is {t.classes!r}, not a list of names")
                t = replace(t, classes=[str(c) for c in t.classes], temperature=float(t.temperature))
                if not math.isfinite(t.temperature) or t.temperature <= 0:
                    raise ValueError(f"temperature {t.temperature} is not a positive number")
                _kind(t.kind)
                tasks[str(name)] = t
            except (TypeError, ValueError) as err:
                problems.append(f"task '{name}': {err}")
        if problems:
            raise CalibrationFileError(f"{source}: {'; '.join(problems)}; {fix}")
        notes = data.get("notes") or {}
        return cls(tasks=tasks, version=version, notes=notes if isinstance(notes, dict) else {})

    def check_tasks(self, tasks: Sequence[Task], source: str = CALIBRATION_FILE) -> None:
        """Refuse a record whose tasks are not exactly the image-level ``tasks`` (names, kinds, classes).

        Raises:
            CalibrationFileError: naming every missing, extra and changed task.
        """
        wanted = {t.name: t for t in tasks if t.kind in _IMAGE_LEVEL}
        problems = []
        missing = [n for n in wanted if n not in self.tasks]
        extra = [n for n in self.tasks if n not in wanted]
        if missing:
            problems.append(f"no temperature for tasks {missing}")
        if extra:
            problems.append(f"temperatures for tasks {extra} that are not image-level tasks of this model")
        for name, t in self.tasks.items():
            task = wanted.get(name)
            if task is None:
                continue
            if t.kind != task.kind.value:
                problems.append(f"task '{name}' was fitted as {t.kind}, the model's is {task.kind.value}")
            elif list(t.classes) != list(task.class_names):
                problems.append(f"task '{name}' was fitted on classes {t.classes}, the model's are {task.class_names}")
        if problems:
            raise CalibrationFileError(
                f"refused: {source} does not match the tasks {list(wanted)}: {'; '.join(problems)}; fit the "
                "temperatures on this model's validation predictions, or remove the file"
            )


def fit_temperatures(
    results: EvaluationResults,
    tasks: Sequence[Task] | None = None,
    *,
    fitted_on: str = "validation",
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    min_cases: int = MIN_FIT_CASES,
) -> CalibrationRecord:
    """One temperature per image-level task of ``results`` (validation / out-of-fold predictions).

    Raises:
        ValueError: listing every task that cannot be fitted (see :func:`fit_temperature`).
    """
    tasks = list(tasks) if tasks is not None else results.tasks
    fitted, problems = {}, []
    for task in tasks:
        if task.kind not in _IMAGE_LEVEL:
            continue
        r = results[task.name]
        try:
            fit = fit_temperature(
                r.probabilities, r.labels, task.kind, name=task.name, bounds=bounds, min_cases=min_cases
            )
        except ValueError as err:
            problems.append(str(err))
            continue
        fitted[task.name] = TaskTemperature(
            kind=task.kind.value,
            classes=list(task.class_names),
            temperature=fit.temperature,
            num_cases=fit.num_cases,
            nll_before=fit.nll_before,
            nll_after=fit.nll_after,
            fitted_on=fitted_on,
        )
    if problems:
        raise ValueError("\n".join(problems))
    if not fitted:
        raise ValueError(f"no image-level task among {[t.name for t in tasks]}: nothing to calibrate")
    return CalibrationRecord(fitted)


def apply_calibration(results: EvaluationResults, record: CalibrationRecord) -> EvaluationResults:
    """``results`` with every task of ``record`` recalibrated (other tasks unchanged, new objects)."""
    out = {}
    for name, r in results.results.items():
        t = record.tasks.get(name)
        out[name] = (
            r if t is None else replace(r, probabilities=apply_temperature(r.probabilities, t.temperature, t.kind))
        )
    return EvaluationResults(out)


def write_calibration(record: CalibrationRecord, path: str | Path) -> Path:
    """Write ``record`` as JSON, atomically; returns the path."""
    data = record.to_dict()
    return atomic_write(Path(path), json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_calibration(path: str | Path, tasks: Sequence[Task] | None = None) -> CalibrationRecord:
    """Read ``calibration.json``; with ``tasks``, refuse it unless it names exactly their image-level tasks.

    Raises:
        FileNotFoundError: naming the file.
        CalibrationFileError: for a file that is not valid JSON, not a calibration record, newer
            than this medmtl, or fitted for other tasks.
    """
    path = Path(path)
    data = read_json(path, CalibrationFileError, "fit the temperatures again and write the file anew")
    record = CalibrationRecord.from_dict(data, str(path))
    if tasks is not None:
        record.check_tasks(tasks, str(path))
    return record
