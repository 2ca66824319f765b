"""The evaluation report: ``summary.json`` (nnU-Net style), ``predictions.npz`` and ``report.html``.

A run ends with files a person and a program can both read, from one place:

- ``summary.json``: the tasks, labelled-case counts, every score (``mean``), a bootstrap
  confidence interval of each task's primary metric (``ci``), confusion matrices,
  ``metric_per_case``, as nnU-Net's ``summary.json`` (NaN written as ``null``), and per image-level
  task its ``calibration`` (ECE, MCE, Brier, reliability bins; before / after temperature scaling
  when ``calibration.json`` gives temperatures) and, when images are grouped by study, ``studies``
  (study-level metrics, :mod:`medmtl.metrics.studies`, with ``studies.csv``);
- ``predictions.npz``: the per-case arrays everything is computed from
  (:meth:`EvaluationResults.save`), plus ``overlays.npz`` with the overlay slices when given;
- ``report.html`` with PNGs in ``figures/``: tables, ROC curves, confusion matrices, Dice box
  plots, mask overlays, reliability diagrams, risk-coverage curves with the most uncertain cases,
  and training curves.

:func:`report_from_dir` rebuilds all of it from the first two files, so the CLI (``medmtl
report RUN_DIR``) and a re-styled report never need the model again.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medmtl.data.tasks import Task, TaskKind
from medmtl.metrics import functional as F
from medmtl.metrics import plots
from medmtl.metrics.calibration import (
    CALIBRATION_FILE,
    CalibrationRecord,
    calibration_summary,
    read_calibration,
    task_reliability,
    write_calibration,
)
from medmtl.metrics.results import (
    PREDICTIONS_FILE,
    EvaluationResults,
    ResultsFileError,
    TaskResult,
    _read_npz,
    mean_primary,
)
from medmtl.metrics.studies import STUDIES_FILE, studies_from_summary, study_results, study_summary, write_studies_csv
from medmtl.metrics.uncertainty import most_uncertain, predictive_entropy, uncertainty_summary

__all__ = [
    "Overlay",
    "write_report",
    "report_from_dir",
    "build_summary",
    "load_evaluation",
    "SUMMARY_FILE",
    "REPORT_FILE",
    "OVERLAYS_FILE",
]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
OVERLAYS_FILE = "overlays.npz"
FIGURES_DIR = "figures"


class Overlay(NamedTuple):
    """One sample overlay: an image and its true / predicted masks (2D, or 3D: middle slice).

    ``task`` names the segmentation task the masks belong to; ``None`` puts the overlay under
    the only segmentation task, or in a section of its own when there are several.
    """

    case_id: str
    image: np.ndarray
    true_mask: np.ndarray
    pred_mask: np.ndarray
    task: str | None = None


def _json_safe(value: Any) -> Any:
    """NaN / inf -> ``None`` and NumPy scalars / arrays -> Python, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _counts(result: Any) -> dict[str, Any]:
    t = result.task
    out: dict[str, Any] = {"labelled": result.num_cases}
    if t.kind in (TaskKind.BINARY, TaskKind.MULTILABEL):
        pos = result.labels.sum(axis=0).astype(int).tolist()
        out["positive"] = pos[0] if t.kind == TaskKind.BINARY else dict(zip(t.class_names, pos, strict=True))
    elif t.kind == TaskKind.MULTICLASS:
        out["per_class"] = dict(
            zip(t.class_names, np.bincount(result.labels, minlength=t.num_outputs).tolist(), strict=True)
        )
    return out


