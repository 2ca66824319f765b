"""Learning curves: the primary metric against the share of labelled training cases, per training mode.

Why: before paying for annotation, users ask how good a model gets with 1, 10 or 50 % of the labels,
and whether unlabelled images (semi-supervised training) or cheap weak labels (weak->strong
fine-tuning) buy back what fewer labels cost. Answering that means many trainings that differ only
in ``label_fraction`` and the mode, so this module runs them and gathers one table and one plot.

How: every run goes through the bundle's own command line, ``python -m monai.bundle run
--config_file "[<the workflow's config layers>]"`` in a subprocess (what ``medmtl run BUNDLE
WORKFLOW`` runs, :func:`medmtl.bundle_layers.bundle_command`), so each run is exactly what a user
would type (its log says how to redo it by hand) and a crash or an out-of-memory kill costs one
point, not the sweep. Per mode and label fraction, the bundle trains into ``<out>/<mode>/<fraction>``
with ``--label_fraction`` (the nested, stratified subsets of :mod:`medmtl.data.label_budget`), then
the ``evaluate`` workflow scores the best checkpoint on the test split and writes
``eval/summary.json``, from which each task's primary metric (:func:`medmtl.metrics.primary_metric`),
its bootstrap interval and ``mean_primary`` are read. The modes (bundle workflows):

- ``supervised``: ``train``.
- ``semi_supervised``: ``semi_supervised`` (the cases whose labels were dropped join the
  unlabelled stream); skipped when the bundle has no such workflow, and a fraction is skipped when
  it leaves no unlabelled case (100 % of the labels and no unlabelled split).
- ``weak_strong``: once, ``pretrain`` (weak labels) into ``<out>/weak_pretrain``; then per
  fraction ``train --pretrained_ckpt <out>/weak_pretrain/models/best.pt``; skipped when the bundle
  has no ``pretrain`` workflow (``pretrain.json``).

Resuming: a run whose ``eval/summary.json`` exists is read, not redone, and a finished training is
not repeated when only its evaluation is missing (delete a run folder to redo it). A killed
training resumes from its last checkpoint through the bundle's own ``resume``. Failed runs are
recorded with the tail of their log and the sweep goes on. Outputs (written atomically):
``learning_curve.{csv,json,md,png}`` in the output folder.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmtl.atomic_io import atomic_write
from medmtl.bundle_layers import BundleLayerError, bundle_command, bundle_dir, config_layers
from medmtl.csv_safety import csv_text

__all__ = [
    "DEFAULT_FRACTIONS",
    "MODES",
    "CurvePoint",
    "CurveRun",
    "LearningCurveResult",
    "override_args",
    "read_primary_metrics",
    "plot_learning_curve",
    "run_learning_curve",
]

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("supervised", "semi_supervised", "weak_strong")
"""Training modes compared on one curve each."""

DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Label fractions of a default sweep (log-spaced, as label budgets usually are)."""

MEAN_PRIMARY = "mean_primary"
"""Pseudo-task name of the mean over tasks of the primary metrics (the checkpoint-selecting score)."""

RESERVED_OVERRIDES = ("label_fraction", "output_dir", "seed", "pretrained_ckpt")
"""Bundle ids the sweep sets itself; giving them as overrides would make runs lie about their point."""

CSV_COLUMNS = ("mode", "fraction", "labelled_cases", "task", "metric", "value", "ci_low", "ci_high")

_MODE_LABELS = {"supervised": "supervised", "semi_supervised": "semi-supervised", "weak_strong": "weak→strong"}
_LOG_TAIL = 4000
_TRAIN_OK = "train.ok"


@dataclass(frozen=True)
class CurvePoint:
    """One task's primary metric of one run (``None`` where the evaluation had no value)."""

    task: str
    metric: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass
