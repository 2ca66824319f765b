"""Evaluator handler that writes the evaluation report when an evaluation completes.

Keeps the bundle's ``evaluate.json`` declarative: list this handler and the report (summary.json,
predictions.npz, figures, report.html) appears in the output folder, with sample overlays of
predicted vs true masks collected on the fly and the training curves if the run saved them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medmtl.data.tasks import Task, TaskKind, as_tasks, present_key
from medmtl.metrics.calibration import CalibrationRecord, read_calibration
from medmtl.metrics.decisions import Decisions, with_decisions
from medmtl.metrics.functional import primary_metric
from medmtl.metrics.handler import MultiTaskMetricHandler
from medmtl.metrics.report import Overlay, write_report
from medmtl.metrics.studies import AGGREGATES

__all__ = ["EvaluationReportHandler"]

logger = logging.getLogger(__name__)


class EvaluationReportHandler:
    """Write ``report.html`` + ``summary.json`` from a :class:`MultiTaskMetricHandler` at the end of evaluation.

    Args:
        tasks: the tasks.
        metric: the evaluator's metric handler (holds per-case results).
        output_dir: report folder.
        num_overlays: sample overlays per segmentation task (labelled cases, in evaluation order).
        image_key: output key of the network input.
        history_file: JSON list of per-epoch metric records written by training (``EpochProgress``).
        n_resamples: bootstrap resamples for the confidence intervals.
        title: report title.
        studies: ``{case_id: study id}`` (``CaseTable.study_of`` of the evaluated split): the report also
            scores image-level tasks per study (``studies.csv``); ``None``: per image only.
        study_aggregate: ``mean`` or ``max`` of a study's image probabilities (the spec's ``aggregate``).
        decisions: the model's ``decisions.json`` (path or :class:`~medmtl.metrics.Decisions`, chosen on
            validation / out-of-fold predictions): the report's decisions use its thresholds instead of 0.5.
        calibration: the model's ``calibration.json`` (path or :class:`~medmtl.metrics.CalibrationRecord`):
            the report shows calibration before and after its temperatures.
    """

    def __init__(
        self,
        tasks: Sequence[Task | Mapping[str, Any]],
        metric: MultiTaskMetricHandler,
        output_dir: str | os.PathLike,
        num_overlays: int = 6,
        image_key: str = "image",
        history_file: str | os.PathLike | None = None,
        n_resamples: int = 1000,
        title: str = "medmtl evaluation",
        studies: Mapping[str, str] | None = None,
        study_aggregate: str = "mean",
        decisions: Decisions | str | os.PathLike | None = None,
        calibration: CalibrationRecord | str | os.PathLike | None = None,
    ) -> None:
        self.tasks = list(as_tasks(tasks, owner="EvaluationReportHandler"))
        self.metric = metric
        self.output_dir = Path(output_dir)
        self.num_overlays = num_overlays
        self.image_key = image_key
        self.history_file = Path(history_file) if history_file else None
        self.n_resamples = n_resamples
        self.title = title
        if study_aggregate not in AGGREGATES:  # checked when the bundle is parsed, not after the evaluation
            raise ValueError(f"study_aggregate must be one of {list(AGGREGATES)}, got {study_aggregate!r}")
        self.studies = dict(studies) if studies is not None else None
        self.study_aggregate = study_aggregate
        self.decisions = (
            Decisions.load(decisions, self.tasks) if isinstance(decisions, str | os.PathLike) else decisions
        )
        self.calibration = (
            read_calibration(calibration, self.tasks) if isinstance(calibration, str | os.PathLike) else calibration
        )
        self.overlays: list[Overlay] = []
        self.report_path: Path | None = None

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.write, Events.COMPLETED):
            return
        engine.add_event_handler(Events.STARTED, lambda e: self.overlays.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect_overlays)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect_overlays(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for task in self.tasks:
            if task.kind != TaskKind.SEGMENTATION:
                continue
            have = sum(o.task == task.name for o in self.overlays)
            for sample in outputs:
                if have >= self.num_overlays:
                    break
                if not sample.get(present_key(task.name)) or f"pred_{task.name}" not in sample:
                    continue
                image = np.asarray(torch.as_tensor(sample[self.image_key]).detach().cpu().float())[0]
                truth = np.asarray(torch.as_tensor(sample[f"label_{task.name}"]).detach().cpu())[0]
                pred = np.asarray(torch.as_tensor(sample[f"pred_{task.name}"]).detach().cpu().argmax(0))
                if _read_by_pil(sample.get(self.image_key)):  # MONAI's PIL reader gives (W, H): show (H, W)
                    image, truth, pred = image.T, truth.T, pred.T
                self.overlays.append(Overlay(str(sample.get("case_id", have)), image, truth, pred, task.name))
                have += 1

    def write(self, engine: Engine) -> Path:
        history = None
        if self.history_file is not None and self.history_file.is_file():
            records = json.loads(self.history_file.read_text())  # one dict per epoch
            wanted = {"train_loss_epoch", "val_mean_primary"}
            wanted |= {f"train_loss/{t.name}" for t in self.tasks} | {f"train_weight/{t.name}" for t in self.tasks}
            wanted |= {f"val_{t.name}/{primary_metric(t)[0]}" for t in self.tasks}
            keys = sorted({k for r in records for k in r} & wanted)
            history = {k: [r.get(k, float("nan")) for r in records] for k in keys}
        self.report_path = write_report(
            with_decisions(self.metric.results(), self.decisions),
            self.output_dir,
            tasks=self.tasks,
            history=history,
            overlays=self.overlays,
            n_resamples=self.n_resamples,
            title=self.title,
            studies=self.studies,
            study_aggregate=self.study_aggregate,
            calibration=self.calibration,
        )
        logger.info("evaluation report: %s", self.report_path)
        return self.report_path


def _read_by_pil(image: Any) -> bool:
    """True for 2D images that MONAI's PIL reader loaded (stored transposed, as (W, H))."""
    meta = getattr(image, "meta", None) or {}
    name = str(meta.get("filename_or_obj", "")).lower()
    return getattr(image, "ndim", 0) == 3 and name.endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"))