def build_summary(
    results: EvaluationResults,
    tasks: Sequence[Task] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    primary: Mapping[str, str] | None = None,
    history: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The content of ``summary.json`` (NaN still as float NaN; written as ``null``).

    Keys: ``tasks`` (their definitions), ``settings``, ``counts`` (labelled cases per task, and
    positives / per-class counts), ``mean`` (``{task: {metric: value}}``), ``ci`` (primary
    metric with bootstrap interval), ``mean_primary``, ``confusion_matrix``,
    ``metric_per_case`` (``[{case_id, metrics: {task: {...}}}]``; image-level tasks with the
    case's ``entropy``), ``uncertainty`` (per image-level task: AURC of predictive entropy against
    errors, random and best AURC, error rate at 50 / 80 / 100 % coverage) and ``history`` when given.
    """
    tasks = list(tasks) if tasks is not None else results.tasks
    means, cis, counts, matrices = {}, {}, {}, {}
    flat: dict[str, float] = {}
    for task in tasks:
        r = results[task.name]
        metrics = r.metrics()
        means[task.name] = metrics
        flat.update({f"{task.name}/{k}": v for k, v in metrics.items()})
        counts[task.name] = _counts(r)
        cis[task.name] = r.primary_interval(metrics, n_resamples=n_resamples, confidence=confidence, seed=seed)
        cm = r.confusion_matrix()
        if cm is not None:
            matrices[task.name] = {"classes": list(task.class_names), "matrix": cm.tolist()}
    per_case: dict[str, dict[str, Any]] = {}
    for task in tasks:
        for case, record in results[task.name].case_records().items():
            per_case.setdefault(case, {})[task.name] = record
    summary: dict[str, Any] = {
        "tasks": [t.model_dump(mode="json") for t in tasks],
        "settings": {
            "n_resamples": n_resamples,
            "confidence": confidence,
            "seed": seed,
            "primary": dict(primary or {}),
            "threshold": {
                t.name: results[t.name].threshold for t in tasks if t.kind in (TaskKind.BINARY, TaskKind.MULTILABEL)
            },
            # multiclass tasks decided after a prior correction (decisions.json): the per-class weights
            "class_weights": {
                t.name: results[t.name].class_weights.tolist()
                for t in tasks
                if t.kind == TaskKind.MULTICLASS and results[t.name].class_weights is not None
            },
        },
        "counts": counts,
        "mean": means,
        "ci": cis,
        "mean_primary": mean_primary(flat, tasks, primary),
        "confusion_matrix": matrices,
        "metric_per_case": [{"case_id": c, "metrics": m} for c, m in per_case.items()],
    }
    uncertainty = {t.name: uncertainty_summary(results[t.name])[0] for t in tasks if not t.is_dense}
    if uncertainty:  # image-level tasks only (medmtl.metrics.uncertainty); a segmentation-only summary stays as it was
        summary["uncertainty"] = uncertainty
    if history is not None:
        summary["history"] = {k: [float("nan") if v is None else float(v) for v in vals] for k, vals in history.items()}
    return summary


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path | None, out_dir: Path, alt: str) -> str:
    if path is None:
        return ""
    return f'<img src="{html.escape(path.relative_to(out_dir).as_posix())}" alt="{html.escape(alt)}">'


def _group_overlays(overlays: Sequence[Overlay], tasks: Sequence[Task]) -> dict[str | None, list[Overlay]]:
    seg = [t.name for t in tasks if t.is_dense]
    grouped: dict[str | None, list[Overlay]] = {}
    for ov in overlays:
        ov = Overlay(*ov)
        if ov.task is not None and ov.task not in seg:
            raise ValueError(f"overlay of case {ov.case_id} names task '{ov.task}', not a segmentation task of {seg}")
        grouped.setdefault(ov.task if ov.task is not None else (seg[0] if len(seg) == 1 else None), []).append(ov)
    return grouped


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}thead{background:#f3f3f3}img{max-width:100%;margin:.3em}
.task{border-top:2px solid #ddd;margin-top:1.5em}.muted{color:#777}
"""


def write_report(
    results: EvaluationResults,
    out_dir: str | Path,
    tasks: Sequence[Task] | None = None,
    history: Mapping[str, Sequence[float]] | None = None,
    overlays: Sequence[Overlay | tuple] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    primary: Mapping[str, str] | None = None,
    title: str = "medmtl evaluation",
    calibration: CalibrationRecord | None = None,
    studies: Mapping[str, str] | None = None,
    study_aggregate: str = "mean",
) -> Path:
    """Write ``summary.json``, ``predictions.npz``, ``figures/*.png`` and ``report.html``.

    Args:
        results: per-case data (:func:`~medmtl.metrics.cumulative.collect_results` or
            :meth:`MultiTaskMetricHandler.results`).
        out_dir: folder to write into (created).
        tasks: tasks to report, in this order (default: all in ``results``).
        history: training curves, ``{metric: [value per epoch]}``.
        overlays: ``(case_id, image, true_mask, pred_mask[, task])`` items; 3D arrays are shown
            at their middle slice.
        n_resamples: bootstrap resamples for the confidence intervals.
        confidence: interval coverage.
        seed: bootstrap seed.
        primary: optional ``{task: metric}`` override of the primary metrics in ``mean_primary``.
        title: report title.
        calibration: temperatures fitted on validation / out-of-fold predictions
            (:func:`~medmtl.metrics.calibration.fit_temperatures`): the report shows calibration
            before and after them and writes them to ``calibration.json``; default: that file in
            ``out_dir`` when present.
        studies: ``{case_id: study id}`` (the spec's ``aggregate_by``): image-level tasks are also
            scored per study (:mod:`medmtl.metrics.studies`): ``studies.csv``, a ``studies`` block in
            ``summary.json`` and a per-study section; ``None``: per image only.
        study_aggregate: ``mean`` or ``max`` of a study's image probabilities.

    Returns:
        Path of ``report.html``.

    Raises:
        KeyError: when a task has no results.
        ValueError: for an overlay naming an unknown task or with mismatched shapes.
        CalibrationFileError: when the temperatures are for other tasks.

    Example::

        path = write_report(collect_results(tasks, outputs), "runs/eval", history={"loss": [0.9, 0.5]})
    """
    out = Path(out_dir)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    tasks = list(tasks) if tasks is not None else results.tasks
    missing = [t.name for t in tasks if t.name not in results.results]
    if missing:
        raise KeyError(f"no results for tasks {missing}; results hold {list(results.results)}")
    overlay_items = [Overlay(*o) for o in (overlays or [])]
    summary = build_summary(results, tasks, n_resamples, confidence, seed, primary, history)
    summary["settings"]["title"] = title
    record = _calibration_record(calibration, out, tasks)
    calib = calibration_summary(results, tasks, record)
    if calib:  # image-level tasks only; a segmentation-only summary stays as it was
        summary["calibration"] = calib
    by_study = study_results(results, studies, study_aggregate, tasks) if studies else None
    if by_study is not None and by_study.tasks:
        summary["studies"] = study_summary(by_study, n_resamples, confidence, seed)

    sections = []
    overview = []
    for task in tasks:
        ci = summary["ci"][task.name]
        overview.append(
            [
                task.name,
                task.kind.value,
                summary["counts"][task.name]["labelled"],
                ci["metric"],
                ci["value"],
                ci["low"],
                ci["high"],
            ]
        )
    pct = f"{100 * confidence:g}%"
    sections.append("<h2>Overview</h2>")
    sections.append(
        _table(
            ["task", "kind", "labelled cases", "primary metric", "value", f"{pct} CI low", f"{pct} CI high"], overview
        )
    )
    sections.append(f"<p>mean of primary metrics (<code>mean_primary</code>): {_fmt(summary['mean_primary'])}</p>")

    grouped = _group_overlays(overlay_items, tasks)
    for task in tasks:
        r = results[task.name]
        metrics = summary["mean"][task.name]
        parts = [
            f'<section class="task"><h2>{html.escape(task.name)} <span class="muted">({task.kind.value})</span></h2>'
        ]
        if task.description:
            parts.append(f"<p>{html.escape(task.description)}</p>")
        parts.append(f"<p>labelled cases: {r.num_cases}</p>")
        counted = {k: int(v) for k, v in metrics.items() if k.endswith("_not_nans")}
        for name, values in r.case_metrics.items():  # per-class counts of cases with a defined value
            for cls, col in zip(task.class_names[1:], values.T, strict=True):
                counted.setdefault(f"{name}_{F.safe_key(cls)}_not_nans", int((~np.isnan(col)).sum()))
        rows = [
            [key, value, counted.get(f"{key}_not_nans")]
            for key, value in metrics.items()
            if key != "num_cases" and not key.endswith("_not_nans")
        ]
        if task.is_dense:  # how many cases had a defined value (empty ground truth gives NaN)
            parts.append(_table(["metric", "value", "cases counted"], rows))
        else:
            parts.append(_table(["metric", "value"], [row[:2] for row in rows]))
        ci = summary["ci"][task.name]
        parts.append(
            f"<p>{html.escape(ci['metric'])}: {_fmt(ci['value'])} ({pct} bootstrap CI {_fmt(ci['low'])} – "
            f"{_fmt(ci['high'])}, {n_resamples} resamples of cases)</p>"
        )
        figs: list[str] = []
        if task.is_dense:
            figs.append(_img(plots.plot_dice_box(r, fig_dir / f"dice_{task.name}.png"), out, f"{task.name} Dice"))
        else:
            if task.kind != TaskKind.MULTICLASS:
                figs.append(_img(plots.plot_roc(r, fig_dir / f"roc_{task.name}.png"), out, f"{task.name} ROC"))
            cm = r.confusion_matrix()
            names = task.class_names
            if task.kind == TaskKind.BINARY:  # one 2 x 2 matrix, ticks named [negative, positive]
                cm = cm[0]
            cm_title = _decision_title(task, r)
            figs.append(
                _img(
                    plots.plot_confusion(cm, names, cm_title, fig_dir / f"confusion_{task.name}.png"), out, "confusion"
                )
            )
        for i, ov in enumerate(grouped.get(task.name, [])):
            figs.append(_overlay_img(ov, i, task.name, r, fig_dir, out))
        parts.append("<div>" + "".join(figs) + "</div></section>")
        sections.append("".join(parts))
    if grouped.get(None):
        imgs = "".join(_overlay_img(ov, i, "samples", None, fig_dir, out) for i, ov in enumerate(grouped[None]))
        sections.append(f'<section class="task"><h2>Sample overlays</h2><div>{imgs}</div></section>')
    if calib:
        sections.append(_calibration_section(results, tasks, calib, record, fig_dir, out))
    if "studies" in summary:
        sections.append(_studies_section(summary["studies"], pct, n_resamples))
    for task in tasks:
        if not task.is_dense:
            sections.append(_uncertainty_section(results[task.name], summary["uncertainty"][task.name], fig_dir, out))
    if history:
        sections.append("<h2>Training curves</h2>")
        sections.append(_img(plots.plot_history(history, fig_dir / "history.png"), out, "training curves"))

    with (out / SUMMARY_FILE).open("w") as fh:
        json.dump(_json_safe(summary), fh, indent=2)
    results.save(out / PREDICTIONS_FILE)
    _save_overlays(overlay_items, out / OVERLAYS_FILE)
    if "studies" in summary:
        write_studies_csv(by_study, out / STUDIES_FILE)
    else:  # a folder re-evaluated without studies keeps no stale table
        (out / STUDIES_FILE).unlink(missing_ok=True)
    if calibration is not None:  # the folder then rebuilds the same before/after report
        write_calibration(calibration, out / CALIBRATION_FILE)
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}"
        f"<p class='muted'>Files: {SUMMARY_FILE}, {PREDICTIONS_FILE}. Rebuild with "
        "<code>medmtl.metrics.report_from_dir</code>.</p></body></html>"
    )
    path = out / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    logger.info("evaluation report written to %s", path)
    return path


