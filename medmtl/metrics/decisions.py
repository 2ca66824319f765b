"""Decisions chosen on validation predictions: thresholds and prior corrections, saved as ``decisions.json``.

A fixed 0.5 threshold ignores that ``pos_weight`` and class imbalance shift every probability, so
the cut point is chosen on cases the model did not train on (validation or out-of-fold
predictions), recorded beside the model and applied unchanged to the test split and at inference:

- binary task, and each label of a multilabel task: a threshold maximising Youden's J
  (sensitivity + specificity - 1), or the highest threshold whose validation sensitivity reaches a
  target the user gives (``target_sensitivity=0.9``);
- multiclass task, optionally: a prior correction, probabilities re-weighted by
  ``target prior / training prior`` and renormalised (e.g. training class counts vs uniform),
  then argmax; without it the decision stays the plain argmax.

Cut points: ``sklearn.metrics.roc_curve`` lists every distinct validation score; a cut between
two neighbouring scores is placed at their midpoint (above the highest score: the next float
above it; below the lowest: half the lowest), so the validation cases fall on the same side as
at the score itself while new cases are not decided by one validation case's exact probability.
Among cut points with the same best J the one closest to 0.5 wins (then the higher one).
A case is positive when ``probability >= threshold``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from medmtl.atomic_io import atomic_write
from medmtl.data.tasks import Task, TaskKind
from medmtl.json_file import read_json, read_task_entries
from medmtl.metrics.functional import correct_priors, multiclass_metrics
from medmtl.metrics.results import EvaluationResults, TaskResult

__all__ = [
    "DECISIONS_FILE",
    "DECISIONS_VERSION",
    "MIN_CASES",
    "Decisions",
    "DecisionsFileError",
    "TaskDecision",
    "ThresholdChoice",
    "apply_decisions",
    "choose_decisions",
    "choose_threshold",
    "correct_priors",
    "prior_weights",
    "with_decisions",
]

#: file name of the record beside the model / evaluation.
DECISIONS_FILE = "decisions.json"
#: layout version of ``decisions.json``; a file of another version is refused.
DECISIONS_VERSION = 1
#: fewest validation cases a threshold is chosen from (both classes must be present).
MIN_CASES = 10
_FORMAT = "medmtl.decisions"
_TIE = 1e-12  # J / sensitivity values closer than this count as equal (float noise of tpr - fpr)

YOUDEN = "youden"
TARGET_SENSITIVITY = "target_sensitivity"
ARGMAX = "argmax"
PRIOR_CORRECTION = "prior_correction"
_LABEL_RULES = (YOUDEN, TARGET_SENSITIVITY)
_CLASS_RULES = (ARGMAX, PRIOR_CORRECTION)


class DecisionsFileError(ValueError):
    """A ``decisions.json`` cannot be used: the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold and what it reached on the validation cases it was chosen on."""

    threshold: float
    sensitivity: float
    specificity: float
    youden_j: float
    num_cases: int
    num_positive: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "youden_j": self.youden_j,
            "num_cases": self.num_cases,
            "num_positive": self.num_positive,
        }


def _check_target(target: Any) -> str | None:
    """Problem with a target sensitivity, or ``None``."""
    if isinstance(target, bool) or not isinstance(target, int | float | np.number):
        return f"target sensitivity must be a number in (0, 1], got {target!r}"
    if not (0.0 < float(target) <= 1.0):
        return f"target sensitivity must be in (0, 1], got {target!r}"
    return None


def _check_scores(scores: np.ndarray, labels: np.ndarray, min_cases: int) -> str | None:
    """Problem with one label's validation scores / labels, or ``None``."""
    if scores.shape != labels.shape or scores.ndim != 1:
        return f"scores {scores.shape} and labels {labels.shape} must be two 1-D arrays of the same length"
    if not np.all(np.isfinite(scores)) or (scores.size and (scores.min() < 0 or scores.max() > 1)):
        return "probabilities must be finite and in [0, 1]"
    bad = np.unique(labels[(labels != 0) & (labels != 1)])
    if bad.size:
        return f"labels must be 0 or 1, got {bad[:10].tolist()}"
    pos = int(labels.sum())
    neg = len(labels) - pos
    if len(labels) < min_cases or pos == 0 or neg == 0:
        return (
            f"{len(labels)} validation cases ({pos} positive, {neg} negative); a threshold needs at least "
            f"{min_cases} cases with both classes present: choose it on more validation / out-of-fold cases"
        )
    return None


