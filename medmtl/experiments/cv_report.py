"""The report of a cross-validation: per-fold and pooled out-of-fold metrics, and what is chosen on them.

Pooled out-of-fold predictions are one prediction per development case from a model that never
trained on it: the CV metrics (with bootstrap CIs over all development cases), and the inputs the
decisions (thresholds, :mod:`medmtl.metrics.decisions`), temperatures
(:mod:`medmtl.metrics.calibration`) and segmentation postprocessing
(:mod:`medmtl.metrics.postprocessing`) are fitted on, written beside the folds as ``decisions.json``,
``calibration.json`` and ``postprocessing.json`` for evaluation and inference to apply.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.atomic_io import atomic_write
from medmtl.data.tasks import TaskKind
from medmtl.metrics.calibration import CALIBRATION_FILE, CalibrationRecord, fit_temperatures, write_calibration
from medmtl.metrics.decisions import DECISIONS_FILE, Decisions, choose_decisions
from medmtl.metrics.postprocessing import POSTPROCESSING_FILE, Postprocessing, choose_postprocessing
from medmtl.metrics.report import load_evaluation, write_report
from medmtl.metrics.results import EvaluationResults, TaskResult

__all__ = [
    "CHOICE_FILES",
    "CVReport",
    "OutOfFoldChoices",
    "fit_out_of_fold_choices",
    "pool_results",
    "write_cv_report",
    "CV_REPORT_DIR",
    "CV_SUMMARY_FILE",
]

logger = logging.getLogger(__name__)

CV_REPORT_DIR = "cv_report"
CV_SUMMARY_FILE = "cv_summary.json"
CHOICE_FILES = {
    "--decisions_path": DECISIONS_FILE,
    "--calibration_path": CALIBRATION_FILE,
    "--postprocessing_path": POSTPROCESSING_FILE,
}
"""The files chosen on the out-of-fold predictions, by the bundle key that applies each."""


@dataclass
class CVReport:
    """Where the report went and what was fitted on the out-of-fold predictions (``None``: could not be)."""

    report_dir: Path
    summary: dict[str, Any]
    decisions: Decisions | None
    calibration: CalibrationRecord | None
    postprocessing: Postprocessing | None = None


def pool_results(fold_results: Sequence[EvaluationResults]) -> EvaluationResults:
    """One result per task over every fold's cases (a case appears in one fold's validation only).

    Raises:
        ValueError: folds with different tasks, or a case in two folds.
    """
    if not fold_results:
        raise ValueError("no fold results to pool")
    names = list(fold_results[0].results)
    pooled = []
    for name in names:
        parts: list[TaskResult] = []
        for k, fold in enumerate(fold_results):
            if name not in fold.results:
                raise ValueError(f"fold {k} has no results for task '{name}' (tasks {list(fold.results)})")
            parts.append(fold[name])
        ids = [c for part in parts for c in part.case_ids]
        if len(set(ids)) != len(ids):
            twice = sorted({c for c in ids if ids.count(c) > 1})[:10]
            raise ValueError(f"task '{name}': cases in the validation of two folds: {twice}")
        first = parts[0]
        metrics = {m: np.concatenate([p.case_metrics[m] for p in parts]) for m in first.case_metrics}
        pooled.append(
            TaskResult(
                task=first.task,
                case_ids=ids,
                probabilities=None if first.probabilities is None else np.concatenate([p.probabilities for p in parts]),
                labels=None if first.labels is None else np.concatenate([p.labels for p in parts]),
                case_metrics=metrics,
                threshold=first.threshold,
            )
        )
    return EvaluationResults.from_results(pooled)


def _ci_row(result: TaskResult, n_resamples: int) -> dict[str, Any]:
    name, value = result.primary()
    low, high = result.bootstrap_ci(n_resamples=n_resamples) if result.num_cases else (float("nan"),) * 2
    return {"metric": name, "value": value, "ci_low": low, "ci_high": high, "cases": result.num_cases}


def _fit(what: str, fit: Any) -> Any:
    try:
        return fit()
    except ValueError as err:  # too few cases or one class only: the rest of the report stands
        logger.warning("%s not chosen on the out-of-fold predictions: %s", what, err)
        return None


def _html(summary: dict[str, Any]) -> str:
    folds = summary["folds"]
    tasks = list(summary["pooled"])
    head = "".join(f"<th>{html.escape(t)} ({html.escape(summary['pooled'][t]['metric'])})</th>" for t in tasks)

    def cell(entry: dict[str, Any]) -> str:
        return f"<td>{entry['value']:.4f} [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}] (n={entry['cases']})</td>"

    rows = [f"<tr><td>fold {k}</td>{''.join(cell(f['tasks'][t]) for t in tasks)}</tr>" for k, f in enumerate(folds)]
    rows.append(f"<tr><th>pooled out-of-fold</th>{''.join(cell(summary['pooled'][t]) for t in tasks)}</tr>")
    fitted = []
    if summary.get("decisions"):
        rules = ", ".join(f"{t} {rule}" for t, rule in summary.get("decision_rules", {}).items())
        fitted.append(f"decisions chosen on the pooled out-of-fold predictions ({rules}): {DECISIONS_FILE}")
    if summary.get("calibration"):
        temps = ", ".join(f"{t} T={v['temperature']:.3f}" for t, v in summary["calibration"]["tasks"].items())
        fitted.append(f"temperatures fitted on them ({temps}): {CALIBRATION_FILE}")
    if summary.get("postprocessing"):
        ops = ", ".join(f"{t} {op}" for t, op in summary["postprocessing"]["tasks"].items())
        fitted.append(
            f"segmentation postprocessing kept where it raised the out-of-fold Dice ({ops}): {POSTPROCESSING_FILE}"
        )
    items = "".join(f"<li>{html.escape(line)}</li>" for line in fitted)
    test = summary.get("test")
    test_html = ""
    if test:
        test_rows = [
            f"<tr><td>fold {k}</td>{''.join(cell(row[t]) for t in tasks)}</tr>" for k, row in enumerate(test["folds"])
        ]
        means = "".join(f"<td>{test['mean_single_fold'][t]:.4f}</td>" for t in tasks)
        test_rows.append(f"<tr><th>mean single fold</th>{means}</tr>")
        if test["ensemble"]:
            test_rows.append(f"<tr><th>fold ensemble</th>{''.join(cell(test['ensemble'][t]) for t in tasks)}</tr>")
        test_html = (
            "<h2>Test split</h2><p>Each fold's final weights, their mean, and the fold ensemble (probabilities "
            f"averaged over the {len(test['folds'])} folds) on the test cases.</p>"
            f"<table border='1'><tr><th></th>{head}</tr>{''.join(test_rows)}</table>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>medmtl cross-validation</title></head><body>"
        f"<h1>Cross-validation: {len(folds)} folds</h1>"
        "<p>Primary metric per task with its 95% bootstrap interval over the cases of the fold (pooled: over "
        "every development case, each predicted by the fold that did not train on it). The test split is not "
        "used.</p>"
        f"<table border='1'><tr><th></th>{head}</tr>{''.join(rows)}</table><ul>{items}</ul>{test_html}"
        "<p>Figures, calibration and uncertainty of the pooled predictions: <a href='report.html'>report.html</a>"
        + (
            f"; the fold ensemble on the test split at these thresholds, calibration before / after these "
            f"temperatures: <a href='{html.escape(summary['test_decided'])}'>{html.escape(summary['test_decided'])}</a>"
            if summary.get("test_decided")
            else ""
        )
        + "</p></body></html>\n"
    )


def _nan_mean(values: Sequence[float]) -> float:
    """Mean of the defined values; NaN when a metric is undefined in every fold (one class in the test split)."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _test_summary(
    fold_test_dirs: Sequence[str | Path], ensemble_dir: str | Path | None, n_resamples: int
) -> dict[str, Any] | None:
    """Each fold, their mean and the fold ensemble on the test split (primary metric with its interval)."""
    if not fold_test_dirs:
        return None
    folds = [load_evaluation(d) for d in fold_test_dirs]
    names = list(folds[0].results)
    rows = [{n: _ci_row(f[n], n_resamples) for n in names} for f in folds]
    mean = {n: _nan_mean([row[n]["value"] for row in rows]) for n in names}
    ensemble = None
    if ensemble_dir is not None and (Path(ensemble_dir) / "summary.json").is_file():
        result = load_evaluation(ensemble_dir)
        ensemble = {n: _ci_row(result[n], n_resamples) for n in names}
    return {"folds": rows, "mean_single_fold": mean, "ensemble": ensemble}