class CurveRun:
    """One (mode, label fraction) training + evaluation of the sweep.

    Attributes:
        mode: one of :data:`MODES`.
        fraction: share of the labelled training cases kept.
        run_dir: the bundle's ``output_dir`` of this run.
        status: ``done`` (ran now), ``reused`` (an earlier sweep's result), ``failed``, ``skipped``
            (nothing to run, e.g. semi-supervised without any unlabelled case) or ``planned`` (dry run).
        labelled_cases: labelled training cases the fraction keeps (``None`` when it could not be
            computed, e.g. the data is missing).
        points: primary metric per task, then :data:`MEAN_PRIMARY`.
        commands: the commands (argv lists) this run needs, in order.
        stage: the stage that failed (``pretrain``, ``train``, ``evaluate``, ``read``) or ``None``.
        error: one line on what went wrong, or why the run was skipped.
        log_tail: the end of the failed stage's log.
        log_file: the failed stage's full log.
    """

    mode: str
    fraction: float
    run_dir: Path
    status: str = "planned"
    labelled_cases: int | None = None
    points: list[CurvePoint] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    stage: str | None = None
    error: str | None = None
    log_tail: str | None = None
    log_file: Path | None = None

    @property
    def ok(self) -> bool:
        """True when the run has metrics (ran now or reused)."""
        return self.status in ("done", "reused")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (paths as strings, commands as shell lines)."""
        return {
            "mode": self.mode,
            "fraction": self.fraction,
            "labelled_cases": self.labelled_cases,
            "status": self.status,
            "run_dir": str(self.run_dir),
            "points": [vars(p) for p in self.points],
            "commands": [shlex.join(c) for c in self.commands],
            "stage": self.stage,
            "error": self.error,
            "log_tail": self.log_tail,
            "log_file": None if self.log_file is None else str(self.log_file),
        }


@dataclass
class LearningCurveResult:
    """Everything a sweep did: one :class:`CurveRun` per (mode, fraction), skipped modes, written files."""

    bundle: Path
    output_dir: Path
    fractions: tuple[float, ...]
    modes: tuple[str, ...]
    runs: list[CurveRun] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[CurveRun]:
        """Runs that produced no metrics (dry-run plans excluded)."""
        return [r for r in self.runs if r.status == "failed"]

    def rows(self) -> list[dict[str, Any]]:
        """Long-format table rows (:data:`CSV_COLUMNS`), one per finished run and task."""
        return [
            {
                "mode": run.mode,
                "fraction": run.fraction,
                "labelled_cases": run.labelled_cases,
                "task": p.task,
                "metric": p.metric,
                "value": p.value,
                "ci_low": p.ci_low,
                "ci_high": p.ci_high,
            }
            for run in self.runs
            if run.ok
            for p in run.points
        ]

    def columns(self) -> list[tuple[str, str]]:
        """``(task, metric)`` in the order runs reported them, :data:`MEAN_PRIMARY` last."""
        seen: dict[tuple[str, str], None] = {}
        for run in self.runs:
            for p in run.points:
                if p.task != MEAN_PRIMARY:
                    seen.setdefault((p.task, p.metric), None)
        return [*seen, (MEAN_PRIMARY, MEAN_PRIMARY)] if seen else []

    def to_markdown(self) -> str:
        """A markdown table (one row per mode and fraction) followed by notes on skipped and failed runs."""
        columns = self.columns()
        header = ["mode", "labels", "labelled cases"] + [
            "mean primary" if t == MEAN_PRIMARY else f"{t} ({m})" for t, m in columns
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for run in self.runs:
            cells = [_MODE_LABELS.get(run.mode, run.mode), _percent(run.fraction), _fmt_count(run.labelled_cases)]
            if run.ok:
                by_key = {(p.task, p.metric): p for p in run.points}
                cells += [_fmt_point(by_key.get(key)) for key in columns]
            else:
                cells += [f"{run.status} ({run.stage})" if run.stage else run.status] * len(columns)
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"- {mode}: skipped, {reason}" for mode, reason in self.skipped.items()]
        notes += [
            f"- {run.mode} at {_percent(run.fraction)}: {run.stage} failed, {run.error} (log: {run.log_file})"
            for run in self.failed
        ]
        notes += [
            f"- {run.mode} at {_percent(run.fraction)}: skipped, {run.error}"
            for run in self.runs
            if run.status == "skipped"
        ]
        if columns:
            notes.append("- values: primary metric on the test split [95 % bootstrap interval]")
        return "\n".join(lines + ([""] + notes if notes else [])) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the sweep (the content of ``learning_curve.json``)."""
        return {
            "bundle": str(self.bundle),
            "output_dir": str(self.output_dir),
            "fractions": list(self.fractions),
            "modes": list(self.modes),
            "seed": self.seed,
            "overrides": self.overrides,
            "skipped": self.skipped,
            "runs": [r.to_dict() for r in self.runs],
            "rows": self.rows(),
        }


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _fmt_count(value: int | None) -> str:
    return "–" if value is None else str(value)