def _calibration_record(given: CalibrationRecord | None, out: Path, tasks: Sequence[Task]) -> CalibrationRecord | None:
    """The temperatures to report: ``given`` (checked against ``tasks``), else ``out/calibration.json`` if present."""
    if given is not None:
        given.check_tasks(tasks, "the calibration passed to write_report")
        return given
    path = out / CALIBRATION_FILE
    return read_calibration(path, tasks) if path.is_file() else None


def _calibration_section(
    results: EvaluationResults,
    tasks: Sequence[Task],
    calib: Mapping[str, Any],
    record: CalibrationRecord | None,
    fig_dir: Path,
    out: Path,
) -> str:
    """The "Calibration" section: ECE / MCE / Brier table (before / after temperature) and reliability diagrams."""
    header = ["task", "label", "cases", "ECE", "MCE", "Brier"]
    if record is not None:
        header += ["T", "ECE after", "MCE after", "Brier after", "T fitted on"]
    rows, figs = [], []
    for task in tasks:
        entry = calib.get(task.name)
        if entry is None:
            continue
        after = entry.get("temperature")
        parts = [(("mean of labels" if "labels" in entry else entry["confidence"]), entry, after)]
        for label, scores in entry.get("labels", {}).items():
            parts.append((label, scores, after["labels"][label] if after else None))
        for label, scores, cal in parts:
            row = [task.name, label, entry["num_cases"], scores["ece"], scores["mce"], scores["brier"]]
            if record is not None:
                row += [after["value"], cal["ece"], cal["mce"], cal["brier"], after["fitted_on"]]
            rows.append(row)
        temperature = record.tasks.get(task.name) if record else None
        before, recal = task_reliability(results[task.name], entry["n_bins"], temperature)
        multiclass = task.kind == TaskKind.MULTICLASS
        path = plots.plot_reliability(
            before,
            fig_dir / f"reliability_{task.name}.png",
            f"{task.name}: reliability" + (f" (T = {after['value']:.3g})" if after else ""),
            recalibrated=recal,
            xlabel="top-label confidence" if multiclass else "mean predicted probability",
            ylabel="accuracy" if multiclass else "observed frequency",
        )
        figs.append(_img(path, out, f"{task.name} reliability diagram"))
    n_bins = next(iter(calib.values()))["n_bins"]
    intro = (
        f"<p>Expected calibration error (ECE: the gap between observed frequency and mean predicted probability "
        f"in {n_bins} equal-width bins, weighted by cases, empty bins skipped), maximum calibration error (MCE: "
        "the largest bin gap) and Brier score. Multiclass tasks: top-label confidence against accuracy, and the "
        "multi-class Brier score (sum over classes, 0–2). Lower is better for all three.</p>"
    )
    if record is not None:
        intro += (
            "<p>After: temperature scaling, <code>sigmoid(logit(p) / T)</code> or <code>softmax(log p / T)</code>, "
            "with T fitted on the predictions named in the last column: validation or out-of-fold predictions; "
            "fitted on these test cases, the after-numbers are optimistic.</p>"
        )
    table = _table(header, rows)
    return f'<section class="task"><h2>Calibration</h2>{intro}{table}<div>{"".join(figs)}</div></section>'


