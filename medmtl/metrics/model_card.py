"""``MODEL_CARD.md``: what an evaluated model is, what it was trained and tested on, how well, and its limits.

Why: a model leaves the lab as a folder of weights; whoever decides whether to use it (a radiologist,
a hospital's AI committee) needs the intended use, the data, the test figures with their
uncertainty, the decision thresholds, the calibration and the cases it gets wrong, in one page that
reads without medmtl (the model-card practice of Mitchell et al., 2019). Everything here is read from
what the run already wrote (its record, the bundle's metadata, the evaluation's ``summary.json``):
nothing is measured twice, and the card cannot disagree with the report.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from medmtl.atomic_io import atomic_write

__all__ = ["MODEL_CARD_FILE", "ModelCardHandler", "model_card", "write_model_card"]

logger = logging.getLogger(__name__)

MODEL_CARD_FILE = "MODEL_CARD.md"
_FAILURES_PER_TASK = 5


def _number(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def _finite(value: Any) -> bool:
    """A number that is not NaN (``summary.json`` writes NaN as ``null`` or ``NaN``)."""
    return isinstance(value, int | float) and not math.isnan(value)


def _task_kind(task: Mapping[str, Any]) -> str:
    classes = task.get("classes") or []
    return f"{task['kind']}, classes {', '.join(map(str, classes))}" if classes else str(task["kind"])


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _metrics_table(summary: Mapping[str, Any]) -> list[str]:
    rows = ["| task | kind | cases | primary metric | value [95% CI] | other figures |", "|---|---|---|---|---|---|"]
    kinds = {t["name"]: t["kind"] for t in summary.get("tasks", [])}
    others = {
        "segmentation": ("iou", "hd95"),
        "binary": ("sensitivity", "specificity", "accuracy"),
        "multiclass": ("auroc", "accuracy", "kappa"),
        "multilabel": ("sensitivity", "specificity"),
    }
    for name, ci in summary.get("ci", {}).items():
        mean = summary.get("mean", {}).get(name, {})
        extra = ", ".join(f"{k} {_number(mean[k])}" for k in others.get(kinds.get(name, ""), ()) if k in mean)
        value = f"{_number(ci.get('value'))} [{_number(ci.get('low'))}, {_number(ci.get('high'))}]"
        cases = summary.get("counts", {}).get(name, {}).get("labelled", "n/a")
        rows.append(f"| {name} | {kinds.get(name, '')} | {cases} | {ci.get('metric')} | {value} | {extra} |")
    return rows


def _decisions(summary: Mapping[str, Any], decisions_path: str | None) -> list[str]:
    settings = summary.get("settings", {})
    lines = []
    for task, threshold in settings.get("threshold", {}).items():
        values = threshold if isinstance(threshold, list) else [threshold]
        lines.append(f"- {task}: positive at probability >= {' / '.join(_number(v) for v in values)}")
    for task, weights in settings.get("class_weights", {}).items():
        lines.append(
            f"- {task}: argmax after a prior correction (class weights {', '.join(_number(w) for w in weights)})"
        )
    kinds = {t["name"]: t["kind"] for t in summary.get("tasks", [])}
    for task, kind in kinds.items():
        if kind == "multiclass" and task not in settings.get("class_weights", {}):
            lines.append(f"- {task}: the most probable class (argmax)")
    where = (
        f"chosen on validation / out-of-fold predictions (`{Path(decisions_path).name}`), never on the test cases"
        if decisions_path
        else "the defaults (0.5 for binary tasks): no decisions were chosen on validation predictions"
    )
    return [f"Decisions: {where}.", "", *lines]


def _calibration(summary: Mapping[str, Any]) -> list[str]:
    block = summary.get("calibration") or {}
    if not block:
        return ["Not measured (no image-level task)."]
    rows = ["| task | ECE | Brier | after temperature scaling (T): ECE / Brier |", "|---|---|---|---|"]
    for task, entry in block.items():
        after = entry.get("temperature")
        later = (
            f"T={_number(after.get('value'), 2)}: {_number(after.get('ece'))} / {_number(after.get('brier'))}"
            if after
            else "not fitted"
        )
        rows.append(f"| {task} | {_number(entry.get('ece'))} | {_number(entry.get('brier'))} | {later} |")
    return rows


def _failures(summary: Mapping[str, Any]) -> list[str]:
    """The worst test cases per task: lowest Dice; wrong decisions made with the highest confidence."""
    kinds = {t["name"]: t["kind"] for t in summary.get("tasks", [])}
    per_case = summary.get("metric_per_case", [])
    lines: list[str] = []
    for task, kind in kinds.items():
        entries = [(c["case_id"], c["metrics"][task]) for c in per_case if task in c.get("metrics", {})]
        if kind == "segmentation":
            scored = [(cid, float(m["dice"])) for cid, m in entries if _finite(m.get("dice"))]
            worst = sorted(scored, key=lambda x: x[1])[:_FAILURES_PER_TASK]
            shown = ", ".join(f"{_cell(cid)} (Dice {_number(d)})" for cid, d in worst)
            lines.append(f"- {task}, lowest Dice: {shown or 'none'}")
        elif kind in ("binary", "multiclass"):
            wrong = []
            for cid, m in entries:
                if m.get("prediction") == m.get("label"):
                    continue
                p = m.get("probability")
                confidence = max(p.values()) if isinstance(p, Mapping) else max(float(p), 1 - float(p))
                wrong.append((cid, confidence, m.get("label"), m.get("prediction")))
            wrong.sort(key=lambda x: -x[1])
            shown = ", ".join(
                f"{_cell(cid)} (label {lab}, called {pred} with confidence {_number(c, 2)})"
                for cid, c, lab, pred in wrong[:_FAILURES_PER_TASK]
            )
            lines.append(f"- {task}, {len(wrong)} wrong; most confident errors: {shown or 'none'}")
    return lines or ["- none scored"]


def _limits(summary: Mapping[str, Any], record: Mapping[str, Any], metadata: Mapping[str, Any]) -> list[str]:
    lines = []
    counts = [int(v.get("labelled", 0)) for v in summary.get("counts", {}).values()]
    if counts:
        lines.append(
            f"- Tested on {min(counts)}-{max(counts)} labelled cases of one split: the 95% intervals above are "
            "the uncertainty of these figures; another hospital, device or population may do worse."
        )
    split = record.get("training", {}).get("split_counts")
    if split:
        lines.append(
            f"- Trained on the {split.get('train', 'n/a')} training cases of one dataset ({record.get('training', {}).get('data_spec', 'n/a')})."
        )
    for task, entry in (summary.get("uncertainty") or {}).items():
        lines.append(
            f"- {task}: error rate {_number(entry.get('error_rate'))}; keeping the 80% most certain cases it is "
            f"{_number(entry.get('error_rate_at_coverage', {}).get('80%'))} (per-case entropy in predictions.csv)."
        )
    if metadata.get("intended_use"):
        lines.append(f"- {metadata['intended_use']}")
    return lines


def model_card(
    summary: Mapping[str, Any],
    record: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    checkpoint: str | None = None,
    split: str | None = None,
    decisions_path: str | None = None,
    calibration_path: str | None = None,
) -> str:
    """The card's Markdown from an evaluation's ``summary.json``, the run record and the bundle metadata."""
    record, metadata = dict(record or {}), dict(metadata or {})
    training = record.get("training", {})
    tasks = summary.get("tasks", [])
    title = metadata.get("name") or record.get("bundle") or "medmtl model"
    out = [f"# Model card: {title}", ""]
    out += [
        f"Written by medmtl on {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from the "
        f"evaluation of `{Path(checkpoint).name if checkpoint else 'the model'}` on the {split or 'test'} split.",
        "",
    ]
    out += ["## Intended use", ""]
    out += [metadata.get("task", ""), "", metadata.get("intended_use", "Research only; not for clinical use."), ""]
    if metadata.get("description"):
        out += [metadata["description"], ""]
    out += ["## Tasks", ""]
    out += [f"- **{t['name']}** ({_task_kind(t)}): {t.get('description') or ''}" for t in tasks]
    out += ["", "## Data", ""]
    out += [f"- Data spec: `{training.get('data_spec', 'n/a')}`; source: {metadata.get('data_source', 'n/a')}"]
    if training.get("split_counts"):
        out += [f"- Split (cases): {', '.join(f'{k} {v}' for k, v in training['split_counts'].items())}"]
    out += [f"- Evaluated: the {split or 'test'} split, never used for training, thresholds or temperatures"]
    out += ["", "## Model and training", ""]
    keys = (
        "network",
        "backbone",
        "sharing",
        "weighting",
        "epochs",
        "batch_size",
        "learning_rate",
        "spatial_size",
        "seed",
        "plan",
    )
    out += [f"- {k}: {training[k]}" for k in keys if training.get(k) is not None]
    out += ["", "## Results on the test split", ""]
    out += _metrics_table(summary)
    out += ["", "## Decisions", ""]
    out += _decisions(summary, decisions_path)
    out += ["", "## Calibration", ""]
    if calibration_path:
        out += [
            f"Temperatures from `{Path(calibration_path).name}` (fitted on validation / out-of-fold predictions).",
            "",
        ]
    out += _calibration(summary)
    out += ["", "## Failure cases", ""]
    out += _failures(summary)
    out += ["", "## Limits", ""]
    out += _limits(summary, record, metadata)
    versions = record.get("versions") or {}
    out += ["", "## Versions", ""]
    out += [f"- {k}: {v}" for k, v in versions.items()] or ["- not recorded"]
    if metadata.get("version"):
        out += [f"- bundle {record.get('bundle', '')}: {metadata['version']}"]
    if metadata.get("references"):
        out += ["", "## References", ""] + [f"- {r}" for r in metadata["references"]]
    return "\n".join(out) + "\n"


def write_model_card(eval_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """``eval_dir/MODEL_CARD.md`` from ``eval_dir/summary.json`` (see :func:`model_card` for ``kwargs``)."""
    eval_dir = Path(eval_dir)
    summary = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
    return atomic_write(eval_dir / MODEL_CARD_FILE, model_card(summary, **kwargs))


class ModelCardHandler:
    """Evaluator handler writing ``MODEL_CARD.md`` next to the report when the evaluation completes.

    List it after :class:`~medmtl.metrics.EvaluationReportHandler` (it reads the ``summary.json``
    that handler writes) and before the handler logging the evaluation folder to MLflow.

    Args:
        eval_dir: the evaluation folder.
        record: the run record the weights were trained with (``RunRecord.record``).
        metadata: the bundle's ``metadata.json`` content.
        checkpoint, split, decisions_path, calibration_path: what the evaluation used.
    """

    def __init__(
        self,
        eval_dir: str | os.PathLike,
        record: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        checkpoint: str | None = None,
        split: str | None = None,
        decisions_path: str | None = None,
        calibration_path: str | None = None,
    ) -> None:
        self.eval_dir = Path(eval_dir)
        self.options = {
            "record": record,
            "metadata": metadata,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "split": split,
            "decisions_path": None if decisions_path is None else str(decisions_path),
            "calibration_path": None if calibration_path is None else str(calibration_path),
        }

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.write, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.write)

    def write(self, _engine: Engine | None = None) -> Path | None:
        try:
            path = write_model_card(self.eval_dir, **self.options)
        except (OSError, ValueError, KeyError, TypeError) as err:  # the report is written: keep it and go on
            logger.error("model card not written (%s: %s); the evaluation report is complete", type(err).__name__, err)
            return None
        logger.info("model card: %s", path)
        return path