def _fmt_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt_point(point: CurvePoint | None) -> str:
    if point is None or point.value is None:
        return "–"
    if point.ci_low is None or point.ci_high is None:
        return _fmt_value(point.value)
    return f"{point.value:.3f} [{point.ci_low:.3f}, {point.ci_high:.3f}]"


def _fraction_dir(fraction: float) -> str:
    """Folder name of a fraction: ``repr`` keeps it readable and distinct (``0.01``, ``1.0``)."""
    return repr(float(fraction))


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _cli_value(value: Any) -> str:
    """An override as a user would type it: strings and paths as is, everything else as a Python literal.

    ``monai.bundle run`` parses its arguments with ``fire``, which reads Python literals, so
    ``[64, 64]``, ``None``, ``True`` and ``0.5`` arrive as a list, ``None``, a bool and a float.
    """
    if isinstance(value, str | os.PathLike):
        return os.fspath(value)
    return repr(value)


def override_args(overrides: Mapping[str, Any] | None = None, tracking: str | None = None) -> list[str]:
    """``overrides`` as the ``--key value`` arguments a user types after a bundle command, then ``--tracking``.

    Example::

        override_args({"epochs": 2, "spatial_size": [32, 32]}, "mlflow")
        # ["--epochs", "2", "--spatial_size", "[32, 32]", "--tracking", "mlflow"]
    """
    args: list[str] = []
    for key, value in (overrides or {}).items():
        args += [f"--{key}", _cli_value(value)]
    if tracking:
        args += ["--tracking", tracking]
    return args


def read_primary_metrics(summary_file: str | os.PathLike) -> list[CurvePoint]:
    """Each task's primary metric (with its bootstrap interval) and ``mean_primary`` from a ``summary.json``.

    The primary metric is :func:`medmtl.metrics.primary_metric` of the task, or the metric the
    evaluation was told to use instead (``settings.primary``), so the curve shows the same number
    that selected the checkpoint.

    Raises:
        ValueError: when the file is not an evaluation summary (no ``tasks`` / ``mean``).
    """
    from medmtl.data.tasks import Task
    from medmtl.metrics import primary_metric

    summary = json.loads(Path(summary_file).read_text())
    if not isinstance(summary, dict) or "tasks" not in summary or "mean" not in summary:
        raise ValueError(f"{summary_file}: not an evaluation summary (expected keys 'tasks' and 'mean')")
    chosen = (summary.get("settings") or {}).get("primary") or {}
    points = []
    for entry in summary["tasks"]:
        task = Task.model_validate(entry)
        metric = chosen.get(task.name) or primary_metric(task)[0]
        ci = (summary.get("ci") or {}).get(task.name) or {}
        if ci.get("metric") == metric:
            point = CurvePoint(
                task.name, metric, _finite(ci.get("value")), _finite(ci.get("low")), _finite(ci.get("high"))
            )
        else:
            point = CurvePoint(task.name, metric, _finite((summary["mean"].get(task.name) or {}).get(metric)))
        points.append(point)
    points.append(CurvePoint(MEAN_PRIMARY, MEAN_PRIMARY, _finite(summary.get(MEAN_PRIMARY))))
    return points


# -- files -------------------------------------------------------------------------------------------


def _csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    return csv_text(CSV_COLUMNS, ({k: row.get(k) for k in CSV_COLUMNS} for row in rows))  # spreadsheet-safe