def _studies_section(block: Mapping[str, Any], pct: str, n_resamples: int) -> str:
    """The "Per study" section: study-level metrics of each image-level task (:mod:`medmtl.metrics.studies`)."""
    intro = (
        f"<p>Images grouped by study (the spec's <code>aggregate_by</code>): a study's probability is the "
        f"{html.escape(block['aggregate'])} of its images' probabilities, its decision that probability at the "
        f"per-image threshold (multiclass: argmax), its label {html.escape(block['label_rule'])}. Intervals resample "
        f"studies ({n_resamples} resamples). One row per study: <code>{html.escape(block['file'])}</code>.</p>"
    )
    overview = [
        [
            name,
            block["num_studies"][name],
            block["mixed_label_studies"][name],
            ci["metric"],
            ci["value"],
            ci["low"],
            ci["high"],
        ]
        for name, ci in block["ci"].items()
    ]
    header = ["task", "studies", "mixed-label studies", "primary metric", "value", f"{pct} CI low", f"{pct} CI high"]
    parts = [intro, _table(header, overview)]
    for name, metrics in block["mean"].items():
        rows = [[k, v] for k, v in metrics.items() if k != "num_cases"]
        parts.append(f"<h3>{html.escape(name)} per study</h3>" + _table(["metric", "value"], rows))
    return f'<section class="task"><h2>Per study</h2>{"".join(parts)}</section>'


