"""Per-case evaluation data: what metrics, confidence intervals and the report are computed from.

Everything after the forward pass is computed from a small set of per-case arrays, so the
numbers in ``engine.state.metrics``, in ``summary.json`` and in a report rebuilt months later
from ``predictions.npz`` are the same:

- binary / multilabel / multiclass: the probabilities and labels of every labelled case;
- segmentation: per-case, per-foreground-class Dice / IoU / HD95 / precision / recall (the masks
  themselves are too large to keep; they are scored once, as they arrive).

Only labelled cases are stored: a case without a label for a task is not part of that task.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.atomic_io import atomic_write_with
from medmtl.data.tasks import Task, TaskKind
from medmtl.metrics import functional as F
from medmtl.metrics.uncertainty import predictive_entropy

__all__ = ["TaskResult", "EvaluationResults", "ResultsFileError", "mean_primary", "PREDICTIONS_FILE"]

#: file name of the per-case arrays written beside ``summary.json``.
PREDICTIONS_FILE = "predictions.npz"
_SEP = "."  # task names cannot contain a dot, so "<task>.<field>" is unambiguous in the npz


@dataclass
class TaskResult:
    """Per-case data of one task, labelled cases only.

    Args:
        task: the task.
        case_ids: one id per labelled case.
        probabilities: classification only, ``(N, K)`` (sigmoid for binary / multilabel with
            K = 1 / number of labels, softmax for multiclass).
        labels: classification only: ``(N, K)`` 0/1 for binary / multilabel, ``(N,)`` class
            indices for multiclass.
        case_metrics: segmentation only, ``{metric: (N, C - 1)}`` per-case, per-foreground-class
            scores (NaN where undefined); must hold ``dice``.
        threshold: probability at or above which a binary / multilabel case is positive: one
            float, or (multilabel) one per label, ``(K,)`` (e.g. chosen on validation by
            :func:`medmtl.metrics.decisions.choose_decisions`).
        class_weights: multiclass only, optional ``(K,)`` positive prior-correction weights: the
            decided class is the argmax of the reweighted probabilities
            (:func:`medmtl.metrics.functional.correct_priors`); ``None``: argmax. AUROC ranks the
            probabilities unchanged.

    Raises:
        ValueError: when the arrays do not match the task or each other.
    """

    task: Task
    case_ids: list[str]
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None
    case_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    threshold: float | np.ndarray = 0.5
    class_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        t = self.task
        self.case_ids = [str(c) for c in self.case_ids]
        n = len(self.case_ids)
        if t.kind == TaskKind.SEGMENTATION:
            if "dice" not in self.case_metrics:
                raise ValueError(
                    f"segmentation task '{t.name}': case_metrics needs 'dice', got {list(self.case_metrics)}"
                )
            fg = t.num_outputs - 1
            cm = {}
            for name, values in self.case_metrics.items():
                v = np.asarray(values, dtype=np.float64).reshape(n, -1) if n else np.zeros((0, fg))
                if v.shape != (n, fg):
                    raise ValueError(
                        f"segmentation task '{t.name}': case_metrics['{name}'] has shape {v.shape}; "
                        f"expected ({n} cases, {fg} foreground classes)"
                    )
                cm[name] = v
            self.case_metrics = cm
            return
        k = t.num_outputs
        self.threshold = _as_threshold(self.threshold, t, k)
        self.class_weights = _as_class_weights(self.class_weights, t, k)
        if self.probabilities is None or self.labels is None:
            raise ValueError(f"{t.kind.value} task '{t.name}' needs probabilities and labels")
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64).reshape(n, k)
        if t.kind == TaskKind.MULTICLASS:
            labels = np.asarray(self.labels).reshape(-1)
            if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= k)):
                raise ValueError(
                    f"multiclass task '{t.name}': labels must be {n} class indices in [0, {k}), got "
                    f"shape {labels.shape} and values {np.unique(labels)[:10].tolist()}"
                )
            self.labels = labels.astype(np.int64)
        else:
            labels = np.asarray(self.labels, dtype=np.float64).reshape(n, k)
            bad = np.unique(labels[(labels != 0) & (labels != 1)])
            if bad.size:
                raise ValueError(f"{t.kind.value} task '{t.name}': labels must be 0 or 1, got {bad[:10].tolist()}")
            self.labels = labels

    @property
    def num_cases(self) -> int:
        """Number of labelled cases."""
        return len(self.case_ids)

    def predictions(self) -> np.ndarray | None:
        """Hard predictions: 0/1 at the threshold, or argmax class; ``None`` for segmentation."""
        if self.probabilities is None:
            return None
        if self.task.kind == TaskKind.MULTICLASS:
            if not self.num_cases:
                return np.zeros(0, dtype=np.int64)
            p = (
                self.probabilities
                if self.class_weights is None
                else F.correct_priors(self.probabilities, self.class_weights)
            )
            return p.argmax(axis=1)
        return (self.probabilities >= self.threshold).astype(np.int64)

    def metrics(self) -> dict[str, float]:
        """All scores of the task, keys without the task prefix (see :func:`functional.metric_names`).

        Segmentation adds ``<metric>_not_nans`` (cases that counted) and, with several
        foreground classes, ``<metric>_<class>``. Every task has ``num_cases``.
        """
        t = self.task
        if t.kind == TaskKind.SEGMENTATION:
            out: dict[str, float] = {}
            fg_names = [F.safe_key(c) for c in t.class_names[1:]]
            for name, values in self.case_metrics.items():
                mean, not_nans, per_class, _ = F.reduce_segmentation(values)
                out[name] = mean
                out[f"{name}_not_nans"] = float(not_nans)
                if len(fg_names) > 1:
                    for c, v in zip(fg_names, per_class, strict=True):
                        out[f"{name}_{c}"] = float(v)
            out["num_cases"] = float(self.num_cases)
            return out
        if t.kind == TaskKind.MULTICLASS:
            return F.multiclass_metrics(self.probabilities, self.labels, t.class_names, self.predictions())
        names = t.class_names if t.kind == TaskKind.MULTILABEL else None
        return F.label_metrics(self.probabilities, self.labels, self.threshold, names)

    def primary(self) -> tuple[str, float]:
        """``(name, value)`` of the primary metric."""
        name, _ = F.primary_metric(self.task)
        return name, self.metrics()[name]

    def dice_per_case(self) -> np.ndarray | None:
        """Segmentation: per-case Dice averaged over foreground classes (NaN-aware); else ``None``."""
        if self.task.kind != TaskKind.SEGMENTATION:
            return None
        return F.rows_nanmean(self.case_metrics["dice"])

    def primary_interval(
        self, metrics: Mapping[str, float], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
    ) -> dict[str, Any]:
        """The primary metric (its value from ``metrics``) with its bootstrap interval, as ``summary.json`` keeps it."""
        name, _ = F.primary_metric(self.task)
        low, high = self.bootstrap_ci(n_resamples=n_resamples, confidence=confidence, seed=seed)
        return {
            "metric": name,
            "higher_is_better": F.higher_is_better(name),
            "value": metrics.get(name, math.nan),
            "low": low,
            "high": high,
        }

    def bootstrap_ci(self, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of the primary metric, resampling labelled cases.

        The resampled statistic is the same as :meth:`metrics` computes: mean per-case Dice
        (segmentation), mean AUROC over labels (binary / multilabel), balanced accuracy
        (multiclass).
        """
        t = self.task
        n = self.num_cases
        if t.kind == TaskKind.SEGMENTATION:
            per_case = self.dice_per_case()

            def stat(idx: np.ndarray) -> np.ndarray:
                return F.resampled_nanmean(per_case, idx)

        elif t.kind == TaskKind.MULTICLASS:
            preds = self.predictions()
            k = t.num_outputs

            def stat(idx: np.ndarray) -> np.ndarray:
                return F.resampled_balanced_accuracy(self.labels, preds, k, idx)

        else:
            p, y = self.probabilities, self.labels

            def stat(idx: np.ndarray) -> np.ndarray:
                aucs = np.stack([F.resampled_auroc(p[:, j], y[:, j], idx) for j in range(p.shape[1])], axis=1)
                return F.rows_nanmean(aucs)

        return F.bootstrap_ci(stat, n, n_resamples=n_resamples, confidence=confidence, seed=seed)

    def confusion_matrix(self) -> np.ndarray | None:
        """Multiclass: K x K (rows truth); binary / multilabel: (K, 2, 2) at the threshold; else ``None``."""
        preds = self.predictions()
        if preds is None:
            return None
        if self.task.kind == TaskKind.MULTICLASS:
            return F.multiclass_confusion_matrix(self.labels, preds, self.task.num_outputs)
        y = self.labels.astype(np.int64)
        return np.stack([F.multiclass_confusion_matrix(y[:, j], preds[:, j], 2) for j in range(y.shape[1])])

    def case_records(self) -> dict[str, dict[str, Any]]:
        """``{case_id: {field: value}}`` for ``summary.json``'s ``metric_per_case`` (NaN kept as NaN)."""
        t = self.task
        records: dict[str, dict[str, Any]] = {}
        if t.kind == TaskKind.SEGMENTATION:
            fg_names = [F.safe_key(c) for c in t.class_names[1:]]
            dice = self.dice_per_case()
            for i, case in enumerate(self.case_ids):
                rec: dict[str, Any] = {}
                for name, values in self.case_metrics.items():
                    row = values[i]
                    rec[name] = float(dice[i]) if name == "dice" else float(F.rows_nanmean(row[None])[0])
                    if len(fg_names) > 1:
                        rec.update({f"{name}_{c}": float(v) for c, v in zip(fg_names, row, strict=True)})
                records[case] = rec
            return records
        preds = self.predictions()
        names = list(t.class_names)
        entropy = predictive_entropy(self.probabilities, t.kind)  # normalised to [0, 1] (medmtl.metrics.uncertainty)
        for i, case in enumerate(self.case_ids):
            if t.kind == TaskKind.MULTICLASS:
                rec = {
                    "probability": {n: float(v) for n, v in zip(names, self.probabilities[i], strict=True)},
                    "label": names[int(self.labels[i])],
                    "prediction": names[int(preds[i])],
                }
            elif t.kind == TaskKind.BINARY:
                rec = {
                    "probability": float(self.probabilities[i, 0]),
                    "label": int(self.labels[i, 0]),
                    "prediction": int(preds[i, 0]),
                }
            else:
                rec = {
                    "probability": {n: float(v) for n, v in zip(names, self.probabilities[i], strict=True)},
                    "label": {n: int(v) for n, v in zip(names, self.labels[i], strict=True)},
                    "prediction": {n: int(v) for n, v in zip(names, preds[i], strict=True)},
                }
            rec["entropy"] = float(entropy[i])
            records[case] = rec
        return records