def plot_learning_curve(result: LearningCurveResult, path: str | os.PathLike) -> Path:
    """One panel per task (and the mean of primaries): metric vs label fraction, log x, one line per mode.

    Shaded bands are the bootstrap intervals where the evaluation gave them. Drawn with
    matplotlib's object API on the Agg canvas (as :mod:`medmtl.metrics.plots`), so it works
    headless and leaves no global figure state behind; saved atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = result.columns()
    if len(columns) == 2:  # one task: its mean of primaries is the same number
        columns = columns[:1]
    panels = max(1, len(columns))
    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.6 * nrows))
    counts = {r.fraction: r.labelled_cases for r in result.runs if r.labelled_cases is not None}
    ticks = list(result.fractions)
    tick_labels = [_percent(f) + (f"\nn={counts[f]}" if f in counts else "") for f in ticks]
    for i in range(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if not columns:
            ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        task, metric = columns[i]
        values: list[float] = []
        for mode in result.modes:
            pts = sorted(
                (r.fraction, p)
                for r in result.runs
                if r.mode == mode and r.ok
                for p in r.points
                if (p.task, p.metric) == (task, metric) and p.value is not None
            )
            if not pts:
                continue
            x = [f for f, _ in pts]
            y = [p.value for _, p in pts]
            (line,) = ax.plot(x, y, marker="o", label=_MODE_LABELS.get(mode, mode))
            low = [math.nan if p.ci_low is None else p.ci_low for _, p in pts]
            high = [math.nan if p.ci_high is None else p.ci_high for _, p in pts]
            if len(x) == 1 and math.isfinite(low[0]) and math.isfinite(high[0]):  # a band needs two points
                ax.errorbar(x, y, yerr=[[y[0] - low[0]], [high[0] - y[0]]], color=line.get_color(), capsize=3)
            elif any(math.isfinite(v) for v in low + high):
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
            values += [v for v in y + low + high if v is not None and math.isfinite(v)]
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels(tick_labels, fontsize=8)
        ax.minorticks_off()
        if values and min(values) >= 0.0 and max(values) <= 1.0:
            ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("labelled training cases (share of labels)")
        ax.set_ylabel(metric)
        ax.set_title("mean of primary metrics" if task == MEAN_PRIMARY else f"{task}: {metric}")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    return atomic_write(Path(path), buffer.getvalue())


def _write_outputs(result: LearningCurveResult) -> None:
    out = result.output_dir
    result.files = {
        "csv": out / "learning_curve.csv",
        "json": out / "learning_curve.json",
        "md": out / "learning_curve.md",
        "png": out / "learning_curve.png",
    }
    atomic_write(result.files["csv"], _csv_text(result.rows()))
    atomic_write(result.files["json"], json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    title = f"# Learning curve: {result.bundle.name}\n\n"
    atomic_write(result.files["md"], title + result.to_markdown())
    plot_learning_curve(result, result.files["png"])


# -- running -----------------------------------------------------------------------------------------


_WORKFLOWS = ("train", "evaluate", "semi_supervised", "pretrain")  # the bundle workflows a sweep runs


@dataclass(frozen=True)
class _Bundle:
    """A bundle's folder and the config layers of each workflow the sweep uses (absent optional ones left out)."""

    root: Path
    layers: dict[str, list[Path]]

    @classmethod
    def find(cls, bundle: str | os.PathLike) -> _Bundle:
        root = bundle_dir(bundle)  # a name or a folder; unknown: BundleLayerError listing the bundles
        layers: dict[str, list[Path]] = {}
        for workflow in _WORKFLOWS:
            try:
                layers[workflow] = config_layers(root, workflow)
            except BundleLayerError:
                if workflow in ("train", "evaluate"):  # the sweep needs both
                    raise
        missing = [str(f) for f in layers["train"] if not f.is_file()]
        if missing:
            raise BundleLayerError(f"{root} is not a bundle the learning curve can run: {', '.join(missing)} missing")
        return cls(root=root, layers=layers)

    def command(self, workflow: str, overrides: Mapping[str, Any], tracking: str | None) -> list[str]:
        """The ``python -m monai.bundle run`` argv of ``workflow`` with ``overrides``, as ``medmtl run`` builds it."""
        return bundle_command(self.root, [workflow], override_args(overrides, tracking))


