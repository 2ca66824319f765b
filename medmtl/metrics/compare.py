"""Paired comparison of two evaluations on the same test cases (``medmtl compare RUN_A RUN_B``).

Two runs scored on the same cases share every case's difficulty, so their separate confidence
intervals overlap even when one run is better on nearly every case; the question is whether B - A
differs from zero case by case. Per task this gives the primary metric of each run, the difference
B - A with a paired percentile bootstrap interval (each replicate draws one set of case indices and
applies it to both runs) and a test:

- binary and each label of a multilabel task: DeLong's test of two correlated AUROCs, with the fast
  midrank algorithm of Sun & Xu (2014). Our own because neither scipy nor scikit-learn has it; the
  mean AUROC over a multilabel task's labels is tested with the paired bootstrap;
- segmentation: the Wilcoxon signed-rank test (scipy) on per-case Dice, cases whose Dice is
  undefined (empty ground truth) left out of both runs;
- multiclass: balanced accuracy with the paired bootstrap (two-sided p-value), and accuracy with
  McNemar's exact test on per-case correctness (scipy's binomial test on the discordant cases).

Each p-value is shown as computed and Holm-adjusted over all the tests of one comparison (our own
few lines: scipy has Benjamini-Hochberg but not Holm); "significant" means the unadjusted p < alpha.

``level="study"`` compares per study (exam) instead, for evaluations whose data spec groups images by
study (``aggregate_by``): each run's per-image probabilities are grouped again with the rule its
``summary.json`` records (:mod:`medmtl.metrics.studies`, what its ``studies.csv`` holds), and the same
tests and the paired bootstrap run over studies. The runs must still share their test images.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from medmtl.atomic_io import atomic_write
from medmtl.csv_safety import csv_text
from medmtl.data.tasks import Task, TaskKind
from medmtl.json_file import read_json
from medmtl.metrics import functional as F
from medmtl.metrics.report import SUMMARY_FILE, load_evaluation
from medmtl.metrics.results import EvaluationResults, TaskResult
from medmtl.metrics.studies import studies_from_summary, study_results

__all__ = [
    "COMPARE_JSON",
    "COMPARE_CSV",
    "COMPARE_STUDIES_JSON",
    "COMPARE_STUDIES_CSV",
    "LEVELS",
    "Comparison",
    "ComparisonError",
    "ComparisonRow",
    "DeLongResult",
    "compare_results",
    "compare_runs",
    "default_out_dir",
    "delong_test",
    "holm",
    "resolve_eval_dir",
    "study_level",
    "write_comparison",
]

COMPARE_JSON = "compare.json"
COMPARE_CSV = "compare.csv"
COMPARE_STUDIES_JSON = "compare_studies.json"
COMPARE_STUDIES_CSV = "compare_studies.csv"
"""The per-study comparison's files: beside the per-case ones, so both fit in one folder."""
LEVELS = ("case", "study")
_SHOWN_IDS = 10  # case ids listed per problem in the mismatch error

_CSV_COLUMNS = (
    "task",
    "kind",
    "metric",
    "cases",
    "a",
    "b",
    "difference",
    "ci_low",
    "ci_high",
    "test",
    "p",
    "p_holm",
    "significant",
    "significant_holm",
)


class ComparisonError(ValueError):
    """The two runs cannot be compared case by case: the message names both runs, every difference and the fix."""


class DeLongResult(NamedTuple):
    """DeLong's test of two AUROCs on the same cases; NaN where undefined (one class only)."""

    auc_a: float
    auc_b: float
    difference: float
    std_error: float
    z: float
    p: float


@dataclass
class ComparisonRow:
    """One metric of one task: the values of both runs, B - A with its interval and a test."""

    task: str
    kind: str
    metric: str
    cases: int
    a: float
    b: float
    difference: float
    ci_low: float
    ci_high: float
    test: str
    p: float
    p_holm: float = math.nan
    significant: bool = False
    significant_holm: bool = False
    detail: dict[str, float] = field(default_factory=dict)