def _figures(scores: np.ndarray, labels: np.ndarray, threshold: float) -> ThresholdChoice:
    """Sensitivity, specificity and J of ``scores >= threshold`` (computed directly, not read off the curve)."""
    pred = scores >= threshold
    pos = labels == 1
    sens = float(pred[pos].mean())
    spec = float((~pred[~pos]).mean())
    return ThresholdChoice(float(threshold), sens, spec, sens + spec - 1.0, int(len(labels)), int(pos.sum()))


def choose_threshold(
    scores: np.ndarray | Sequence[float],
    labels: np.ndarray | Sequence[float],
    target_sensitivity: float | None = None,
    min_cases: int = MIN_CASES,
) -> ThresholdChoice:
    """The threshold of one binary label, chosen on validation cases.

    Args:
        scores: ``(N,)`` validation probabilities of the positive class.
        labels: ``(N,)`` 0/1 truth.
        target_sensitivity: ``None``: maximise Youden's J; else the highest threshold whose
            validation sensitivity is at least this value (in ``(0, 1]``).
        min_cases: fewest cases accepted.

    Returns:
        The threshold (positive when ``probability >= threshold``) and the validation
        sensitivity, specificity and J it reaches.

    Raises:
        ValueError: for too few cases, one class only, probabilities outside ``[0, 1]`` or a
            target outside ``(0, 1]``.

    Example::

        choose_threshold(val_probs, val_labels).threshold                 # Youden's J
        choose_threshold(val_probs, val_labels, target_sensitivity=0.9)  # sensitivity >= 0.9
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    problem = (_check_target(target_sensitivity) if target_sensitivity is not None else None) or _check_scores(
        s, y, min_cases
    )
    if problem:
        raise ValueError(problem)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    distinct = thr[1:]  # every distinct score, descending; thr[0] means "nothing positive"
    cuts = np.empty(len(thr))
    cuts[0] = np.nextafter(distinct[0], np.inf)
    cuts[1:-1] = (distinct[:-1] + distinct[1:]) / 2.0
    cuts[-1] = distinct[-1] / 2.0
    if target_sensitivity is None:
        j = tpr - fpr
        candidates = np.flatnonzero(j >= j.max() - _TIE)
        best = candidates[np.argmin(np.abs(cuts[candidates] - 0.5))]  # first of equals = higher threshold
    else:
        best = int(np.flatnonzero(tpr >= float(target_sensitivity) - _TIE)[0])
    return _figures(s, y, float(cuts[best]))


def prior_weights(
    train_counts: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Per-class weights ``target prior / training prior``, scaled to sum to 1 (only ratios matter).

    Args:
        train_counts: ``(K,)`` class counts (or proportions) of the training split.
        target: ``(K,)`` class counts / proportions the decisions should assume; ``None``: uniform.

    Raises:
        ValueError: when the counts are not K >= 2 positive finite numbers or the lengths differ.
    """
    train = np.asarray(train_counts, dtype=np.float64)
    goal = np.ones_like(train) if target is None else np.asarray(target, dtype=np.float64)
    problems = []
    for name, v in (("training class counts", train), ("target prior", goal)):
        if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
            problems.append(f"{name} must be K >= 2 positive numbers (every class seen), got {v.tolist()}")
    if not problems and train.shape != goal.shape:
        problems.append(f"training class counts ({train.size}) and target prior ({goal.size}) differ in length")
    if problems:
        raise ValueError("; ".join(problems))
    w = (goal / goal.sum()) / (train / train.sum())
    return w / w.sum()