@dataclass
class _Stage:
    ok: bool
    log_file: Path
    tail: str


def _run_stage(cmd: list[str], run_dir: Path, name: str, cwd: Path) -> _Stage:
    """Run one bundle command with its output in ``<run_dir>/logs/<name>.log`` (the command on its first line)."""
    log_file = run_dir / "logs" / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger.info("  %s (log: %s)", name, log_file)
    with open(log_file, "w") as log:
        log.write(f"$ cd {shlex.quote(str(cwd))} && {shlex.join(cmd)}\n\n")
        log.flush()
        try:
            code = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        except OSError as err:  # the interpreter itself could not start
            log.write(f"\ncould not start the command: {err}\n")
            code = -1
    text = log_file.read_text(errors="replace")
    if code != 0:
        logger.warning("  %s failed with exit code %s; see %s", name, code, log_file)
    return _Stage(code == 0, log_file, text[-_LOG_TAIL:])


def _case_counts(
    config_files: Sequence[Path], overrides: Mapping[str, Any], fraction: float, cwd: Path
) -> tuple[int | None, int | None]:
    """``(labelled training cases, unlabelled cases)`` that a run at ``fraction`` will see.

    Read from the bundle's own ``train_cases`` (and, for semi-supervised configs, ``unlabelled_data``)
    expressions, resolved in-process (a second or two) rather than read back from MLflow, so the
    count is known without tracking and even for runs that fail. The unlabelled count is ``None``
    when the configs define no ``unlabelled_data``. Relative ``data_spec`` / ``dataset_dir`` are
    taken from ``cwd``, where the runs themselves execute.
    """
    from monai.bundle import ConfigParser

    try:
        parser = ConfigParser()
        parser.read_config([str(f) for f in config_files])
        parser.update({**overrides, "label_fraction": fraction})
        for key in ("data_spec", "dataset_dir"):
            value = parser.get(key)
            if isinstance(value, str) and value and value[0] not in "$@%" and not os.path.isabs(value):
                parser[key] = str(cwd / value)
        labelled = len(parser.get_parsed_content("train_cases")[0])
        has_unlabelled = parser.get("unlabelled_data") is not None
        return labelled, len(parser.get_parsed_content("unlabelled_data")) if has_unlabelled else None
    except Exception as err:  # a bad override or missing data: the run itself will report it
        logger.warning("could not count the training cases at %s: %s", _percent(fraction), err)
        return None, None


def _config_ids(config_files: Sequence[Path]) -> set[str]:
    """Top-level ids the merged ``config_files`` define (what an override may set)."""
    from monai.bundle import ConfigParser

    return set(ConfigParser.load_config_files([str(f) for f in config_files]))


def _for_configs(overrides: Mapping[str, Any], ids: set[str]) -> dict[str, Any]:
    """The sweep-wide overrides that these configs define (``a#b`` by its top-level id ``a``).

    Why: a sweep-wide override such as ``semi_supervised_threshold`` belongs to the semi-supervised
    layer only; the bundles refuse an override their configs do not define (a typo would otherwise
    be ignored), so each run gets only its own. Keys defined by no run are refused up front.
    """
    return {k: v for k, v in overrides.items() if k.split("#")[0] in ids}


def _check_arguments(
    fractions: Iterable[float], modes: Iterable[str], overrides: Mapping[str, Any]
) -> tuple[tuple[float, ...], tuple[str, ...]]:
    fracs = sorted({float(f) for f in fractions})
    bad = [f for f in fracs if not 0.0 < f <= 1.0]
    if not fracs or bad:
        raise ValueError(f"label fractions must be in (0, 1], got {list(fractions) if not fracs else bad}")
    chosen = tuple(dict.fromkeys(modes))
    unknown = [m for m in chosen if m not in MODES]
    if not chosen or unknown:
        raise ValueError(f"unknown learning-curve mode(s) {unknown or '(none given)'}; choose from {list(MODES)}")
    reserved = sorted(set(overrides) & set(RESERVED_OVERRIDES))
    if reserved:
        raise ValueError(
            f"overrides {reserved} are set by the learning curve itself per run ({', '.join(RESERVED_OVERRIDES)}); "
            "give the seed as seed= and the fractions as fractions="
        )
    return tuple(fracs), chosen