def _decision_title(task: Task, r: TaskResult) -> str:
    """The confusion matrix's title: the task and how its cases were decided."""
    if task.kind != TaskKind.MULTICLASS:
        return f"{task.name} at {_threshold_text(r.threshold)}"
    if r.class_weights is None:
        return task.name
    return f"{task.name}, prior-corrected (weights {_threshold_text(r.class_weights)})"


def _threshold_text(threshold: Any) -> str:
    """``0.5`` as before; per-label thresholds (multilabel) as ``0.31/0.5/0.62``."""
    values = np.atleast_1d(np.asarray(threshold, dtype=np.float64))
    return "/".join(f"{v:g}" for v in values)


def _case_cells(result: Any, i: int, preds: np.ndarray) -> list[str]:
    """Label, prediction and probability of case ``i`` as table text."""
    task = result.task
    names = list(task.class_names)
    p = result.probabilities[i]
    if task.kind == TaskKind.BINARY:
        return [str(int(result.labels[i, 0])), str(int(preds[i, 0])), f"{p[0]:.4f}"]
    probs = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, p, strict=True))
    if task.kind == TaskKind.MULTICLASS:
        return [names[int(result.labels[i])], names[int(preds[i])], probs]
    positive = [n for n, y in zip(names, result.labels[i], strict=True) if y == 1]
    called = [n for n, y in zip(names, preds[i], strict=True) if y == 1]
    return [", ".join(positive) or "none", ", ".join(called) or "none", probs]