def _multiclass_figures(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Cases, accuracy and balanced accuracy of the argmax, as the evaluation report computes them."""
    scores = multiclass_metrics(probabilities, labels)
    return {
        "num_cases": int(len(labels)),
        "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"],
    }


@dataclass(frozen=True)
class TaskDecision:
    """How one image-level task's probabilities become decisions.

    Args:
        task: task name.
        kind: ``binary``, ``multilabel`` or ``multiclass``.
        rule: ``youden`` / ``target_sensitivity`` (binary, multilabel) or ``argmax`` /
            ``prior_correction`` (multiclass).
        labels: label names (binary: the task name), or class names (multiclass).
        thresholds: one per label (binary / multilabel).
        target_sensitivity: the target of rule ``target_sensitivity``.
        prior_weights: per-class weights of rule ``prior_correction``.
        validation: what the rule reached on the validation cases: per label ``{threshold,
            sensitivity, specificity, youden_j, num_cases, num_positive}``; multiclass
            ``{"argmax": {...}, "decision": {...}}`` with accuracy, balanced accuracy, cases.
    """

    task: str
    kind: str
    rule: str
    labels: tuple[str, ...]
    thresholds: tuple[float, ...] | None = None
    target_sensitivity: float | None = None
    prior_weights: tuple[float, ...] | None = None
    validation: dict[str, dict[str, float]] = field(default_factory=dict)

    def threshold_value(self) -> float | np.ndarray:
        """The threshold for :attr:`TaskResult.threshold`: a float (binary) or ``(K,)`` array (multilabel)."""
        if self.thresholds is None:
            raise ValueError(f"task '{self.task}' ({self.kind}) has no threshold; its rule is '{self.rule}'")
        return self.thresholds[0] if self.kind == TaskKind.BINARY.value else np.asarray(self.thresholds)

    def probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """The probabilities decided on: prior-corrected for rule ``prior_correction``, else unchanged."""
        p = np.asarray(probabilities, dtype=np.float64)
        return correct_priors(p, self.prior_weights) if self.prior_weights is not None else p

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Binary / multilabel: ``(N, K)`` 0/1 at the thresholds; multiclass: ``(N,)`` class indices."""
        k = len(self.labels)
        p = np.asarray(probabilities, dtype=np.float64)
        if self.kind == TaskKind.BINARY.value and p.ndim == 1:
            p = p[:, None]
        if p.ndim != 2 or p.shape[1] != k:
            raise ValueError(
                f"task '{self.task}': probabilities have shape {p.shape}; the decisions expect (N, {k}) "
                f"({', '.join(self.labels)})"
            )
        if self.kind == TaskKind.MULTICLASS.value:
            return self.probabilities(p).argmax(axis=1).astype(np.int64) if len(p) else np.zeros(0, np.int64)
        return (p >= np.asarray(self.thresholds)).astype(np.int64)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rule": self.rule,
            "labels": list(self.labels),
            "thresholds": None if self.thresholds is None else list(self.thresholds),
            "target_sensitivity": self.target_sensitivity,
            "prior_weights": None if self.prior_weights is None else list(self.prior_weights),
            "validation": _nan_to_none(self.validation),
        }

    @classmethod
    def from_json(cls, name: str, data: Any) -> TaskDecision:
        """Rebuild from :meth:`to_json`; ``ValueError`` naming what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"task '{name}': expected an object, got {type(data).__name__}")
        kind, rule, labels = data.get("kind"), data.get("rule"), data.get("labels")
        image_kinds = [k.value for k in TaskKind if k != TaskKind.SEGMENTATION]
        if kind not in image_kinds:
            raise ValueError(f"task '{name}': kind {kind!r} is not one of {image_kinds}")
        rules = _CLASS_RULES if kind == TaskKind.MULTICLASS.value else _LABEL_RULES
        if rule not in rules:
            raise ValueError(f"task '{name}': rule {rule!r} is not one of {list(rules)} for a {kind} task")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"task '{name}': 'labels' must be a list of names, got {labels!r}")
        thresholds = _floats(data.get("thresholds"), len(labels), f"task '{name}': 'thresholds'")
        weights = _floats(data.get("prior_weights"), len(labels), f"task '{name}': 'prior_weights'")
        if kind != TaskKind.MULTICLASS.value and thresholds is None:
            raise ValueError(f"task '{name}': a {kind} task needs 'thresholds' (one per label)")
        if rule == PRIOR_CORRECTION and weights is None:
            raise ValueError(f"task '{name}': rule 'prior_correction' needs 'prior_weights' (one per class)")
        target = data.get("target_sensitivity")
        if rule == TARGET_SENSITIVITY and _check_target(target):
            raise ValueError(f"task '{name}': {_check_target(target)}")
        validation = data.get("validation") or {}
        if not isinstance(validation, Mapping):
            raise ValueError(f"task '{name}': 'validation' must be an object")
        return cls(
            task=name,
            kind=kind,
            rule=rule,
            labels=tuple(labels),
            thresholds=thresholds,
            target_sensitivity=None if target is None else float(target),
            prior_weights=None if rule != PRIOR_CORRECTION else weights,
            validation={k: {m: (math.nan if v is None else v) for m, v in d.items()} for k, d in validation.items()},
        )


def _floats(value: Any, n: int, what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise ValueError(f"{what} must be a list of {n} finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class Decisions:
    """The decisions of every image-level task of a model, saved as ``decisions.json``.

    Example::

        decisions = choose_decisions(validation_results, target_sensitivity={"malignant": 0.9})
        decisions.save(run_dir / DECISIONS_FILE)
        later = Decisions.load(run_dir / DECISIONS_FILE, tasks)     # refuses other tasks / versions
        hard = apply_decisions({"malignant": probs}, later)
    """

    tasks: dict[str, TaskDecision]
    version: int = DECISIONS_VERSION

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def __getitem__(self, name: str) -> TaskDecision:
        if name not in self.tasks:
            raise KeyError(f"no decision for task '{name}'; decisions hold {self.task_names}")
        return self.tasks[name]

    def thresholds(self) -> dict[str, float | np.ndarray]:
        """``{task: threshold}`` of the binary / multilabel tasks, the form :class:`TaskResult` takes."""
        return {n: d.threshold_value() for n, d in self.tasks.items() if d.thresholds is not None}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": self.version,
            "tasks": self.task_names,
            "decisions": {n: d.to_json() for n, d in self.tasks.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write ``decisions.json`` atomically (``path`` a file, or a folder to write it into); returns the path."""
        path = Path(path)
        if path.is_dir():
            path = path / DECISIONS_FILE
        return atomic_write(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, tasks: Sequence[Task] | None = None) -> Decisions:
        """Read ``decisions.json``; with ``tasks``, refuse a file made for other image-level tasks.

        Raises:
            FileNotFoundError: when the file does not exist.
            DecisionsFileError: for invalid JSON, another format version, malformed entries, or
                (with ``tasks``) other task names, kinds or label counts; all problems in one message.
        """
        path = Path(path)
        if path.is_dir():
            path = path / DECISIONS_FILE
        fix = "choose the decisions again on this model's validation predictions (medmtl.metrics.choose_decisions)"
        data = read_json(path, DecisionsFileError, fix)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise DecisionsFileError(f'{path} is not a medmtl decisions file (no "format": "{_FORMAT}"); {fix}')
        if data.get("version") != DECISIONS_VERSION:
            raise DecisionsFileError(
                f"{path} has decisions format version {data.get('version')!r}; this medmtl reads version "
                f"{DECISIONS_VERSION}: {fix}"
            )
        decided, problems = read_task_entries(path, data, "decisions", TaskDecision.from_json, DecisionsFileError, fix)
        if not problems and tasks is not None:
            problems = _mismatch(decided, tasks)
        if problems:
            raise DecisionsFileError(
                f"{path} cannot be used: " + "; ".join(problems) + f". Use the {DECISIONS_FILE} "
                f"saved with this model, or {fix}"
            )
        return cls(decided, DECISIONS_VERSION)