def run_learning_curve(
    bundle: str | Path,
    output_dir: str | Path,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    modes: Sequence[str] = MODES,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    tracking: str | None = None,
    dry_run: bool = False,
    cwd: str | Path | None = None,
) -> LearningCurveResult:
    """Train and evaluate the bundle at each label fraction in each mode; write the table and the plot.

    Args:
        bundle: bundle name (``ultrasound_mtl``) or folder (``bundles/ultrasound_mtl``); it needs the
            ``train`` and ``evaluate`` workflows.
        output_dir: sweep folder: runs go to ``<output_dir>/<mode>/<fraction>``, results to
            ``learning_curve.{csv,json,md,png}``.
        fractions: label fractions in ``(0, 1]`` (sorted, duplicates dropped).
        modes: any of :data:`MODES`; a mode the bundle has no config for is skipped with a reason in
            ``result.skipped``.
        overrides: extra bundle overrides for every run, e.g. ``{"epochs": 20, "spatial_size": [64, 64]}``
            (not :data:`RESERVED_OVERRIDES`, which the sweep sets).
        seed: the bundle's ``seed``: weights, augmentation and the nested label subsets.
        tracking: passed as ``--tracking`` to every run (e.g. ``"mlflow"``).
        dry_run: only plan: ``result.runs`` hold the commands, nothing is run or written.
        cwd: folder the runs execute in, where the bundle's relative paths (``data_specs/...``,
            the default ``mlflow.db``) resolve; default: the current folder (a source checkout's root).

    Returns:
        The :class:`LearningCurveResult`; ``result.failed`` lists runs that produced no metrics.

    Raises:
        ValueError: for an unknown bundle or one without ``train``/``evaluate`` workflows
            (:class:`~medmtl.bundle_layers.BundleLayerError`), fractions outside ``(0, 1]``, unknown
            modes, reserved overrides or overrides no workflow's config defines.

    Example::

        result = run_learning_curve("ultrasound_mtl", "runs/lc_busi", fractions=(0.1, 1.0),
                                    overrides={"epochs": 20, "spatial_size": [96, 96]})
        print(result.to_markdown())
    """
    spec = _Bundle.find(bundle)
    overrides = dict(overrides or {})
    fracs, chosen = _check_arguments(fractions, modes, overrides)
    out = Path(output_dir).resolve()
    workdir = Path(cwd).resolve() if cwd is not None else Path.cwd()
    result = LearningCurveResult(spec.root, out, fracs, chosen, seed=seed, overrides=overrides)
    shared = {**overrides, "seed": seed}
    counts: dict[tuple[str, float], tuple[int | None, int | None]] = {}
    ids = {workflow: _config_ids(files) for workflow, files in spec.layers.items()}
    undefined = sorted(k for k in overrides if not any(k.split("#")[0] in found for found in ids.values()))
    if undefined:
        raise ValueError(
            f"overrides {undefined} are defined by none of the bundle's configs ({', '.join(ids)} workflows of "
            f"{spec.root}): check their spelling (`medmtl run --print {spec.root.name} train` shows the files)"
        )

    for mode in chosen:
        workflow = "train"
        extra: dict[str, Any] = {}
        pre_cmd: list[str] | None = None
        pretrain_failure: _Stage | None = None
        if mode == "semi_supervised":
            if "semi_supervised" not in spec.layers:
                result.skipped[mode] = f"the bundle {spec.root} has no semi_supervised workflow (semi_supervised.json)"
                logger.warning("%s: %s", mode, result.skipped[mode])
                continue
            workflow = "semi_supervised"
        if mode == "weak_strong":
            if "pretrain" not in spec.layers:
                result.skipped[mode] = (
                    f"the bundle {spec.root} has no pretrain workflow (pretrain.json: weak-label pre-training)"
                )
                logger.warning("%s: %s", mode, result.skipped[mode])
                continue
            pre_dir = out / "weak_pretrain"
            ckpt = pre_dir / "models" / "best.pt"
            pre_cmd = spec.command(
                "pretrain", {**_for_configs(shared, ids["pretrain"]), "output_dir": pre_dir}, tracking
            )
            extra = {"pretrained_ckpt": ckpt}
            if dry_run:
                logger.info("weak_strong: would pre-train on weak labels: %s", shlex.join(pre_cmd))
            elif (pre_dir / "logs" / _TRAIN_OK).is_file() and ckpt.is_file():
                logger.info("weak_strong: reusing the weak-label pre-training in %s", pre_dir)
            else:
                logger.info("weak_strong: pre-training on weak labels into %s", pre_dir)
                stage = _run_stage(pre_cmd, pre_dir, "pretrain", workdir)
                if stage.ok and ckpt.is_file():
                    atomic_write(pre_dir / "logs" / _TRAIN_OK, "ok\n")
                else:
                    pretrain_failure = stage

        for fraction in fracs:
            run_dir = out / mode / _fraction_dir(fraction)
            per_run = {**shared, "label_fraction": fraction, "output_dir": run_dir}
            train_cmd = spec.command(workflow, {**_for_configs(per_run, ids[workflow]), **extra}, tracking)
            eval_cmd = spec.command("evaluate", _for_configs(per_run, ids["evaluate"]), tracking)
            run = CurveRun(mode, fraction, run_dir, commands=[train_cmd, eval_cmd])
            if pre_cmd is not None:
                run.commands.insert(0, pre_cmd)
            result.runs.append(run)
            key = (workflow, fraction)
            if key not in counts:
                layers = spec.layers[workflow]
                counts[key] = _case_counts(layers, _for_configs(shared, ids[workflow]), fraction, workdir)
            run.labelled_cases, unlabelled = counts[key]
            if unlabelled == 0:  # e.g. 100 % of the labels and no unlabelled split: FixMatch has no input
                run.status = "skipped"
                run.error = "no unlabelled case at this fraction (every training case keeps its labels)"
                logger.warning("%s at %s labels: skipped, %s", mode, _percent(fraction), run.error)
                continue
            if dry_run:
                continue
            logger.info("%s at %s labels (%s cases): %s", mode, _percent(fraction), run.labelled_cases, run_dir)
            _execute(run, train_cmd, eval_cmd, workdir, pretrain_failure)

    if not dry_run:
        _write_outputs(result)
    return result