def _as_threshold(value: float | np.ndarray | Sequence[float], task: Task, k: int) -> float | np.ndarray:
    """A float, or ``(K,)`` floats for a multilabel task; ``ValueError`` for any other shape or a non-finite value."""
    t = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"task '{task.name}': threshold must be finite, got {t.tolist()}")
    if t.size == 1:
        return float(t.reshape(()))
    if task.kind == TaskKind.MULTILABEL and t.shape == (k,):
        return t
    raise ValueError(
        f"task '{task.name}' ({task.kind.value}): threshold must be one number"
        + (f" or {k} (one per label)" if task.kind == TaskKind.MULTILABEL else "")
        + f", got shape {t.shape}"
    )


def _as_class_weights(value: np.ndarray | Sequence[float] | None, task: Task, k: int) -> np.ndarray | None:
    if value is None:
        return None
    w = np.asarray(value, dtype=np.float64)
    if task.kind != TaskKind.MULTICLASS:
        raise ValueError(f"task '{task.name}' ({task.kind.value}): class_weights are for multiclass tasks")
    if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"task '{task.name}': class_weights must be {k} positive numbers, got {w.tolist()}")
    return w


def _stored_threshold(array: np.ndarray) -> float | np.ndarray:
    """The threshold as saved: a 0-d array (every file so far) or one value per label."""
    return float(array.reshape(())) if array.size == 1 else array.astype(np.float64)