def _mismatch(decided: Mapping[str, TaskDecision], tasks: Sequence[Task]) -> list[str]:
    """Differences between a record and the model's image-level tasks."""
    image = {t.name: t for t in tasks if not t.is_dense}
    problems = []
    missing = [n for n in image if n not in decided]
    extra = [n for n in decided if n not in image]
    if missing or extra:
        problems.append(
            f"it is for tasks {list(decided)}, the model's image-level tasks are {list(image)} "
            f"(no decision for {missing}, not in the model: {extra})"
        )
    for name, d in decided.items():
        t = image.get(name)
        if t is None:
            continue
        if d.kind != t.kind.value:
            problems.append(f"task '{name}' is {d.kind} in the file, {t.kind.value} in the model")
        elif len(d.labels) != t.num_outputs:
            problems.append(f"task '{name}' has {len(d.labels)} labels in the file, {t.num_outputs} in the model")
    return problems


def _label_names(task: Task) -> tuple[str, ...]:
    return (task.name,) if task.kind == TaskKind.BINARY else tuple(task.class_names)


def choose_decisions(
    results: EvaluationResults | Iterable[TaskResult],
    target_sensitivity: float | Mapping[str, float] | None = None,
    class_counts: Mapping[str, Sequence[float]] | None = None,
    target_priors: Mapping[str, Sequence[float]] | None = None,
    min_cases: int = MIN_CASES,
) -> Decisions:
    """Choose the decisions of every image-level task on validation (out-of-fold) predictions.

    Args:
        results: validation per-case data (segmentation tasks are skipped).
        target_sensitivity: ``None``: Youden's J everywhere; a number: that target for every
            binary / multilabel task; ``{task: target}``: targets for those tasks, J for the rest.
        class_counts: optional ``{multiclass task: training class counts}``; a task named here
            gets the prior correction, the others stay argmax.
        target_priors: optional ``{multiclass task: target class counts / proportions}``
            (default uniform).
        min_cases: fewest validation cases per threshold.

    Raises:
        ValueError: listing every problem at once (too few cases, one class only, a target
            outside ``(0, 1]``, an option naming an unknown or wrong-kind task, bad counts).
    """
    items = list(results.results.values()) if isinstance(results, EvaluationResults) else list(results)
    kinds = {r.task.name: r.task.kind for r in items}
    problems: list[str] = []
    targets: dict[str, float] = {}
    if isinstance(target_sensitivity, Mapping):
        targets = dict(target_sensitivity)
    elif target_sensitivity is not None:
        targets = {n: target_sensitivity for n, k in kinds.items() if k in (TaskKind.BINARY, TaskKind.MULTILABEL)}
    for option, names, allowed in (
        ("target_sensitivity", targets, (TaskKind.BINARY, TaskKind.MULTILABEL)),
        ("class_counts", class_counts or {}, (TaskKind.MULTICLASS,)),
        ("target_priors", target_priors or {}, (TaskKind.MULTICLASS,)),
    ):
        for name in names:
            if kinds.get(name) not in allowed:
                what = "not a task of these results" if name not in kinds else f"a {kinds[name].value} task"
                problems.append(f"{option} names '{name}', {what}; it applies to {[k.value for k in allowed]} tasks")
    for name in target_priors or {}:
        if name not in (class_counts or {}):
            problems.append(f"target_priors names '{name}' but class_counts gives no training counts for it")
    decided: dict[str, TaskDecision] = {}
    for r in items:
        t = r.task
        if t.is_dense:
            continue
        labels = _label_names(t)
        if t.kind == TaskKind.MULTICLASS:
            weights = None
            if t.name in (class_counts or {}):
                try:
                    weights = prior_weights(class_counts[t.name], (target_priors or {}).get(t.name))
                except ValueError as err:
                    problems.append(f"task '{t.name}': {err}")
                    continue
                if len(weights) != t.num_outputs:
                    problems.append(f"task '{t.name}': {len(weights)} class counts for {t.num_outputs} classes")
                    continue
            validation = {"argmax": _multiclass_figures(r.probabilities, r.labels)} if r.num_cases else {}
            if weights is not None and r.num_cases:
                validation["decision"] = _multiclass_figures(correct_priors(r.probabilities, weights), r.labels)
            decided[t.name] = TaskDecision(
                task=t.name,
                kind=t.kind.value,
                rule=ARGMAX if weights is None else PRIOR_CORRECTION,
                labels=labels,
                prior_weights=None if weights is None else tuple(float(w) for w in weights),
                validation=validation,
            )
            continue
        target = targets.get(t.name)
        target_problem = _check_target(target) if target is not None else None
        if target_problem:
            problems.append(f"task '{t.name}': {target_problem}")
            continue
        chosen: dict[str, dict[str, float]] = {}
        for j, label in enumerate(labels):
            where = f"task '{t.name}'" + (f" label '{label}'" if t.kind == TaskKind.MULTILABEL else "")
            try:
                chosen[label] = choose_threshold(r.probabilities[:, j], r.labels[:, j], target, min_cases).as_dict()
            except ValueError as err:
                problems.append(f"{where}: {err}")
        if len(chosen) == len(labels):
            decided[t.name] = TaskDecision(
                task=t.name,
                kind=t.kind.value,
                rule=YOUDEN if target is None else TARGET_SENSITIVITY,
                labels=labels,
                thresholds=tuple(float(chosen[lb]["threshold"]) for lb in labels),
                target_sensitivity=None if target is None else float(target),
                validation=chosen,
            )
    if problems:
        raise ValueError("cannot choose the decisions: " + "; ".join(problems))
    return Decisions(decided)


