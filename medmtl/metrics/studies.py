"""Per-study (per-exam) results: images of one study scored together, as MURA is.

A radiologist reads an exam, not an image: MURA's label belongs to the study and its protocol scores
the mean of the study's image probabilities. Given ``{case_id: study id}`` (the data spec's
``aggregate_by``), :func:`study_results` turns each image-level task's per-image
:class:`~medmtl.metrics.results.TaskResult` into a study-level one, so the study metrics (AUROC,
accuracy, Cohen's kappa; multiclass accuracy, balanced accuracy, kappa), confusion matrices and
bootstrap intervals (resampling studies) are the very code the per-image report uses.

Rules (per task, over the study's images labelled for that task):

- probability: the mean (``aggregate="mean"``) or the maximum (``"max"``) of the images'
  probabilities; for a multiclass task the per-class maximum is renormalised to sum to 1 (argmax
  unchanged);
- decision: binary / multilabel at the per-image threshold, applied to the study probability;
  multiclass: argmax;
- label: binary / multilabel: positive when any image is positive (an exam with one abnormal view is
  abnormal); multiclass: the most frequent class (ties: the lower class index). A study whose images
  disagree is counted (``mixed_label_studies``) and flagged in ``studies.csv``.

Segmentation tasks are scored per image only. Why our own grouping: neither scikit-learn nor MONAI
pools predictions by exam; NumPy's ``ufunc.at`` does it in one pass over the images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.atomic_io import atomic_write
from medmtl.csv_safety import csv_text
from medmtl.data.tasks import Task, TaskKind
from medmtl.metrics.results import EvaluationResults, ResultsFileError, TaskResult

__all__ = [
    "STUDIES_FILE",
    "AGGREGATES",
    "StudyResults",
    "aggregate_task",
    "study_results",
    "study_summary",
    "studies_csv_text",
    "write_studies_csv",
    "studies_from_summary",
]

STUDIES_FILE = "studies.csv"
"""Per-study table written beside ``summary.json`` when the spec has ``aggregate_by``."""
AGGREGATES = ("mean", "max")
LABEL_RULE = "binary / multilabel: positive if any image is positive; multiclass: most frequent class"


@dataclass
class StudyResults:
    """Study-level results of every image-level task, and what they were made from.

    Args:
        aggregate: ``mean`` or ``max``.
        results: one study-level :class:`TaskResult` per image-level task (case ids are study ids).
        images: ``{study: number of its images with a result for any task}``, in first-seen order.
        mixed: ``{task: [study ids whose images carry different labels]}``.
        task_images: ``{task: {study: number of its images labelled for the task}}``.
        study_of: ``{case_id: study id}`` of the evaluated images (what ``summary.json`` keeps for rebuilds).
    """

    aggregate: str
    results: EvaluationResults
    images: dict[str, int]
    mixed: dict[str, list[str]]
    task_images: dict[str, dict[str, int]]
    study_of: dict[str, str]

    @property
    def tasks(self) -> list[Task]:
        return self.results.tasks


def _check_aggregate(aggregate: str) -> str:
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")
    return aggregate


def aggregate_task(
    result: TaskResult, study_of: Mapping[str, str], aggregate: str = "mean"
) -> tuple[TaskResult, list[str]]:
    """One image-level task's results per study, and the studies whose images disagree on the label.

    Args:
        result: per-image results of a binary, multilabel or multiclass task.
        study_of: ``{case_id: study id}``; must name every case of ``result``.
        aggregate: ``mean`` or ``max`` of the images' probabilities.

    Returns:
        ``(study-level TaskResult, mixed-label study ids)``; studies in first-seen order, the
        threshold that of ``result``.

    Raises:
        ValueError: for a segmentation task, an unknown ``aggregate`` or cases without a study.
    """
    task = result.task
    _check_aggregate(aggregate)
    if task.kind == TaskKind.SEGMENTATION:
        raise ValueError(f"segmentation task '{task.name}' is scored per image; studies aggregate image-level tasks")
    missing = [c for c in result.case_ids if c not in study_of]
    if missing:
        raise ValueError(
            f"task '{task.name}': {len(missing)} case(s) have no study (e.g. {missing[:5]}); the case -> study "
            "mapping must come from the same cases as the evaluation (CaseTable.study_of of the evaluated split)"
        )
    ids = [study_of[c] for c in result.case_ids]
    studies = list(dict.fromkeys(ids))
    index = {s: i for i, s in enumerate(studies)}
    codes = np.asarray([index[s] for s in ids], dtype=np.int64)
    n, k = len(studies), task.num_outputs
    p = np.asarray(result.probabilities, dtype=np.float64)
    counts = np.bincount(codes, minlength=n).astype(np.float64)
    if aggregate == "mean":
        probs = np.zeros((n, k))
        np.add.at(probs, codes, p)
        probs /= counts[:, None]
    else:
        probs = np.full((n, k), -np.inf)
        np.maximum.at(probs, codes, p)
        if task.kind == TaskKind.MULTICLASS:
            probs /= probs.sum(axis=1, keepdims=True)
    if task.kind == TaskKind.MULTICLASS:
        y = np.asarray(result.labels, dtype=np.int64)
        votes = np.zeros((n, k), dtype=np.int64)
        np.add.at(votes, (codes, y), 1)
        labels = votes.argmax(axis=1)  # ties: the lower class index
        mixed_mask = (votes > 0).sum(axis=1) > 1
    else:
        y = np.asarray(result.labels, dtype=np.float64)
        positives = np.zeros((n, k))
        np.add.at(positives, codes, y)
        labels = (positives > 0).astype(np.float64)  # any positive image
        mixed_mask = ((positives > 0) & (positives < counts[:, None])).any(axis=1)
    study_result = TaskResult(
        task,
        studies,
        probabilities=probs,
        labels=labels,
        threshold=result.threshold,
        class_weights=result.class_weights,
    )
    return study_result, [s for s, m in zip(studies, mixed_mask, strict=True) if m]


def study_results(
    results: EvaluationResults,
    study_of: Mapping[str, str],
    aggregate: str = "mean",
    tasks: Sequence[Task] | None = None,
) -> StudyResults:
    """Every image-level task of ``results`` per study (segmentation tasks are left out).

    Args:
        results: per-image results.
        study_of: ``{case_id: study id}`` (:meth:`medmtl.data.datalist.CaseTable.study_of`).
        aggregate: ``mean`` (MURA) or ``max`` of the images' probabilities.
        tasks: tasks to aggregate, in this order (default: all of ``results``).

    Raises:
        ValueError: see :func:`aggregate_task`.

    Example::

        grouped = study_results(results, {"a_img1": "a", "a_img2": "a", "b_img1": "b"})
        grouped.results["abnormal"].metrics()["kappa"]
    """
    tasks = list(tasks) if tasks is not None else results.tasks
    per_task, mixed, task_images = [], {}, {}
    members: dict[str, dict[str, None]] = {}  # study -> its images with a result for any aggregated task
    for task in tasks:
        if task.is_dense:
            continue
        result = results[task.name]
        grouped, disagree = aggregate_task(result, study_of, aggregate)
        per_task.append(grouped)
        mixed[task.name] = disagree
        task_images[task.name] = dict(Counter(study_of[c] for c in result.case_ids))
        for case in result.case_ids:
            members.setdefault(study_of[case], {})[case] = None
    return StudyResults(
        aggregate=aggregate,
        results=EvaluationResults.from_results(per_task),
        images={s: len(m) for s, m in members.items()},
        mixed=mixed,
        task_images=task_images,
        study_of={c: s for s, m in members.items() for c in m},
    )


def study_summary(
    grouped: StudyResults, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """The ``studies`` block of ``summary.json`` (NaN as float NaN; written as ``null``).

    Keys: ``aggregate``, ``label_rule``, ``num_studies`` / ``mixed_label_studies`` (per task),
    ``mean`` (study-level metrics per task), ``ci`` (primary metric with a bootstrap interval over
    studies), ``confusion_matrix`` and ``study_of`` (``{case_id: study}``, what a rebuild needs).
    """
    means, cis, matrices = {}, {}, {}
    for task in grouped.tasks:
        r = grouped.results[task.name]
        metrics = r.metrics()
        means[task.name] = metrics
        cis[task.name] = r.primary_interval(metrics, n_resamples=n_resamples, confidence=confidence, seed=seed)
        cm = r.confusion_matrix()
        matrices[task.name] = {"classes": list(task.class_names), "matrix": cm.tolist()}
    return {
        "aggregate": grouped.aggregate,
        "label_rule": LABEL_RULE,
        "file": STUDIES_FILE,
        "num_studies": {t.name: grouped.results[t.name].num_cases for t in grouped.tasks},
        "mixed_label_studies": {name: len(ids) for name, ids in grouped.mixed.items()},
        "mean": means,
        "ci": cis,
        "confusion_matrix": matrices,
        "study_of": dict(grouped.study_of),
    }


def studies_csv_text(grouped: StudyResults) -> str:
    """``studies.csv``: one row per study, its image count, and per task probability(ies), decision and label.

    Columns follow ``predictions.csv``: binary ``<task>_probability``, ``<task>`` (the decision),
    ``<task>_label``; multilabel the same per label (``<task>_<label>_...``); multiclass ``<task>``
    (the predicted class), ``<task>_p_<class>``, ``<task>_label``; plus ``<task>_images`` (images
    labelled for the task) and ``<task>_mixed_labels`` (1 when they disagree). A study without a
    label for a task has empty cells for it.
    """
    columns = ["study", "images"]
    rows: dict[str, dict[str, Any]] = {s: {"study": s, "images": n} for s, n in grouped.images.items()}
    for task in grouped.tasks:
        r = grouped.results[task.name]
        mixed = set(grouped.mixed.get(task.name, ()))
        names = list(task.class_names)
        preds = r.predictions()
        if task.kind == TaskKind.MULTICLASS:
            task_columns = [task.name, *(f"{task.name}_p_{n}" for n in names), f"{task.name}_label"]
        else:
            keys = [task.name] if task.kind == TaskKind.BINARY else [f"{task.name}_{n}" for n in names]
            task_columns = [c for key in keys for c in (f"{key}_probability", key, f"{key}_label")]
        columns += [*task_columns, f"{task.name}_images", f"{task.name}_mixed_labels"]
        for i, study in enumerate(r.case_ids):
            row = rows.setdefault(study, {"study": study, "images": grouped.images.get(study, 0)})
            p = r.probabilities[i]
            if task.kind == TaskKind.MULTICLASS:
                row[task.name] = names[int(preds[i])]
                row.update({f"{task.name}_p_{n}": round(float(v), 6) for n, v in zip(names, p, strict=True)})
                row[f"{task.name}_label"] = names[int(r.labels[i])]
            else:
                for j, key in enumerate(keys):
                    row[f"{key}_probability"] = round(float(p[j]), 6)
                    row[key] = int(preds[i, j])
                    row[f"{key}_label"] = int(r.labels[i, j])
            row[f"{task.name}_images"] = grouped.task_images[task.name][study]
            row[f"{task.name}_mixed_labels"] = int(study in mixed)
    return csv_text(columns, rows.values())


def write_studies_csv(grouped: StudyResults, path: str | Path) -> Path:
    """Write :func:`studies_csv_text` atomically; returns the path."""
    return atomic_write(path, studies_csv_text(grouped).encode("utf-8", errors="backslashreplace"))


def studies_from_summary(block: Any, path: str | Path) -> tuple[dict[str, str], str] | None:
    """``(study_of, aggregate)`` from a ``summary.json``'s ``studies`` block, ``None`` without one.

    Raises:
        ResultsFileError: when the block is malformed (naming ``path``).
    """
    if block is None:
        return None
    study_of = block.get("study_of") if isinstance(block, dict) else None
    aggregate = block.get("aggregate", "mean") if isinstance(block, dict) else None
    valid = (
        isinstance(study_of, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in study_of.items())
        and aggregate in AGGREGATES
    )
    if not valid:
        raise ResultsFileError(
            f"{path}: its 'studies' block needs 'study_of' (an object of case id -> study id) and 'aggregate' "
            f"(one of {list(AGGREGATES)}); it was changed or not written by medmtl.metrics.write_report: evaluate again"
        )
    return dict(study_of), aggregate
