"""What a user sees while a run goes: a progress bar per epoch and one readable line per epoch.

A radiologist running a bundle wants to know, without opening MLflow, whether every task is
learning: the line shows the total loss, each task's loss and weight, and the latest validation
figures with the best so far. The bar is tqdm (through ignite's ``ProgressBar``), shown only on a
terminal so CI logs stay clean.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from medmtl.atomic_io import atomic_write
from medmtl.data.tasks import as_tasks
from medmtl.metrics import primary_metric

__all__ = ["BatchProgress", "EpochProgress", "log_run_summary", "run_summary"]

logger = logging.getLogger("medmtl")


def _loss_of(output: Any) -> dict[str, float]:
    first = output[0] if isinstance(output, list) and output else output
    value = first.get("loss") if isinstance(first, Mapping) else None
    return {"loss": float(value)} if value is not None else {}


def _fmt(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "nan" if math.isnan(number) else f"{number:.4g}"


class BatchProgress:
    """Progress bar over the batches of an evaluation or inference run (terminal only).

    Args:
        desc: the bar's label.
        bar: ``None`` shows the bar only when stderr is a terminal.
    """

    def __init__(self, desc: str = "predicting", bar: bool | None = None) -> None:
        self.desc = desc
        self.bar = sys.stderr.isatty() if bar is None else bar

    def attach(self, engine: Engine) -> None:
        if self.bar:
            ProgressBar(desc=self.desc, persist=True).attach(engine)


class EpochProgress:
    """Progress bar over iterations (terminal only) and an INFO line per epoch.

    Args:
        tasks: the tasks (their primary validation metric is shown).
        evaluator: the validation engine, whose latest metrics are shown (optional).
        bar: ``None`` shows the bar only when stderr is a terminal.
        history_file: JSON file updated every epoch with one record of scalars per epoch (training
            losses, task weights, validation metrics), read by the evaluation report's curves.

    Given to a :class:`medmtl.engines.ResumableCheckpoint` as its ``history``, the records are kept
    inside ``last.pt`` and the file is written only after ``last.pt`` (:meth:`commit`): after any
    failure it never lists an epoch ``last.pt`` does not hold, and a resumed run rewrites it from
    ``last.pt``. Otherwise it is written at the end of each epoch.
    """

    resumes_without_state = True  # a last.pt written before the history was part of it

    def __init__(
        self,
        tasks: Sequence[Any],
        evaluator: Engine | None = None,
        bar: bool | None = None,
        history_file: str | Path | None = None,
    ) -> None:
        self.tasks = list(as_tasks(tasks, owner=type(self).__name__))
        self.evaluator = evaluator
        self.bar = sys.stderr.isatty() if bar is None else bar
        self.history_file = Path(history_file) if history_file else None
        self.best: tuple[float, int] | None = None
        self.committed_by_checkpoint = False  # set by the ResumableCheckpoint this is the history of
        self._records: list[dict[str, Any]] | None = None
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.epoch_completed, Events.EPOCH_COMPLETED):
            return
        self._engine = engine
        if self.bar:
            ProgressBar(persist=False).attach(engine, output_transform=_loss_of)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_completed(self, engine: Engine) -> None:
        metrics = engine.state.metrics
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}"]
        loss = _loss_of(engine.state.output).get("loss")
        if loss is not None:
            parts.append(f"loss {_fmt(loss)}")
        task_parts = []
        for task in self.tasks:
            key = f"train_loss/{task.name}"
            if key in metrics:
                weight = metrics.get(f"train_weight/{task.name}")
                task_parts.append(
                    f"{task.name} {_fmt(metrics[key])}" + (f" (w {_fmt(weight)})" if weight is not None else "")
                )
        if task_parts:
            parts.append("train " + ", ".join(task_parts))
        if self.evaluator is not None and self.evaluator.state.metrics:
            val = self.evaluator.state.metrics
            shown = []
            for task in self.tasks:
                name, _ = primary_metric(task)
                if f"{task.name}/{name}" in val:
                    shown.append(f"{task.name}/{name} {_fmt(val[f'{task.name}/{name}'])}")
            score = val.get("mean_primary")
            if score is not None and not math.isnan(float(score)):
                if self.best is None or float(score) > self.best[0]:
                    self.best = (float(score), engine.state.epoch)
                shown.append(f"mean {_fmt(score)} (best {_fmt(self.best[0])} @ {self.best[1]})")
            parts.append("val " + ", ".join(shown))
        logger.info(" | ".join(parts))
        if self.history_file is not None:
            self._record(engine)
            if not self.committed_by_checkpoint:
                self.commit()

    def _read_file(self) -> list[dict[str, Any]]:
        """The records of an existing history file; a damaged one is replaced (with a warning)."""
        if self.history_file is None or not self.history_file.is_file():
            return []
        try:
            records = json.loads(self.history_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            logger.warning(
                "%s cannot be read (%s): it is written again from this run's records", self.history_file, err
            )
            return []
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            logger.warning(
                "%s is not a list of epoch records: it is written again from this run's records", self.history_file
            )
            return []
        return records

    def _record(self, engine: Engine) -> None:
        """One record per epoch; a resumed run replaces the epochs it redoes."""
        if self._records is None:
            self._records = self._read_file()
        epoch = engine.state.epoch
        record = {"epoch": epoch}
        record.update({k: _finite(v) for k, v in engine.state.metrics.items() if isinstance(v, int | float)})
        if self.evaluator is not None:
            val = self.evaluator.state.metrics
            record.update({f"val_{k}": _finite(v) for k, v in val.items() if isinstance(v, int | float)})
        self._records = [r for r in self._records if r.get("epoch", 0) < epoch] + [record]

    def commit(self) -> None:
        """Write the records to the history file (atomically: a temp file, then a rename)."""
        if self.history_file is None or self._records is None:
            return
        atomic_write(self.history_file, json.dumps(self._records))

    def state_dict(self) -> dict[str, Any]:
        """The records so far (saved in ``last.pt`` by :class:`medmtl.engines.ResumableCheckpoint`)."""
        return {"records": list(self._records or [])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take the records of ``last.pt`` and rewrite the history file to match them.

        An empty ``state`` (a ``last.pt`` written before the history was part of it) keeps the file's
        records up to the resumed epoch.
        """
        if "records" in state:
            self._records = [dict(r) for r in state["records"]]
        else:
            epoch = self._engine.state.epoch if self._engine is not None else 0
            self._records = [r for r in self._read_file() if r.get("epoch", 0) <= epoch]
        self.commit()


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def run_summary(trainer: Engine, evaluator: Engine | None, ckpt_dir: str | Path) -> dict[str, Any]:
    """Where a finished run left its results, as a dict (also what :func:`log_run_summary` prints)."""
    ckpt_dir = Path(ckpt_dir)
    summary: dict[str, Any] = {
        "epochs": trainer.state.epoch,
        "last_checkpoint": str(ckpt_dir / "last.pt"),
        "best_checkpoint": str(ckpt_dir / "best.pt") if (ckpt_dir / "best.pt").is_file() else None,
    }
    if evaluator is not None:
        ran = getattr(evaluator.state, "best_metric_epoch", -1) not in (-1, None)  # -1: never validated
        summary["best_metric"] = evaluator.state.best_metric if ran else None
        summary["best_metric_epoch"] = evaluator.state.best_metric_epoch if ran else None
        summary["last_validation"] = {k: v for k, v in evaluator.state.metrics.items() if isinstance(v, int | float)}
    return summary


def log_run_summary(trainer: Engine, evaluator: Engine | None, ckpt_dir: str | Path) -> dict[str, Any]:
    """Log the run summary at the end of a bundle's ``finalize``."""
    summary = run_summary(trainer, evaluator, ckpt_dir)
    logger.info(
        "training finished after %d epochs; best mean primary metric %s at epoch %s; checkpoints: %s, %s",
        summary["epochs"],
        _fmt(summary.get("best_metric")),
        summary.get("best_metric_epoch"),
        summary["last_checkpoint"],
        summary["best_checkpoint"],
    )
    return summary