@dataclass
class Comparison:
    """Every row of a comparison of run B against run A, with the settings that produced it."""

    run_a: str
    run_b: str
    rows: list[ComparisonRow]
    n_resamples: int
    alpha: float
    seed: int
    level: str = "case"
    """``case`` (each evaluated image / volume) or ``study`` (images grouped by the spec's ``aggregate_by``)."""

    @property
    def unit(self) -> str:
        """What a row's count and the bootstrap's resamples are made of: ``cases`` or ``studies``."""
        return "studies" if self.level == "study" else "cases"

    @property
    def confidence(self) -> float:
        return 1.0 - self.alpha

    @property
    def num_tests(self) -> int:
        return sum(not math.isnan(r.p) for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content of ``compare.json`` (NaN as ``null``)."""
        return _finite_or_none(
            {
                "run_a": self.run_a,
                "run_b": self.run_b,
                "level": self.level,
                "difference": "B - A",
                "settings": {
                    "n_resamples": self.n_resamples,
                    "alpha": self.alpha,
                    "confidence": self.confidence,
                    "seed": self.seed,
                    "significant": "p < alpha, not corrected for multiple tests",
                    "significant_holm": f"Holm-adjusted p < alpha, over the {self.num_tests} tests of this comparison",
                },
                "rows": [asdict(r) for r in self.rows],
            }
        )

    def csv_text(self) -> str:
        """``compare.csv``: one row per metric (spreadsheet-safe cells); per study the count column is ``studies``."""
        columns = [self.unit if c == "cases" else c for c in _CSV_COLUMNS]
        rows = [
            {name: _csv_value(getattr(r, c)) for name, c in zip(columns, _CSV_COLUMNS, strict=True)} for r in self.rows
        ]
        return csv_text(columns, rows)

    def format_table(self) -> str:
        """The plain-text table the CLI prints, with a footnote saying what the columns mean."""
        pct = f"{100 * self.confidence:g}%"
        header = ["task", "metric", self.unit, "A", "B", f"B-A [{pct} CI]", "test", "p", "p (Holm)", "significant"]
        body = [
            [
                r.task,
                r.metric,
                str(r.cases),
                _num(r.a),
                _num(r.b),
                f"{_num(r.difference, signed=True)} [{_num(r.ci_low, signed=True)}, {_num(r.ci_high, signed=True)}]",
                r.test,
                _pvalue(r.p),
                _pvalue(r.p_holm),
                "n/a" if math.isnan(r.p) else ("yes" if r.significant else "no"),
            ]
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *body]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines += [
            "",
            f"A = {self.run_a}",
            f"B = {self.run_b}",
            f"B-A: paired percentile bootstrap, {self.n_resamples} resamples of the {self.unit} (seed {self.seed}), the "
            f"same {self.unit} drawn for both runs.",
            f"significant: p < {self.alpha:g}, NOT corrected for the {self.num_tests} tests in this table; "
            "p (Holm) is adjusted for them (Holm).",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- statistics


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> DeLongResult:
    """DeLong's test that two AUROCs on the same cases are equal (two-sided).

    The fast algorithm of Sun & Xu (2014, IEEE Signal Processing Letters 21(11)): midranks
    (scipy's ``rankdata``) give each case's placement value in O(N log N), and the covariance of the
    two AUROCs is the covariance of those placements over positives / m plus over negatives / n.

    Args:
        scores_a: ``(N,)`` scores of run A (higher means positive).
        scores_b: ``(N,)`` scores of run B on the same cases.
        labels: ``(N,)`` 0/1 truth.

    Returns:
        The two AUROCs (ties count one half, as scikit-learn), B - A, its standard error, z and the
        two-sided p-value; AUROCs NaN without both classes, z and p NaN with fewer than two cases of
        a class. With zero variance, p is 1 for equal AUROCs and NaN otherwise.
    """
    scores = np.stack([np.asarray(scores_a, dtype=np.float64).ravel(), np.asarray(scores_b, dtype=np.float64).ravel()])
    y = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    if scores.shape[1] != y.size:
        raise ValueError(f"delong_test: {scores.shape[1]} scores per run but {y.size} labels")
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        return DeLongResult(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    diff = float(aucs[1] - aucs[0])
    if m < 2 or n < 2:
        return DeLongResult(float(aucs[0]), float(aucs[1]), diff, math.nan, math.nan, math.nan)
    v_pos = (tz[:, :m] - tx) / n  # per positive: share of negatives scored below it
    v_neg = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives scored above it
    cov = np.cov(v_pos) / m + np.cov(v_neg) / n
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var <= 1e-15:
        p = 1.0 if abs(diff) < 1e-12 else math.nan
        return DeLongResult(float(aucs[0]), float(aucs[1]), diff, 0.0, math.nan, p)
    se = math.sqrt(var)
    z = diff / se
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, z, float(2.0 * stats.norm.sf(abs(z))))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted as a test)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if not ok.size:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def _paired_bootstrap(
    difference: Callable[[np.ndarray], np.ndarray], n: int, n_resamples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """Percentile interval of B - A and its two-sided bootstrap p-value.

    ``difference`` maps resampled case indices ``(R, N)`` to R values of B - A, applying the same
    indices to both runs. The interval is :func:`functional.bootstrap_ci`'s; the p-value is twice
    the smaller share of replicates on either side of zero, with the +1 correction of a Monte Carlo
    p-value (never 0).
    """
    draws: list[np.ndarray] = []

    def recorded(idx: np.ndarray) -> np.ndarray:
        values = np.asarray(difference(idx), dtype=np.float64).reshape(-1)
        draws.append(values)
        return values

    low, high = F.bootstrap_ci(recorded, n, n_resamples=n_resamples, confidence=confidence, seed=seed)
    d = np.concatenate(draws) if draws else np.zeros(0)
    d = d[np.isfinite(d)]
    if not d.size:
        return low, high, math.nan
    side = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return low, high, float(min(1.0, 2.0 * (side + 1) / (d.size + 1)))


def _wilcoxon(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """``(statistic, p, pairs)`` of the signed-rank test of B - A over pairs where both are defined."""
    ok = ~(np.isnan(a) | np.isnan(b))
    diff = b[ok] - a[ok]
    if not diff.size:
        return math.nan, math.nan, 0
    if not np.any(diff != 0):  # identical per-case scores: nothing to test, no evidence of a difference
        return math.nan, 1.0, int(diff.size)
    res = stats.wilcoxon(diff)
    return float(res.statistic), float(res.pvalue), int(diff.size)


def _mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, int, int]:
    """Exact McNemar test: ``(p, A right only, B right only)``; p 1 without discordant cases, NaN without cases."""
    if not correct_a.size:
        return math.nan, 0, 0
    a_only = int((correct_a & ~correct_b).sum())
    b_only = int((~correct_a & correct_b).sum())
    if a_only + b_only == 0:
        return 1.0, a_only, b_only
    return float(stats.binomtest(b_only, a_only + b_only, 0.5).pvalue), a_only, b_only


# --------------------------------------------------------------------------- per task


def _row(
    task: Task,
    metric: str,
    cases: int,
    values: tuple[float, float],
    ci: tuple[float, float, float],
    test: str = "paired bootstrap",
    p: float | None = None,
    detail: dict[str, float] | None = None,
) -> ComparisonRow:
    """A row from A's and B's values and the bootstrap's ``(low, high, p)``; ``p`` replaces the bootstrap's."""
    a, b = (float(v) for v in values)
    low, high, p_boot = ci
    return ComparisonRow(
        task=task.name,
        kind=task.kind.value,
        metric=metric,
        cases=int(cases),
        a=a,
        b=b,
        difference=b - a,
        ci_low=low,
        ci_high=high,
        test=test,
        p=p_boot if p is None else float(p),
        detail=dict(detail or {}),
    )


def _segmentation_rows(ra: TaskResult, rb: TaskResult, boot: Callable[..., tuple]) -> list[ComparisonRow]:
    task = ra.task
    rows = []
    columns: list[tuple[str, np.ndarray, np.ndarray]] = [("dice", ra.dice_per_case(), rb.dice_per_case())]
    fg = task.class_names[1:]
    if len(fg) > 1:
        for j, name in enumerate(fg):
            columns.append((f"dice_{F.safe_key(name)}", ra.case_metrics["dice"][:, j], rb.case_metrics["dice"][:, j]))
    for metric, da, db in columns:
        stat, p, pairs = _wilcoxon(da, db)
        ci = boot(lambda idx, da=da, db=db: F.resampled_nanmean(db, idx) - F.resampled_nanmean(da, idx))
        a, b = F.rows_nanmean(da[None])[0], F.rows_nanmean(db[None])[0]
        rows.append(_row(task, metric, pairs, (a, b), ci, "Wilcoxon signed-rank", p, {"statistic": stat}))
    return rows


def _multiclass_rows(ra: TaskResult, rb: TaskResult, boot: Callable[..., tuple]) -> list[ComparisonRow]:
    task, y, k = ra.task, ra.labels, ra.task.num_outputs
    pa, pb = ra.predictions(), rb.predictions()
    ma, mb = ra.metrics(), rb.metrics()
    ci = boot(lambda idx: F.resampled_balanced_accuracy(y, pb, k, idx) - F.resampled_balanced_accuracy(y, pa, k, idx))
    rows = [_row(task, "balanced_accuracy", ra.num_cases, (ma["balanced_accuracy"], mb["balanced_accuracy"]), ci)]
    ca, cb = pa == y, pb == y
    p, a_only, b_only = _mcnemar(ca, cb)
    ci = boot(lambda idx: cb[idx].mean(axis=1) - ca[idx].mean(axis=1))
    detail = {"a_only_correct": float(a_only), "b_only_correct": float(b_only)}
    rows.append(_row(task, "accuracy", ra.num_cases, (ma["accuracy"], mb["accuracy"]), ci, "McNemar exact", p, detail))
    return rows


def _label_rows(ra: TaskResult, rb: TaskResult, boot: Callable[..., tuple]) -> list[ComparisonRow]:
    task, y = ra.task, ra.labels
    pa, pb = ra.probabilities, rb.probabilities
    k = y.shape[1]

    def aucs(p: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.stack([F.resampled_auroc(p[:, j], y[:, j], idx) for j in range(k)], axis=1)

    rows = []
    if k > 1:  # the task's headline: mean AUROC over labels, no DeLong for a mean of AUROCs
        ma, mb = ra.metrics(), rb.metrics()
        ci = boot(lambda idx: F.rows_nanmean(aucs(pb, idx)) - F.rows_nanmean(aucs(pa, idx)))
        rows.append(_row(task, "auroc", ra.num_cases, (ma["auroc"], mb["auroc"]), ci))
    for j in range(k):
        d = delong_test(pa[:, j], pb[:, j], y[:, j])
        ci = boot(
            lambda idx, j=j: F.resampled_auroc(pb[:, j], y[:, j], idx) - F.resampled_auroc(pa[:, j], y[:, j], idx)
        )
        metric = "auroc" if k == 1 else f"auroc_{F.safe_key(task.class_names[j])}"
        detail = {"z": d.z, "std_error": d.std_error}
        rows.append(_row(task, metric, ra.num_cases, (d.auc_a, d.auc_b), ci, "DeLong", d.p, detail))
    return rows


# --------------------------------------------------------------------------- pairing the cases


def _shown(ids: Sequence[str]) -> str:
    head = ", ".join(ids[:_SHOWN_IDS])
    return head + (f", ... ({len(ids)} in all)" if len(ids) > _SHOWN_IDS else "")


def _label_text(task: Task, label: np.ndarray) -> str:
    if task.kind == TaskKind.MULTICLASS:
        return task.class_names[int(label)]
    if task.kind == TaskKind.BINARY:
        return str(int(label[0]))
    return "+".join(n for n, v in zip(task.class_names, label, strict=True) if v > 0.5) or "none"


def _differing_labels(ra: TaskResult, rb: TaskResult, order: np.ndarray) -> list[str]:
    """``case (A: x, B: y)`` for each common case labelled differently (segmentation: empty ground truth)."""
    task = ra.task
    if task.kind == TaskKind.SEGMENTATION:  # masks are not stored; Dice is NaN exactly where the truth is empty
        ea, eb = np.isnan(ra.case_metrics["dice"]), np.isnan(rb.case_metrics["dice"][order])
        out = []
        for i in np.flatnonzero((ea != eb).any(axis=1)):
            where = [
                f"{name} empty in {'A' if ea[i, j] else 'B'} only"
                for j, name in enumerate(task.class_names[1:])
                if ea[i, j] != eb[i, j]
            ]
            out.append(f"{ra.case_ids[i]} (ground truth {', '.join(where)})")
        return out
    la, lb = ra.labels, rb.labels[order]
    differ = la != lb if la.ndim == 1 else (la != lb).any(axis=1)
    return [
        f"{ra.case_ids[i]} (A: {_label_text(task, la[i])}, B: {_label_text(task, lb[i])})"
        for i in np.flatnonzero(differ)
    ]


def _task_problems(ra: TaskResult, rb: TaskResult) -> tuple[list[str], np.ndarray | None]:
    """Why the task's cases cannot be paired (empty when they can), and B's positions in A's case order."""
    problems = []
    for run, r in (("A", ra), ("B", rb)):
        counts: dict[str, int] = {}
        for c in r.case_ids:
            counts[c] = counts.get(c, 0) + 1
        dup = [c for c, n in counts.items() if n > 1]
        if dup:
            problems.append(f"{len(dup)} case ids appear more than once in {run}: {_shown(dup)}")
    if problems:
        return problems, None
    in_b = {c: i for i, c in enumerate(rb.case_ids)}
    set_a = set(ra.case_ids)
    only_a = [c for c in ra.case_ids if c not in in_b]
    only_b = [c for c in rb.case_ids if c not in set_a]
    if only_a:
        problems.append(f"{len(only_a)} of A's {ra.num_cases} cases are not in B: {_shown(only_a)}")
    if only_b:
        problems.append(f"{len(only_b)} of B's {rb.num_cases} cases are not in A: {_shown(only_b)}")
    if only_a or only_b:
        return problems, None
    order = np.array([in_b[c] for c in ra.case_ids], dtype=np.int64)
    differ = _differing_labels(ra, rb, order)
    if differ:
        problems.append(f"{len(differ)} cases have different labels in A and B: {_shown(differ)}")
    return problems, order


def _aligned(r: TaskResult, order: np.ndarray, case_ids: list[str]) -> TaskResult:
    """``r`` with its cases in ``order`` (B in A's case order)."""
    return TaskResult(
        task=r.task,
        case_ids=case_ids,
        probabilities=None if r.probabilities is None else r.probabilities[order],
        labels=None if r.labels is None else r.labels[order],
        case_metrics={k: v[order] for k, v in r.case_metrics.items()},
        threshold=r.threshold,
        class_weights=r.class_weights,
    )


def _pair(a: EvaluationResults, b: EvaluationResults, name_a: str, name_b: str) -> list[tuple[TaskResult, TaskResult]]:
    """Every task of A with B's result in A's case order; one :class:`ComparisonError` with every problem."""
    problems = []
    tasks_b = {t.name: t for t in b.tasks}
    only_a = [t.name for t in a.tasks if t.name not in tasks_b]
    only_b = [n for n in tasks_b if n not in a.results]
    if only_a:
        problems.append(f"tasks only in A: {only_a}")
    if only_b:
        problems.append(f"tasks only in B: {only_b}")
    pairs = []
    case_problems: dict[str, list[str]] = {}
    for task in a.tasks:
        other = tasks_b.get(task.name)
        if other is None:
            continue
        if (task.kind, list(task.class_names)) != (other.kind, list(other.class_names)):
            problems.append(
                f"task '{task.name}' differs: A has {task.kind.value} {list(task.class_names)}, "
                f"B has {other.kind.value} {list(other.class_names)}"
            )
            continue
        found, order = _task_problems(a[task.name], b[task.name])
        for text in found:  # the same problem in several tasks (usually: all of them) is listed once
            case_problems.setdefault(text, []).append(task.name)
        if not found:
            pairs.append((a[task.name], _aligned(b[task.name], order, a[task.name].case_ids)))
    for text, names in case_problems.items():
        problems.append(f"task{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}: {text}")
    if problems:
        raise ComparisonError(
            f"cannot compare {name_a} (A) with {name_b} (B): they were not evaluated on the same tasks and labelled "
            "test cases, so no case-by-case comparison exists:\n  "
            + "\n  ".join(problems)
            + "\nFix: evaluate both runs on the same test split (the same data spec, split settings and "
            "splits.json; e.g. train B with A's splits.json in its output_dir), then compare again."
        )
    return pairs


# --------------------------------------------------------------------------- entry points


def compare_results(
    a: EvaluationResults,
    b: EvaluationResults,
    name_a: str = "A",
    name_b: str = "B",
    n_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    level: str = "case",
) -> Comparison:
    """Compare run B with run A task by task on their shared labelled cases.

    Args:
        a: results of run A (the reference: differences are B - A).
        b: results of run B, on the same tasks and labelled cases (any order).
        name_a: how A is named in messages and outputs (e.g. its folder).
        name_b: the same for B.
        n_resamples: bootstrap replicates per interval.
        alpha: significance level; the intervals cover 1 - alpha.
        seed: bootstrap seed (each task draws from the same seed).
        level: what ``a`` and ``b`` hold per row, for the outputs: ``case``, or ``study`` for study-level
            results (:func:`study_level` makes them).

    Returns:
        The :class:`Comparison`, rows in task order.

    Raises:
        ComparisonError: when the tasks, the case ids or the labels differ (all differences listed).
        ValueError: for ``alpha`` outside (0, 1) or ``n_resamples`` < 1.

    Example::

        comparison = compare_results(load_evaluation("runs/a/eval"), load_evaluation("runs/b/eval"))
        print(comparison.format_table())
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05; got {alpha}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rows: list[ComparisonRow] = []
    for ra, rb in _pair(a, b, name_a, name_b):

        def boot(difference: Callable[[np.ndarray], np.ndarray], n: int = ra.num_cases) -> tuple[float, float, float]:
            return _paired_bootstrap(difference, n, n_resamples, 1.0 - alpha, seed)

        if ra.task.kind == TaskKind.SEGMENTATION:
            rows += _segmentation_rows(ra, rb, boot)
        elif ra.task.kind == TaskKind.MULTICLASS:
            rows += _multiclass_rows(ra, rb, boot)
        else:
            rows += _label_rows(ra, rb, boot)
    adjusted = holm([r.p for r in rows])
    for r, p_holm in zip(rows, adjusted, strict=True):
        r.p_holm = float(p_holm)
        r.significant = bool(r.p < alpha)
        r.significant_holm = bool(p_holm < alpha)
    return Comparison(str(name_a), str(name_b), rows, n_resamples, alpha, seed, level)


def _studies_of(eval_dir: Path, name: str) -> tuple[dict[str, str], str]:
    """``(study_of, aggregate)`` recorded in an evaluation's ``summary.json``; a clear error without them."""
    path = eval_dir / SUMMARY_FILE
    summary = read_json(path, ComparisonError, "evaluate the run again")
    found = studies_from_summary(summary.get("studies") if isinstance(summary, dict) else None, path)
    if found is None:
        raise ComparisonError(
            f"{name} ({path}) has no per-study results: its data spec has no aggregate_by, so its images were "
            "scored one by one. Compare per case (leave out --level study), or evaluate both runs with a spec that "
            "groups images by study (data_specs/README.md, aggregate_by)"
        )
    return found


def study_level(
    a: EvaluationResults,
    b: EvaluationResults,
    studies_a: tuple[Mapping[str, str], str],
    studies_b: tuple[Mapping[str, str], str],
    name_a: str = "A",
    name_b: str = "B",
) -> tuple[EvaluationResults, EvaluationResults]:
    """Both runs' per-image results grouped by study, after checking they pair image by image and study by study.

    Args:
        a: per-image results of run A.
        b: per-image results of run B.
        studies_a: A's ``({case_id: study}, aggregate)`` (its ``summary.json``'s ``studies`` block).
        studies_b: the same for B.
        name_a: how A is named in messages.
        name_b: the same for B.

    Raises:
        ComparisonError: other images or labels (as per case), another aggregation rule, or an image
            in another study.
    """
    _pair(a, b, name_a, name_b)  # the same images and labels, named as a per-case comparison names them
    (of_a, rule_a), (of_b, rule_b) = studies_a, studies_b
    problems = []
    if rule_a != rule_b:
        problems.append(f"A's study probability is the {rule_a} of its images', B's the {rule_b}")
    moved = [f"{c} (A: {s}, B: {of_b.get(c)})" for c, s in of_a.items() if c in of_b and of_b[c] != s]
    if moved:
        problems.append(f"{len(moved)} images belong to other studies in A and B: {_shown(moved)}")
    if problems:
        raise ComparisonError(
            f"cannot compare {name_a} (A) with {name_b} (B) per study:\n  " + "\n  ".join(problems) + "\nFix: "
            "evaluate both runs with the same data spec (the same aggregate_by and aggregate), then compare again."
        )
    return study_results(a, of_a, rule_a).results, study_results(b, of_b, rule_b).results


def resolve_eval_dir(run: str | os.PathLike) -> Path:
    """The evaluation folder of ``run``: ``run/eval`` of a run folder, or ``run`` itself when it holds ``summary.json``.

    Raises:
        FileNotFoundError: when neither exists, saying how to evaluate the run.
    """
    path = Path(run)
    if (path / SUMMARY_FILE).is_file():
        return path
    if (path / "eval" / SUMMARY_FILE).is_file():
        return path / "eval"
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder: give a run folder (the bundle's output_dir, holding eval/) or its eval folder"
        )
    raise FileNotFoundError(
        f"{path} holds no evaluation: neither {path / 'eval' / SUMMARY_FILE} nor {path / SUMMARY_FILE} exists; "
        f"evaluate the run first (medmtl run BUNDLE evaluate --output_dir {path})"
    )


def compare_runs(
    run_a: str | os.PathLike,
    run_b: str | os.PathLike,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    level: str = "case",
) -> Comparison:
    """:func:`compare_results` of two run folders (or evaluation folders), read from disk.

    ``level="study"`` compares per study (:func:`study_level`): both evaluations must have per-study
    results (a ``studies`` block in ``summary.json``, written beside ``studies.csv``).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {list(LEVELS)}, got {level!r}")
    dir_a, dir_b = resolve_eval_dir(run_a), resolve_eval_dir(run_b)
    a, b = load_evaluation(dir_a), load_evaluation(dir_b)
    if level == "study":
        studies = _studies_of(dir_a, "A"), _studies_of(dir_b, "B")
        a, b = study_level(a, b, *studies, str(run_a), str(run_b))
    return compare_results(a, b, str(run_a), str(run_b), n_resamples, alpha, seed, level)


def _run_folder(run: str | os.PathLike) -> Path:
    path = Path(run).resolve()
    return path.parent if path.name == "eval" and (path / SUMMARY_FILE).is_file() else path


def default_out_dir(run_a: str | os.PathLike, run_b: str | os.PathLike) -> Path:
    """``compare_<A>_vs_<B>`` in the working folder, each run named by its path below the two runs' common folder.

    Example: ``runs/x/seed0`` and ``runs/x/seed1`` give ``compare_seed0_vs_seed1``; ``runs/x/seed0``
    and ``runs/y/seed0`` give ``compare_x-seed0_vs_y-seed0``.
    """
    a, b = _run_folder(run_a), _run_folder(run_b)
    common = Path(os.path.commonpath([a, b]))

    def label(path: Path) -> str:
        parts = path.relative_to(common).parts or (path.name or "run",)
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))[:60]

    return Path(f"compare_{label(a)}_vs_{label(b)}")


def write_comparison(comparison: Comparison, out_dir: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``compare.json`` and ``compare.csv`` into ``out_dir`` (created), each atomically.

    A per-study comparison writes ``compare_studies.json`` and ``compare_studies.csv`` instead.

    Raises:
        FileExistsError: when ``out_dir`` already holds that JSON file and ``overwrite`` is false.
    """
    out = Path(out_dir)
    names = (COMPARE_STUDIES_JSON, COMPARE_STUDIES_CSV) if comparison.level == "study" else (COMPARE_JSON, COMPARE_CSV)
    json_path, csv_path = out / names[0], out / names[1]
    if json_path.exists() and not overwrite:
        raise FileExistsError(
            f"{json_path} exists: a comparison was already written there; give another output folder (-o OUT_DIR) "
            "or --overwrite to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(json_path, json.dumps(comparison.to_dict(), indent=2) + "\n")
    atomic_write(csv_path, comparison.csv_text())
    return json_path, csv_path


# --------------------------------------------------------------------------- formatting


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _pvalue(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"