def mean_primary(
    metrics: Mapping[str, float], tasks: Sequence[Task], primary: Mapping[str, str] | None = None
) -> float:
    """Mean over tasks of each task's primary metric, sign-flipped where lower is better.

    The checkpoint-selecting score of a multi-task run: higher is always better. Tasks whose
    primary value is NaN (no labelled case) are left out; NaN when none is left.

    Args:
        metrics: flat ``{"<task>/<metric>": value}``.
        tasks: the tasks.
        primary: optional ``{task name: metric name}`` overriding :func:`functional.primary_metric`
            (from a config; the code itself never names a task).

    Raises:
        KeyError: when a task's primary metric is not in ``metrics``.
    """
    scores = []
    for task in tasks:
        name = (primary or {}).get(task.name) or F.primary_metric(task)[0]
        key = f"{task.name}/{name}"
        if key not in metrics:
            raise KeyError(f"metric '{key}' (primary metric of task '{task.name}') not among {sorted(metrics)}")
        value = float(metrics[key])
        if not math.isnan(value):
            scores.append(value if F.higher_is_better(name) else -value)
    return float(np.mean(scores)) if scores else math.nan


class ResultsFileError(ValueError):
    """A results file (``predictions.npz``) cannot be used: the message names the file, the problem and the fix."""


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, with ``allow_pickle=False`` and one clear error for each way it fails."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ResultsFileError(
                f"{path} is a single .npy array, not the .npz archive of an evaluation; evaluate again"
            )
        with data:
            return {k: data[k] for k in data.files}
    except ResultsFileError:
        raise
    except ValueError as err:
        if "pickle" in str(err):
            raise ResultsFileError(
                f"refused: {path} holds pickled Python objects, which medmtl never loads (nothing in the file is "
                "executed); use the predictions.npz an evaluation wrote, or evaluate again"
            ) from None
        raise ResultsFileError(f"{path} is not a predictions archive medmtl can read ({err}); evaluate again") from None
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__
        raise ResultsFileError(
            f"{path} is truncated or corrupt ({detail}): it was not written completely or was changed; evaluate "
            "again to write it"
        ) from None