def _uncertainty_section(result: Any, entry: Mapping[str, Any], fig_dir: Path, out: Path, n_cases: int = 10) -> str:
    """The "Uncertainty" section of one image-level task: risk-coverage plot and the most uncertain cases."""
    task = result.task
    _, curve = uncertainty_summary(result)
    fig = _img(
        plots.plot_risk_coverage(curve, task.name, fig_dir / f"risk_coverage_{task.name}.png"),
        out,
        f"{task.name} risk-coverage",
    )
    intro = (
        "<p>Predictive entropy per case, normalised to 0–1 (binary / multilabel: Bernoulli entropy in bits, mean "
        "over labels; multiclass: entropy / log K). Risk-coverage: cases kept from most to least certain, the "
        "error rate of the kept cases at each coverage (errors at the decisions of this report); AURC is the area "
        "under it, lower is better, against a random ranking (AURC = overall error rate) and the best ranking "
        "(errors last). An AURC below the random one means that the error rate rises with the entropy.</p>"
    )
    coverage = entry["error_rate_at_coverage"]
    summary_table = _table(
        ["cases", "AURC", "random AURC", "best AURC", *(f"error rate at {c} coverage" for c in coverage)],
        [[entry["num_cases"], entry["aurc"], entry["random_aurc"], entry["oracle_aurc"], *coverage.values()]],
    )
    entropy = predictive_entropy(result.probabilities, task.kind)
    preds = result.predictions()
    rows = [
        [result.case_ids[i], *_case_cells(result, i, preds), float(entropy[i])]
        for i in most_uncertain(entropy, n_cases)
    ]
    cases = _table(["case", "label", "prediction", "probability", "entropy"], rows)
    return (
        f'<section class="task"><h2>Uncertainty: {html.escape(task.name)}</h2>{intro}{summary_table}'
        f"<div>{fig}</div><h3>The {len(rows)} most uncertain cases</h3>{cases}</section>"
    )