@dataclass
class OutOfFoldChoices:
    """What is chosen on the pooled out-of-fold predictions (``None``: the cases did not allow it)."""

    folds: list[EvaluationResults]
    pooled: EvaluationResults
    decisions: Decisions | None
    calibration: CalibrationRecord | None
    postprocessing: Postprocessing | None

    def bundle_overrides(self, output_dir: str | Path) -> list[str]:
        """The bundle overrides applying what was chosen (``--decisions_path FILE`` ...)."""
        chosen = {
            DECISIONS_FILE: self.decisions,
            CALIBRATION_FILE: self.calibration,
            POSTPROCESSING_FILE: self.postprocessing,
        }
        return [
            x
            for key, name in CHOICE_FILES.items()
            if chosen[name] is not None
            for x in (key, str(Path(output_dir) / name))
        ]


def out_of_fold_decisions(pooled: EvaluationResults) -> Decisions:
    """Binary / multilabel thresholds by Youden's J; per multiclass task a prior correction from the
    out-of-fold class counts towards equal classes, kept only where it raises the pooled out-of-fold
    balanced accuracy (nnU-Net's rule for postprocessing), else argmax."""
    counts = {}
    for name, r in pooled.results.items():
        if r.task.kind == TaskKind.MULTICLASS and r.num_cases:
            c = np.bincount(r.labels, minlength=r.task.num_outputs)
            if (c > 0).all():  # a class never seen has no prior to correct
                counts[name] = c
    trial = choose_decisions(pooled, class_counts=counts)
    kept = {}
    for name, c in counts.items():
        figures = trial[name].validation
        before, after = figures["argmax"]["balanced_accuracy"], figures["decision"]["balanced_accuracy"]
        verdict = "kept" if after > before else "not kept"
        logger.info(
            "%s: prior correction %s (out-of-fold balanced accuracy %.3f -> %.3f)", name, verdict, before, after
        )
        if after > before:
            kept[name] = c
    return trial if len(kept) == len(counts) else choose_decisions(pooled, class_counts=kept)


