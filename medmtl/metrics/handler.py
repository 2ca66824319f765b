"""``MultiTaskMetricHandler``: every task's metrics on an evaluator, plus the key metric.

One ignite ``Metric`` for all tasks rather than one MONAI ``IgniteMetricHandler`` per metric:
``IgniteMetricHandler`` hands its metric only ``(y_pred, y)`` (no presence flags, no case ids)
and records only the first value of ``aggregate()``, while a multi-task evaluation needs
absent cases skipped per task, a dozen values per task and one checkpoint-selecting score. The
handler keeps one :class:`~medmtl.metrics.cumulative.TaskMetric` (a MONAI ``Cumulative``, so DDP
gathering is MONAI's) per task, and at the end of each evaluation writes

- ``engine.state.metrics["<task>/<metric>"]`` for every score of every task (slash-separated,
  as MLflow accepts), and ``engine.state.metrics[name]`` = mean of the tasks' primary metrics
  (the value :meth:`compute` returns, so ``SupervisedEvaluator(key_val_metric={name: handler})``
  selects checkpoints on it);
- ``engine.state.metric_details["<task>/<field>"]``: per-sample tensors (NaN rows for absent
  samples), as MONAI's ``IgniteMetricHandler`` does with ``save_details``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from ignite.metrics.metric import EpochWise, MetricUsage, reinit__is_reduced

from medmtl.data.tasks import Task, as_tasks
from medmtl.metrics import functional as F
from medmtl.metrics.cumulative import TaskMetric, as_samples, update_from_samples
from medmtl.metrics.postprocessing import Postprocessing, PostprocessingOp, as_postprocessing, default_candidates
from medmtl.metrics.results import EvaluationResults, mean_primary

__all__ = ["MultiTaskMetricHandler", "KEY_METRIC"]

logger = logging.getLogger(__name__)

#: default name of the checkpoint-selecting score.
KEY_METRIC = "mean_primary"


class MultiTaskMetricHandler(Metric):
    """Per-task metrics of a multi-task evaluator, skipping cases without a label.

    Args:
        tasks: the tasks (``Task`` objects or their dicts, as bundle configs write them).
        output_transform: maps ``engine.state.output`` to what :meth:`update` takes: a list of
            per-sample dicts with ``pred_<task>``, ``label_<task>``, ``<task>_present``,
            ``case_id`` (the decollated, flattened evaluator output), or one dict of batch-first
            values. Default: the output as is.
        threshold: sigmoid probability at or above which a binary / multilabel case is positive.
        seg_metrics: segmentation scores (subset of ``dice, iou, hd95, precision, recall``).
        hd_percentile: Hausdorff distance percentile.
        spacing: voxel spacing for HD95 (``None``: the label's ``MetaTensor`` pixdim, else 1).
        primary: optional ``{task name: metric}`` overriding each task's primary metric in the
            key metric (config data; the defaults come from :func:`functional.primary_metric`).
        save_details: also write per-sample values to ``engine.state.metric_details``.
        bootstrap: if > 0, also write ``<task>/<primary>_ci_low`` / ``_ci_high`` from this many
            resamples (seeded by ``seed``); 0 (default) keeps validation cheap.
        seed: bootstrap seed.
        device: ignite's metric device argument (the buffers follow the predictions' device).
        postprocessing_candidates: also score postprocessing candidates of every segmentation task
            (per-case Dice as ``<task>/dice_pp_<candidate>``, kept in ``predictions.npz``) for
            :func:`~medmtl.metrics.postprocessing.choose_postprocessing`: ``True`` for the default
            candidates, or a list of names (``keep_largest``, ``keep_largest_foreground``,
            ``remove_small_<fraction>``); ``False`` (default) adds nothing.
        postprocessing: a ``postprocessing.json`` path (or record) whose operation is applied to
            each segmentation task's predicted mask before its scores; ``None`` (default): none.

    Example::

        handler = MultiTaskMetricHandler(tasks)
        evaluator = SupervisedEvaluator(..., key_val_metric={"mean_primary": handler})
        # after a run: evaluator.state.metrics["lesion/dice"], ["malignant/auroc"], ["mean_primary"]
    """

    def __init__(
        self,
        tasks: Sequence[Task | Mapping[str, Any]],
        output_transform: Callable[[Any], Any] = lambda x: x,
        threshold: float = 0.5,
        seg_metrics: Sequence[str] = F.SEGMENTATION_METRICS,
        hd_percentile: float = 95.0,
        spacing: float | Sequence[float] | None = None,
        primary: Mapping[str, str] | None = None,
        save_details: bool = True,
        bootstrap: int = 0,
        seed: int = 0,
        device: str | torch.device = "cpu",
        postprocessing_candidates: bool | Sequence[str] = False,
        postprocessing: Postprocessing | str | os.PathLike | None = None,
    ) -> None:
        self.tasks = list(as_tasks(tasks, owner="MultiTaskMetricHandler"))
        self.postprocessing = as_postprocessing(postprocessing, self.tasks)
        chosen = self.postprocessing.tasks if self.postprocessing is not None else {}
        unknown = sorted(set(primary or {}) - {t.name for t in self.tasks})
        if unknown:
            raise ValueError(f"primary names tasks {unknown} that are not among {[t.name for t in self.tasks]}")
        self.primary = dict(primary or {})
        self.task_metrics = {
            t.name: TaskMetric(
                t,
                threshold=threshold,
                seg_metrics=seg_metrics,
                hd_percentile=hd_percentile,
                spacing=spacing,
                candidates=_candidates(t, postprocessing_candidates),
                postprocessing=chosen[t.name].op if t.name in chosen else None,
            )
            for t in self.tasks
        }
        self.save_details = save_details
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.last_metrics: dict[str, float] = {}
        self.last_details: dict[str, torch.Tensor] = {}
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        for metric in self.task_metrics.values():
            metric.reset()

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        """Add one iteration's samples (see ``output_transform`` for the accepted layouts)."""
        update_from_samples(self.task_metrics, as_samples(output))

    def iteration_completed(self, engine: Engine) -> None:
        # ignite would unpack a (y_pred, y) pair; the multi-task output goes to update() whole
        self.update(self._output_transform(engine.state.output))

    def results(self) -> EvaluationResults:
        """Per-case data of every task (labelled cases, all ranks), e.g. for :func:`write_report`."""
        return EvaluationResults.from_results(m.result() for m in self.task_metrics.values())

    def compute(self) -> float:
        """Compute every task's metrics (kept in ``last_metrics``) and return the key metric."""
        results = self.results()
        flat: dict[str, float] = {}
        for name, result in results.results.items():
            flat.update({f"{name}/{k}": v for k, v in result.metrics().items()})
            if self.bootstrap > 0:
                primary, _ = F.primary_metric(result.task)
                low, high = result.bootstrap_ci(n_resamples=self.bootstrap, seed=self.seed)
                flat[f"{name}/{primary}_ci_low"], flat[f"{name}/{primary}_ci_high"] = low, high
        key = mean_primary(flat, self.tasks, self.primary)
        self.last_metrics = flat
        if self.save_details:
            self.last_details = {
                f"{name}/{field}": value
                for name, metric in self.task_metrics.items()
                for field, value in metric.details().items()
            }
        return key

    def completed(self, engine: Engine, name: str) -> None:
        key = self.compute()
        engine.state.metrics.update(self.last_metrics)
        engine.state.metrics[name] = key
        if self.save_details:
            if not hasattr(engine.state, "metric_details") or engine.state.metric_details is None:
                engine.state.metric_details = {}
            engine.state.metric_details.update(self.last_details)
        logger.debug("%s = %.4f over %d tasks", name, key, len(self.tasks))

    def attach(self, engine: Engine, name: str = KEY_METRIC, usage: str | MetricUsage = EpochWise()) -> None:
        """Attach to ``engine``; results land under ``name`` and ``<task>/<metric>`` keys."""
        super().attach(engine, name, usage)
        if self.save_details and not hasattr(engine.state, "metric_details"):
            engine.state.metric_details = {}


def _candidates(task: Task, option: bool | Sequence[str]) -> tuple[PostprocessingOp, ...]:
    """The postprocessing candidates scored for ``task`` (none for image-level tasks or ``False``)."""
    if not task.is_dense or option is False:
        return ()
    if option is True:
        return default_candidates(task)
    if isinstance(option, str) or not isinstance(option, Sequence):
        raise ValueError(
            f"postprocessing_candidates must be True / False or a list of candidate names, got {option!r} "
            "(on the command line: --validate::key_metric::mean_primary::postprocessing_candidates True)"
        )
    return tuple(PostprocessingOp.from_name(name) for name in option if name != "none")