def _overlay_img(ov: Overlay, i: int, group: str, result: Any, fig_dir: Path, out: Path) -> str:
    title = ""
    if result is not None and ov.case_id in result.case_ids:
        dice = result.dice_per_case()[result.case_ids.index(ov.case_id)]
        title = f"Dice {dice:.3f}" if not math.isnan(dice) else "Dice undefined (empty ground truth)"
    path = plots.plot_overlay(
        str(ov.case_id), ov.image, ov.true_mask, ov.pred_mask, fig_dir / f"overlay_{group}_{i}.png", title
    )
    return _img(path, out, f"overlay {ov.case_id}")


def _save_overlays(overlays: Sequence[Overlay], path: Path) -> None:
    if not overlays:
        path.unlink(missing_ok=True)
        return
    arrays: dict[str, np.ndarray] = {
        "case_ids": np.asarray([str(o.case_id) for o in overlays], dtype=np.str_),
        "tasks": np.asarray([o.task or "" for o in overlays], dtype=np.str_),
    }
    for i, o in enumerate(overlays):
        arrays[f"{i}.image"] = plots.middle_slice(o.image, "image")
        arrays[f"{i}.true_mask"] = plots.middle_slice(o.true_mask, "true mask")
        arrays[f"{i}.pred_mask"] = plots.middle_slice(o.pred_mask, "predicted mask")
    with path.open("wb") as fh:
        np.savez_compressed(fh, **arrays)


def _load_overlays(path: Path) -> list[Overlay]:
    if not path.is_file():
        return []
    data = _read_npz(path)
    try:
        ids, tasks = data["case_ids"].tolist(), data["tasks"].tolist()
        return [
            Overlay(c, data[f"{i}.image"], data[f"{i}.true_mask"], data[f"{i}.pred_mask"], t or None)
            for i, (c, t) in enumerate(zip(ids, tasks, strict=True))
        ]
    except (KeyError, ValueError) as err:
        raise ResultsFileError(
            f"{path}: the overlay arrays are incomplete ({type(err).__name__}: {err}); evaluate again, or delete the "
            "file to rebuild the report without overlays"
        ) from None


