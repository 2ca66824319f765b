"""Uncertainty per case for image-level tasks, and whether it ranks errors: the risk-coverage curve.

A clinician can only act on an uncertainty that predicts mistakes, so besides the per-case values
the report shows the error rate of the most certain fraction of cases at every coverage and the
area under that curve (AURC; lower is better) next to the AURC of a random ranking (the overall
error rate) and of a perfect ranking (errors last).

Measures, all pure functions on arrays:

- :func:`predictive_entropy` of one prediction, normalised to ``[0, 1]`` by default so tasks of
  different kinds compare: binary / multilabel the Bernoulli entropy in bits (divided by
  ``log 2``), averaged over labels; multiclass the class-distribution entropy divided by ``log K``;
- for several members (fold ensemble, MC dropout, TTA passes), input ``(M, N, K)``:
  :func:`mutual_information` (entropy of the mean minus mean entropy: the members' disagreement),
  :func:`member_variance` (variance of the probabilities across members, mean over outputs; TTA
  variance is the same statistic over TTA passes) and :func:`pairwise_disagreement` (mean
  distance between two members' probabilities).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import entr

from medmtl.data.tasks import TaskKind

if TYPE_CHECKING:
    from medmtl.metrics.results import TaskResult

__all__ = [
    "COVERAGES",
    "RiskCoverage",
    "case_errors",
    "member_variance",
    "most_uncertain",
    "mutual_information",
    "pairwise_disagreement",
    "predictive_entropy",
    "risk_coverage",
    "tta_variance",
    "uncertainty_summary",
]

#: coverages at which the report gives the error rate of the most certain cases.
COVERAGES = (0.5, 0.8, 1.0)


def _kind(kind: TaskKind | str) -> TaskKind:
    k = TaskKind(kind)
    if k == TaskKind.SEGMENTATION:
        raise ValueError("per-case predictive entropy is for image-level tasks; segmentation is not one")
    return k


def _probabilities(p: Any, ndim: int, what: str) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.ndim == ndim - 1 and ndim == 2:
        a = a[:, None]
    if a.ndim != ndim:
        shape = "(N, K)" if ndim == 2 else "(M, N, K)"
        raise ValueError(f"{what} has shape {a.shape}; expected {shape}")
    if a.size and (not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1):
        raise ValueError(f"{what} must be probabilities: finite and in [0, 1]")
    return a


def _entropy(p: np.ndarray, kind: TaskKind, normalise: bool) -> np.ndarray:
    """Per-case entropy of ``(..., N, K)`` probabilities, reduced over the last axis."""
    k = p.shape[-1]
    if kind == TaskKind.MULTICLASS:
        h = entr(p).sum(axis=-1)
        return h / math.log(k) if normalise and k > 1 else h
    h = entr(p) + entr(1.0 - p)
    return (h / math.log(2.0) if normalise else h).mean(axis=-1)


def predictive_entropy(probabilities: np.ndarray, kind: TaskKind | str, normalise: bool = True) -> np.ndarray:
    """Entropy of each case's predicted distribution, ``(N,)``.

    Args:
        probabilities: ``(N, K)`` (binary may be ``(N,)``): sigmoid per label, or softmax.
        kind: ``binary``, ``multilabel`` or ``multiclass``.
        normalise: divide by the largest possible entropy (``log 2`` per label, ``log K``), so
            values lie in ``[0, 1]``; ``False`` gives nats.

    Example::

        predictive_entropy(np.array([[0.5], [1.0]]), "binary")  # [1.0, 0.0]
    """
    return _entropy(_probabilities(probabilities, 2, "probabilities"), _kind(kind), normalise)


def mutual_information(member_probabilities: np.ndarray, kind: TaskKind | str, normalise: bool = True) -> np.ndarray:
    """Entropy of the members' mean minus their mean entropy (BALD), ``(N,)``; 0 when all members agree.

    Args:
        member_probabilities: ``(M, N, K)``: M members (folds, dropout samples, TTA passes).
        kind: task kind.
        normalise: as in :func:`predictive_entropy`.
    """
    p = _members(member_probabilities)
    k = _kind(kind)
    mi = _entropy(p.mean(axis=0), k, normalise) - _entropy(p, k, normalise).mean(axis=0)
    return np.maximum(mi, 0.0)  # Jensen: >= 0; clip float noise


def member_variance(member_probabilities: np.ndarray) -> np.ndarray:
    """Variance of the probabilities across members, mean over outputs, ``(N,)``."""
    return _members(member_probabilities).var(axis=0).mean(axis=-1)


def tta_variance(tta_probabilities: np.ndarray) -> np.ndarray:
    """TTA variance: :func:`member_variance` over ``(T, N, K)`` test-time-augmentation passes."""
    return member_variance(tta_probabilities)


def pairwise_disagreement(member_probabilities: np.ndarray, kind: TaskKind | str) -> np.ndarray:
    """Mean over member pairs of the distance between their probabilities, ``(N,)`` in ``[0, 1]``.

    Distance: total variation ``0.5 * sum |p_i - p_j|`` of the class distributions (multiclass);
    mean over labels of ``|p_i - p_j|`` (binary / multilabel).
    """
    p = _members(member_probabilities)
    k = _kind(kind)
    m = p.shape[0]
    i, j = np.triu_indices(m, k=1)
    diff = np.abs(p[i] - p[j])  # (pairs, N, K)
    dist = 0.5 * diff.sum(axis=-1) if k == TaskKind.MULTICLASS else diff.mean(axis=-1)
    return dist.mean(axis=0)


def _members(member_probabilities: np.ndarray) -> np.ndarray:
    p = _probabilities(member_probabilities, 3, "member probabilities")
    if p.shape[0] < 2:
        raise ValueError(f"member probabilities have {p.shape[0]} member(s); disagreement needs M >= 2 in (M, N, K)")
    return p


def case_errors(labels: np.ndarray, predictions: np.ndarray, kind: TaskKind | str) -> np.ndarray:
    """Per-case error, ``(N,)``: 1/0 (binary, multiclass) or the fraction of wrong labels (multilabel)."""
    k = _kind(kind)
    y, d = np.asarray(labels), np.asarray(predictions)
    if k == TaskKind.MULTICLASS:
        return (y.reshape(-1) != d.reshape(-1)).astype(np.float64)
    if not len(y):
        return np.zeros(0)
    y = y.reshape(len(y), -1)
    return (y != d.reshape(y.shape)).mean(axis=1).astype(np.float64)


@dataclass(frozen=True)
class RiskCoverage:
    """Risk (error rate of the retained cases) at each coverage, most certain cases retained first.

    Attributes:
        coverage: ``(N,)`` fractions ``1/N .. 1``.
        risk: ``(N,)`` error rate of the ``n`` most certain cases, ``n = coverage * N``.
        aurc: area under the curve (mean of ``risk``); lower is better.
        random_aurc: expected AURC of a random ranking (= the overall error rate).
        oracle_aurc: AURC of the best ranking (every error after every correct case).
    """

    coverage: np.ndarray
    risk: np.ndarray
    aurc: float
    random_aurc: float
    oracle_aurc: float

    @property
    def error_rate(self) -> float:
        """Error rate of all cases (coverage 1)."""
        return float(self.risk[-1]) if len(self.risk) else math.nan

    def risk_at(self, coverage: float) -> float:
        """Error rate of the ``ceil(coverage * N)`` most certain cases (at least one)."""
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        n = len(self.risk)
        if not n:
            return math.nan
        return float(self.risk[max(1, math.ceil(coverage * n - 1e-9)) - 1])


def _curve(uncertainty: np.ndarray, errors: np.ndarray) -> np.ndarray:
    order = np.argsort(uncertainty, kind="stable")
    u, e = uncertainty[order], errors[order]
    # cases with equal uncertainty have no order: each counts with its group's mean error, the
    # expected value over every order of the group (so ties never flatter or hurt a ranking)
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    sizes = np.diff(np.r_[starts, len(u)])
    e = np.repeat(np.add.reduceat(e, starts) / sizes, sizes)
    return np.cumsum(e) / np.arange(1, len(e) + 1)


def risk_coverage(uncertainty: np.ndarray | Sequence[float], errors: np.ndarray | Sequence[float]) -> RiskCoverage:
    """The risk-coverage curve of a per-case uncertainty against per-case errors.

    Args:
        uncertainty: ``(N,)``, higher = less certain (e.g. :func:`predictive_entropy`).
        errors: ``(N,)`` per-case error in ``[0, 1]`` (:func:`case_errors`).

    Raises:
        ValueError: when the arrays differ in length or hold NaN.

    Example::

        curve = risk_coverage(predictive_entropy(p, "multiclass"), case_errors(y, p.argmax(1), "multiclass"))
        curve.aurc < curve.random_aurc  # the uncertainty ranks errors last
    """
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if u.shape != e.shape or np.isnan(u).any() or np.isnan(e).any():
        raise ValueError(f"uncertainty {u.shape} and errors {e.shape} must be two NaN-free arrays of one length")
    n = len(u)
    if not n:
        empty = np.zeros(0)
        return RiskCoverage(empty, empty, math.nan, math.nan, math.nan)
    risk = _curve(u, e)
    return RiskCoverage(
        coverage=np.arange(1, n + 1) / n,
        risk=risk,
        aurc=float(risk.mean()),
        random_aurc=float(e.mean()),
        oracle_aurc=float(_curve(e, e).mean()),
    )


def _task_arrays(result: TaskResult, predictions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    kind = result.task.kind
    entropy = predictive_entropy(result.probabilities, kind)
    errors = case_errors(result.labels, result.predictions() if predictions is None else predictions, kind)
    return entropy, errors


def uncertainty_summary(
    result: TaskResult, predictions: np.ndarray | None = None, coverages: Sequence[float] = COVERAGES
) -> tuple[dict[str, Any], RiskCoverage]:
    """The ``summary.json`` entry of one image-level task and its curve (predictive entropy vs errors).

    Args:
        result: the task's per-case data; errors at its decisions (threshold / argmax).
        predictions: decisions to score instead (e.g. after a prior correction).
        coverages: where to report the error rate of the most certain cases.

    Returns:
        ``({measure, normalised, num_cases, error_rate, aurc, random_aurc, oracle_aurc,
        error_rate_at_coverage: {"50%": ...}}, curve)``.
    """
    entropy, errors = _task_arrays(result, predictions)
    curve = risk_coverage(entropy, errors)
    summary = {
        "measure": "predictive_entropy",
        "normalised": True,
        "num_cases": int(len(errors)),
        "error_rate": curve.error_rate,
        "aurc": curve.aurc,
        "random_aurc": curve.random_aurc,
        "oracle_aurc": curve.oracle_aurc,
        "error_rate_at_coverage": {f"{100 * c:g}%": curve.risk_at(c) for c in coverages},
    }
    return summary, curve


def most_uncertain(uncertainty: np.ndarray | Sequence[float], n: int = 10) -> np.ndarray:
    """Indices of the ``n`` most uncertain cases, most uncertain first (ties: earlier case first)."""
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    return np.argsort(-u, kind="stable")[:n]