def fit_out_of_fold_choices(output_dir: str | Path, fold_eval_dirs: Sequence[str | Path]) -> OutOfFoldChoices:
    """Pool the folds' out-of-fold evaluations; choose and write ``decisions.json``, ``calibration.json``,
    ``postprocessing.json`` into ``output_dir`` where the cases allow (the same choice every time)."""
    output_dir = Path(output_dir)
    folds = [load_evaluation(d) for d in fold_eval_dirs]
    pooled = pool_results(folds)
    decisions = _fit("decisions", lambda: out_of_fold_decisions(pooled))
    calibration = _fit("temperatures", lambda: fit_temperatures(pooled, fitted_on="out-of-fold"))
    if decisions is not None:
        decisions.save(output_dir / DECISIONS_FILE)
    if calibration is not None:
        write_calibration(calibration, output_dir / CALIBRATION_FILE)
    postprocessing = None
    if any(t.is_dense for t in pooled.tasks):
        postprocessing = _fit("postprocessing", lambda: choose_postprocessing(pooled))
    if postprocessing is not None:
        postprocessing.save(output_dir / POSTPROCESSING_FILE)
    return OutOfFoldChoices(folds, pooled, decisions, calibration, postprocessing)


def write_cv_report(
    output_dir: str | Path,
    fold_eval_dirs: Sequence[str | Path],
    fold_test_dirs: Sequence[str | Path] = (),
    ensemble_dir: str | Path | None = None,
    n_resamples: int = 1000,
    choices: OutOfFoldChoices | None = None,
) -> CVReport:
    """Pool the folds' out-of-fold evaluations into ``output_dir/cv_report`` and fit decisions/temperatures.

    Writes ``cv_report/report.html`` + ``summary.json`` (pooled, :func:`write_report`),
    ``cv_report/cv.html`` + ``cv_summary.json`` (per fold and pooled, with CIs), and, where the
    out-of-fold cases allow, ``decisions.json``, ``calibration.json`` and (segmentation tasks scored
    with postprocessing candidates) ``postprocessing.json`` in ``output_dir``. With
    ``fold_test_dirs`` (and ``ensemble_dir``), the test split: each fold, the mean single fold and the
    fold ensemble.
    """
    output_dir = Path(output_dir)
    if choices is None:  # run_cv fits them before the test evaluations and passes them on
        choices = fit_out_of_fold_choices(output_dir, fold_eval_dirs)
    folds, pooled = choices.folds, choices.pooled
    decisions, calibration, postprocessing = choices.decisions, choices.calibration, choices.postprocessing
    report_dir = output_dir / CV_REPORT_DIR
    write_report(
        pooled,
        report_dir,
        n_resamples=n_resamples,
        title=f"medmtl cross-validation: pooled out-of-fold predictions of {len(folds)} folds",
    )
    summary = {
        "folds": [
            {"eval_dir": str(d), "tasks": {n: _ci_row(r, n_resamples) for n, r in f.results.items()}}
            for d, f in zip(fold_eval_dirs, folds, strict=True)
        ],
        "pooled": {n: _ci_row(r, n_resamples) for n, r in pooled.results.items()},
        "decisions": str(output_dir / DECISIONS_FILE) if decisions is not None else None,
        "decision_rules": {} if decisions is None else {n: decisions[n].rule for n in decisions.task_names},
        "calibration": calibration.to_dict() if calibration is not None else None,
        "postprocessing": None
        if postprocessing is None
        else {"file": str(output_dir / POSTPROCESSING_FILE), "tasks": postprocessing.ops()},
        "test": _test_summary(fold_test_dirs, ensemble_dir, n_resamples),
    }
    if ensemble_dir is not None and (Path(ensemble_dir) / "report.html").is_file():
        # evaluated at the out-of-fold thresholds and postprocessing, calibration before / after their temperatures
        summary["test_decided"] = os.path.relpath(Path(ensemble_dir) / "report.html", report_dir)
    atomic_write(report_dir / CV_SUMMARY_FILE, json.dumps(summary, indent=2, allow_nan=True) + "\n")
    atomic_write(report_dir / "cv.html", _html(summary))
    return CVReport(report_dir, summary, decisions, calibration, postprocessing)