def _read_summary(path: Path) -> tuple[dict[str, Any], list[Task]]:
    """``summary.json`` and its tasks, with a clear error when it is not what ``write_report`` wrote."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ResultsFileError(
            f"{path} is not valid JSON ({err}): it was not written completely or was changed; evaluate again"
        ) from None
    if not isinstance(summary, dict) or not summary.get("tasks"):
        raise ValueError(f"{path} has no 'tasks' list; it was not written by medmtl.metrics.write_report")
    if not isinstance(summary["tasks"], list):
        raise ResultsFileError(
            f"{path}: its 'tasks' is a JSON {type(summary['tasks']).__name__}, not a list of task definitions; "
            "it was changed or not written by medmtl.metrics.write_report: evaluate again"
        )
    settings, history = summary.get("settings", {}), summary.get("history")
    curves_ok = history is None or (
        isinstance(history, dict)
        and all(
            isinstance(v, list) and all(x is None or isinstance(x, int | float) for x in v) for v in history.values()
        )
    )
    primary = settings.get("primary") if isinstance(settings, dict) else None
    primary_ok = not primary or (isinstance(primary, dict) and all(isinstance(v, str) for v in primary.values()))
    if not isinstance(settings, dict) or not curves_ok or not primary_ok:
        raise ResultsFileError(
            f"{path}: its 'settings' (an object; 'primary' mapping task names to metric names) or 'history' "
            "(an object of number lists) is malformed; it was changed or not written by "
            "medmtl.metrics.write_report: evaluate again"
        )
    try:
        tasks = [Task.model_validate(t) for t in summary["tasks"]]
    except ValueError as err:
        first = str(err).strip().splitlines()
        raise ResultsFileError(
            f"{path}: its 'tasks' are not valid task definitions ({first[0] if first else err}); evaluate again"
        ) from None
    return summary, tasks


def load_evaluation(eval_dir: str | Path) -> EvaluationResults:
    """The per-case results of an evaluation folder: tasks from ``summary.json``, arrays from ``predictions.npz``.

    For code that needs the numbers without rebuilding the report (``medmtl compare``).

    Raises:
        FileNotFoundError: naming the missing file.
        ResultsFileError: when either file is truncated, malformed or holds pickled objects.
    """
    run = Path(eval_dir)
    summary_path = run / SUMMARY_FILE
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found; expected a folder written by medmtl.metrics.write_report")
    _, tasks = _read_summary(summary_path)
    return EvaluationResults.load(run / PREDICTIONS_FILE, tasks)


_MAX_RESAMPLES = 100_000
"""Most bootstrap resamples :func:`report_from_dir` takes from a ``summary.json`` (written: 1000 by default)."""


def report_from_dir(run_dir: str | Path, out_dir: str | Path | None = None, title: str | None = None) -> Path:
    """Rebuild the report from a folder holding ``summary.json`` and ``predictions.npz``.

    Tasks, bootstrap settings, primary overrides and training history come from
    ``summary.json``; the per-case arrays from ``predictions.npz``; overlays from
    ``overlays.npz`` and temperatures from ``calibration.json`` when present.

    Args:
        run_dir: folder written by :func:`write_report`.
        out_dir: where to write (default: ``run_dir``).
        title: report title (default: the one stored in ``summary.json``).

    Returns:
        Path of the new ``report.html``.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: when ``summary.json`` lacks the task definitions.
        ResultsFileError: when ``summary.json``, ``predictions.npz`` or ``overlays.npz`` is truncated,
            malformed or holds pickled objects (refused, never loaded).
        CalibrationFileError: when ``calibration.json`` is malformed or for other tasks.
    """
    run = Path(run_dir)
    summary_path = run / SUMMARY_FILE
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found; expected a folder written by medmtl.metrics.write_report")
    summary, tasks = _read_summary(summary_path)
    settings = summary.get("settings", {})
    try:
        n_resamples = int(settings.get("n_resamples", 1000))
        confidence = float(settings.get("confidence", 0.95))
        seed = int(settings.get("seed", 0))
    except (TypeError, ValueError) as err:
        raise ResultsFileError(
            f"{summary_path}: its 'settings' hold a value that is not a number ({err}); evaluate again"
        ) from None
    if n_resamples > _MAX_RESAMPLES:
        raise ResultsFileError(
            f"{summary_path}: its 'settings' ask for {n_resamples} bootstrap resamples, more than the "
            f"{_MAX_RESAMPLES} a report reads from a file (the rebuild would run for days); evaluate again"
        )
    results = EvaluationResults.load(run / PREDICTIONS_FILE, tasks)
    out = Path(out_dir) if out_dir is not None else run
    calibration_path = run / CALIBRATION_FILE
    elsewhere = out.resolve() != run.resolve()  # in place, write_report reads the file itself
    studies = studies_from_summary(summary.get("studies"), summary_path)
    return write_report(
        results,
        out,
        tasks,
        calibration=read_calibration(calibration_path, tasks) if elsewhere and calibration_path.is_file() else None,
        history=summary.get("history"),
        overlays=_load_overlays(run / OVERLAYS_FILE),
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        primary=settings.get("primary") or None,
        title=title or str(settings.get("title", "medmtl evaluation")),
        studies=studies[0] if studies else None,
        study_aggregate=studies[1] if studies else "mean",
    )