def apply_decisions(probabilities: Mapping[str, np.ndarray], decisions: Decisions) -> dict[str, np.ndarray]:
    """Decisions per task from probabilities, with a saved record.

    Args:
        probabilities: ``{task: (N, K) probabilities}`` (binary may be ``(N,)``).
        decisions: the record (:func:`choose_decisions` / :meth:`Decisions.load`).

    Returns:
        ``{task: decisions}``: binary / multilabel ``(N, K)`` 0/1 (``probability >= threshold``),
        multiclass ``(N,)`` class indices (argmax of the prior-corrected probabilities).

    Raises:
        KeyError: naming every task without a decision.
        ValueError: when a task's probabilities do not have the record's number of labels.
    """
    missing = [n for n in probabilities if n not in decisions.tasks]
    if missing:
        raise KeyError(f"no decision for tasks {missing}; the record holds {decisions.task_names}")
    return {n: decisions[n].decide(p) for n, p in probabilities.items()}


def with_decisions(results: EvaluationResults, decisions: Decisions | None) -> EvaluationResults:
    """``results`` decided as the record says: binary / multilabel tasks at its thresholds, multiclass
    tasks with its prior correction (argmax tasks and tasks it does not name unchanged)."""
    if decisions is None:
        return results
    thresholds = decisions.thresholds()
    decided = {}
    for name, r in results.results.items():
        if name in thresholds:
            r = replace(r, threshold=thresholds[name])
        elif name in decisions.tasks and decisions[name].prior_weights is not None:
            r = replace(r, class_weights=np.asarray(decisions[name].prior_weights))
        decided[name] = r
    return EvaluationResults(decided)