@dataclass
class EvaluationResults:
    """Per-case data of every task of one evaluation (labelled cases per task).

    Args:
        results: ``{task name: TaskResult}``, in task order.

    Example::

        results = EvaluationResults.from_results([TaskResult(task, ["c1"], probabilities=[[0.8]], labels=[[1]])])
        results.metrics()  # {"malignant/auroc": nan, ..., "mean_primary": nan}
    """

    results: dict[str, TaskResult]

    @classmethod
    def from_results(cls, results: Iterable[TaskResult]) -> EvaluationResults:
        """Results from :class:`TaskResult` objects (one per task, unique names)."""
        out: dict[str, TaskResult] = {}
        for r in results:
            if r.task.name in out:
                raise ValueError(f"two results for task '{r.task.name}'; expected one per task")
            out[r.task.name] = r
        return cls(out)

    @property
    def tasks(self) -> list[Task]:
        return [r.task for r in self.results.values()]

    def __getitem__(self, name: str) -> TaskResult:
        if name not in self.results:
            raise KeyError(f"no results for task '{name}'; tasks: {list(self.results)}")
        return self.results[name]

    def case_ids(self) -> list[str]:
        """Every case labelled for at least one task, in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.results.values():
            seen.update(dict.fromkeys(r.case_ids))
        return list(seen)

    def metrics(self, primary: Mapping[str, str] | None = None) -> dict[str, float]:
        """Flat ``{"<task>/<metric>": value}`` for every task, plus ``mean_primary``."""
        flat = {f"{name}/{k}": v for name, r in self.results.items() for k, v in r.metrics().items()}
        flat["mean_primary"] = mean_primary(flat, self.tasks, primary)
        return flat

    def save(self, path: str | Path) -> Path:
        """Write every task's per-case arrays to one ``.npz`` (no pickled objects, atomically); returns the path."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        for name, r in self.results.items():
            arrays[f"{name}{_SEP}case_ids"] = np.asarray(r.case_ids, dtype=np.str_)
            arrays[f"{name}{_SEP}threshold"] = np.asarray(r.threshold)
            if r.class_weights is not None:
                arrays[f"{name}{_SEP}class_weights"] = r.class_weights
            if r.probabilities is not None:
                arrays[f"{name}{_SEP}probabilities"] = r.probabilities
                arrays[f"{name}{_SEP}labels"] = r.labels
            for metric, values in r.case_metrics.items():
                arrays[f"{name}{_SEP}metric{_SEP}{metric}"] = values
        return atomic_write_with(path, lambda handle: np.savez_compressed(handle, **arrays))

    @classmethod
    def load(cls, path: str | Path, tasks: Sequence[Task]) -> EvaluationResults:
        """Read what :meth:`save` wrote.

        Raises:
            FileNotFoundError: when ``path`` does not exist.
            ResultsFileError: when the file is truncated, not an ``.npz`` archive, holds pickled objects
                (refused: never loaded), or lacks or mangles a task's arrays.
        """
        path = Path(path)
        if path.exists() and not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file (a pipe, device or socket)"
            raise ResultsFileError(f"predictions file {path} is {what}: it is not read; evaluate again to write it")
        if not path.is_file():
            raise FileNotFoundError(
                f"predictions file {path} not found; write_report() writes it as {PREDICTIONS_FILE}"
            )
        arrays = _read_npz(path)
        results = []
        for task in tasks:
            prefix = f"{task.name}{_SEP}"
            if f"{prefix}case_ids" not in arrays:
                raise ResultsFileError(
                    f"{path}: no arrays for task '{task.name}' (it has {sorted({k.split(_SEP)[0] for k in arrays})}); "
                    "give the predictions.npz of an evaluation of these tasks, or evaluate again"
                )
            metric_prefix = f"{prefix}metric{_SEP}"
            try:
                results.append(
                    TaskResult(
                        task=task,
                        case_ids=arrays[f"{prefix}case_ids"].tolist(),
                        probabilities=arrays.get(f"{prefix}probabilities"),
                        labels=arrays.get(f"{prefix}labels"),
                        case_metrics={
                            k[len(metric_prefix) :]: v for k, v in arrays.items() if k.startswith(metric_prefix)
                        },
                        threshold=_stored_threshold(arrays[f"{prefix}threshold"]),
                        class_weights=arrays.get(f"{prefix}class_weights"),
                    )
                )
            except (KeyError, ValueError, TypeError, IndexError) as err:
                raise ResultsFileError(
                    f"{path}: the arrays of task '{task.name}' are incomplete or malformed ({type(err).__name__}: "
                    f"{err}); it was not written by medmtl's evaluation, or was changed: evaluate again"
                ) from None
        return cls.from_results(results)