def _execute(run: CurveRun, train_cmd: list[str], eval_cmd: list[str], cwd: Path, pretrain: _Stage | None) -> None:
    """Train (unless done), evaluate (unless done) and read the summary of one run, recording any failure."""
    summary = run.run_dir / "eval" / "summary.json"

    def fail(stage: str, error: str, log: _Stage | None = None) -> None:
        run.status, run.stage, run.error = "failed", stage, error
        if log is not None:
            run.log_tail, run.log_file = log.tail, log.log_file

    if pretrain is not None:
        fail("pretrain", "the weak-label pre-training failed, so there is no checkpoint to start from", pretrain)
        return
    if summary.is_file():
        run.status = "reused"
        logger.info("  reusing %s", summary)
    else:
        marker = run.run_dir / "logs" / _TRAIN_OK
        if not marker.is_file():
            stage = _run_stage(train_cmd, run.run_dir, "train", cwd)
            if not stage.ok:
                fail("train", "the training command exited with an error", stage)
                return
            atomic_write(marker, "ok\n")
        stage = _run_stage(eval_cmd, run.run_dir, "evaluate", cwd)
        if not stage.ok or not summary.is_file():
            error = "the evaluation command exited with an error" if not stage.ok else f"no {summary} written"
            fail("evaluate", error, stage)
            return
        run.status = "done"
    try:
        run.points = read_primary_metrics(summary)
    except (OSError, ValueError, KeyError, TypeError) as err:
        fail("read", f"could not read {summary}: {err}")
