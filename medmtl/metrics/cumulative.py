"""``TaskMetric``: one task's per-case results, buffered in MONAI's ``Cumulative`` for DDP.

Validation runs batch by batch (and, under DDP, rank by rank); the scores need all cases at
once (AUROC does not average over batches). MONAI's ``Cumulative`` already keeps per-sample
tensors and gathers them across ranks with ``evenly_divisible_all_gather``, so each task's metric
is a ``Cumulative`` with one buffer per per-case quantity:

- ``present`` flag, then for segmentation the per-class Dice / IoU / HD95 / precision / recall of
  the case (computed once, on the prediction's device, so NCCL can gather them), and for
  classification the probabilities and the label.

Every sample seen gets a row (NaN where the task is absent), so :meth:`TaskMetric.details` lines
up with the evaluator's cases (as MONAI's ``MetricsSaver`` expects); :meth:`TaskMetric.result`
keeps the labelled cases only. Case ids are strings, gathered with MONAI's
``string_list_all_gather`` in the same rank order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.metrics import Cumulative
from monai.utils import string_list_all_gather

from medmtl.data.task_keys import label_key as _label_key
from medmtl.data.task_keys import pred_key as _pred_key
from medmtl.data.task_keys import present_key
from medmtl.data.tasks import Task, TaskKind
from medmtl.metrics import functional as F
from medmtl.metrics.postprocessing import PostprocessingOp, as_label_map, candidate_dice, candidate_metric
from medmtl.metrics.results import EvaluationResults, TaskResult

__all__ = ["TaskMetric", "as_samples", "update_from_samples", "collect_results"]


def _unbatch(x: Any, name: str) -> list[Any]:
    if x is None:
        return []
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return list(x)
    if isinstance(x, (list, tuple)):
        return list(x)
    raise TypeError(f"{name} must be a batch-first tensor/array or a list of per-sample values, got {type(x).__name__}")


def _flag(value: Any) -> bool:
    if value is None:
        return True
    return bool(torch.as_tensor(value).reshape(-1)[0].item()) if not isinstance(value, bool) else value


class TaskMetric(Cumulative):
    """Cumulative per-case results of one task; absent cases are buffered but never scored.

    Args:
        task: the task (its kind decides what is computed).
        threshold: sigmoid probability at or above which a binary / multilabel case is positive.
        seg_metrics: segmentation scores to compute, a subset of
            :data:`~medmtl.metrics.functional.SEGMENTATION_METRICS` holding ``dice`` (HD95 is the
            slow one on large 3D volumes).
        hd_percentile: percentile of the Hausdorff distance.
        spacing: voxel spacing for HD95. ``None`` reads the label's ``MetaTensor.pixdim`` when
            there is one, else 1 voxel.
        candidates: segmentation only: postprocessing candidates whose per-case Dice (of the
            prediction before ``postprocessing``) is kept as ``dice_pp_<candidate>``
            (:mod:`medmtl.metrics.postprocessing`); empty (default) adds nothing.
        postprocessing: segmentation only: an operation applied to the predicted label map
            before every score (the one chosen on out-of-fold Dice); ``None``: the argmax as is.

    Raises:
        ValueError: for an unknown segmentation metric, a list without ``dice`` or a threshold
            outside (0, 1).

    Note:
        Under DDP, :meth:`result`, :meth:`aggregate` and :meth:`details` are collectives: call
        them on every rank, each having added at least one sample (as for every MONAI
        ``Cumulative``; ``DistributedSampler`` guarantees it).

    Example::

        metric = TaskMetric(Task(name="malignant", kind="binary"))
        metric.update(torch.tensor([[2.0], [-1.0], [0.3]]), torch.tensor([[1.0], [0.0], [0.0]]),
                      present=[1, 1, 0], case_ids=["a", "b", "c"])
        metric.aggregate()["auroc"]  # 1.0, case "c" has no label
    """

    def __init__(
        self,
        task: Task,
        threshold: float = 0.5,
        seg_metrics: Sequence[str] = F.SEGMENTATION_METRICS,
        hd_percentile: float = 95.0,
        spacing: float | Sequence[float] | None = None,
        candidates: Sequence[PostprocessingOp] = (),
        postprocessing: PostprocessingOp | None = None,
    ) -> None:
        self.task = task
        dense = task.kind == TaskKind.SEGMENTATION
        self.candidates = tuple(candidates) if dense else ()
        self.postprocessing = postprocessing if dense else None
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"task '{task.name}': threshold must be a probability in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.seg_metrics = tuple(seg_metrics)
        unknown = [m for m in self.seg_metrics if m not in F.SEGMENTATION_METRICS]
        if unknown or "dice" not in self.seg_metrics:
            raise ValueError(
                f"task '{task.name}': seg_metrics {list(self.seg_metrics)} must hold 'dice' and only names "
                f"from {F.SEGMENTATION_METRICS}"
            )
        self.hd_percentile = float(hd_percentile)
        self.spacing = spacing
        # the per-case buffers of a segmentation task: its scores, then the candidates' Dice
        self.seg_fields = self.seg_metrics + tuple(candidate_metric(op) for op in self.candidates)
        self._case_ids: list[str] = []
        super().__init__()

    def reset(self) -> None:
        """Empty the buffers and the case ids."""
        super().reset()
        self._case_ids = []

    # ------------------------------------------------------------------ update

    def __call__(self, y_pred: Any, y: Any, present: Any = None, case_ids: Sequence[str] | None = None) -> None:
        self.update(y_pred, y, present, case_ids)

    def update(self, y_pred: Any, y: Any, present: Any = None, case_ids: Sequence[str] | None = None) -> None:
        """Add a batch.

        Args:
            y_pred: logits, batch-first or a list of per-sample tensors: segmentation
                ``(C, *spatial)`` (or a ``(1, *spatial)`` label map), binary ``(1,)``, multilabel
                / multiclass ``(K,)``.
            y: labels in the same layout: segmentation ``(1, *spatial)`` label map (or one-hot),
                binary ``(1,)`` / multilabel ``(K,)`` 0/1, multiclass class index (or one-hot).
                Ignored for absent samples (any placeholder is fine).
            present: one flag per sample (``None``: all labelled).
            case_ids: one id per sample (``None``: running numbers).

        Raises:
            ValueError: when the numbers of predictions, labels, flags or ids differ, or a
                labelled sample does not fit the task.
        """
        preds = _unbatch(y_pred, "y_pred")
        labels = _unbatch(y, "y") if y is not None else [None] * len(preds)
        flags = [True] * len(preds) if present is None else [_flag(p) for p in _unbatch(present, "present")]
        ids = [None] * len(preds) if case_ids is None else list(case_ids)
        if not (len(labels) == len(flags) == len(ids) == len(preds)):
            raise ValueError(
                f"task '{self.task.name}': {len(preds)} predictions, {len(labels)} labels, {len(flags)} present flags "
                f"and {len(ids)} case ids; expected one of each per sample"
            )
        for pred, label, flag, case in zip(preds, labels, flags, ids, strict=True):
            if flag and label is None:
                raise ValueError(f"task '{self.task.name}': case {case} is flagged present but has no label")
            self._add(pred, label if flag else None, case)

    def _add(self, pred: Any, label: Any, case: str | None) -> None:
        device = pred.device if isinstance(pred, torch.Tensor) else torch.device("cpu")
        present = torch.tensor([1.0 if label is not None else 0.0], device=device)
        if self.task.kind == TaskKind.SEGMENTATION:
            rows = self._segmentation_rows(pred, label, device)
        else:
            rows = self._classification_rows(pred, label, device)
        self.append(present, *rows)
        self._case_ids.append(str(case) if case is not None else str(len(self._case_ids)))

    def _segmentation_rows(self, pred: Any, label: Any, device: torch.device) -> list[torch.Tensor]:
        fg = self.task.num_outputs - 1
        if label is None:
            return [torch.full((fg,), math.nan, device=device) for _ in self.seg_fields]
        spacing = self.spacing
        if spacing is None and isinstance(label, MetaTensor):
            spatial_dims = label.ndim - 1
            pixdim = [float(s) for s in label.pixdim]
            spacing = pixdim[:spatial_dims] if len(pixdim) >= spatial_dims else None
        p = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)
        y = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
        raw = p
        if self.postprocessing is not None:
            labels = as_label_map(p, self.task.num_outputs, self.task.name)
            p = self.postprocessing(labels, self.task.num_outputs).to(device=p.device, dtype=torch.float32)
        values = F.segmentation_case_metrics(
            p[None].detach(),
            y[None].to(p.device),
            self.task.num_outputs,
            metrics=self.seg_metrics,
            hd_percentile=self.hd_percentile,
            spacing=spacing,
            task=self.task.name,
        )
        rows = [values[m][0] for m in self.seg_metrics]
        if self.candidates:
            dice = candidate_dice(raw, y, self.task.num_outputs, self.candidates, self.task.name)
            rows += [dice[candidate_metric(op)].to(device) for op in self.candidates]
        return rows

    def _classification_rows(self, pred: Any, label: Any, device: torch.device) -> list[torch.Tensor]:
        t = self.task
        k = t.num_outputs
        logits = torch.as_tensor(pred, device=device).detach().float().reshape(-1)
        if logits.numel() != k:
            raise ValueError(
                f"{t.kind.value} task '{t.name}': prediction has {logits.numel()} values (shape "
                f"{tuple(torch.as_tensor(pred).shape)}); expected {k} logits"
            )
        probs = torch.softmax(logits, dim=0) if t.kind == TaskKind.MULTICLASS else torch.sigmoid(logits)
        width = 1 if t.kind == TaskKind.MULTICLASS else k
        if label is None:
            return [probs, torch.full((width,), math.nan, device=device)]
        y = torch.as_tensor(label, device=device).detach().float().reshape(-1)
        if t.kind == TaskKind.MULTICLASS:
            if y.numel() == k and k > 1:  # one-hot
                y = y.argmax().reshape(1).float()
            if y.numel() != 1 or not (0 <= float(y) < k) or float(y) != int(float(y)):
                raise ValueError(
                    f"multiclass task '{t.name}': label {y.tolist()} is not a class index in [0, {k}) nor a one-hot vector"
                )
        elif y.numel() != k or bool(((y != 0) & (y != 1)).any()):
            raise ValueError(f"{t.kind.value} task '{t.name}': label {y.tolist()} must be {k} values of 0 or 1")
        return [probs, y]

    # ------------------------------------------------------------------ results

    def _gathered(self) -> tuple[list[np.ndarray], list[str]]:
        buffers = self.get_buffer()  # all-gathers across ranks
        ids = string_list_all_gather(self._case_ids) if self._case_ids else []
        if buffers is None:
            return [], ids
        return [b.detach().cpu().numpy() for b in buffers], ids

    def details(self) -> dict[str, torch.Tensor]:
        """Per-sample values of every sample seen (all ranks), NaN rows where the task is absent.

        Keys: ``present``, then the segmentation metric names, or ``probability`` and ``label``;
        values are ``(N, width)`` float tensors, as ``engine.state.metric_details`` holds them.
        """
        buffers = self.get_buffer()
        if buffers is None:
            return {}
        names = ["present", *(self.seg_fields if self.task.is_dense else ("probability", "label"))]
        return dict(zip(names, buffers, strict=True))

    def case_ids(self) -> list[str]:
        """Ids of every sample seen, present or not, gathered over ranks."""
        return self._gathered()[1]

    def result(self) -> TaskResult:
        """Per-case data of the labelled cases (all ranks)."""
        arrays, ids = self._gathered()
        if not arrays:
            return self._empty_result()
        keep = arrays[0].reshape(-1) > 0.5
        kept_ids = [c for c, k in zip(ids, keep, strict=True) if k]
        if self.task.is_dense:
            metrics = {m: a[keep] for m, a in zip(self.seg_fields, arrays[1:], strict=True)}
            return TaskResult(self.task, kept_ids, case_metrics=metrics, threshold=self.threshold)
        probs, labels = arrays[1][keep], arrays[2][keep]
        if self.task.kind == TaskKind.MULTICLASS:
            labels = labels.reshape(-1).astype(np.int64)
        return TaskResult(self.task, kept_ids, probabilities=probs, labels=labels, threshold=self.threshold)

    def _empty_result(self) -> TaskResult:
        fg = self.task.num_outputs - 1
        if self.task.is_dense:
            return TaskResult(self.task, [], case_metrics={m: np.zeros((0, fg)) for m in self.seg_fields})
        k = self.task.num_outputs
        labels = np.zeros(0, dtype=np.int64) if self.task.kind == TaskKind.MULTICLASS else np.zeros((0, k))
        return TaskResult(self.task, [], probabilities=np.zeros((0, k)), labels=labels, threshold=self.threshold)

    def aggregate(self) -> dict[str, float]:  # type: ignore[override]
        """Every score of the task over the labelled cases (keys without the task prefix)."""
        return self.result().metrics()


def as_samples(output: Any) -> list[Mapping[str, Any]]:
    """An evaluator output as a list of per-sample dicts.

    Accepts the decollated output (list of dicts, MONAI's default), one dict of batch-first
    values (``decollate=False``), or a list of either.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(output, Mapping):
        return list(decollate_batch(dict(output), detach=True))
    if isinstance(output, (list, tuple)):
        samples: list[Mapping[str, Any]] = []
        for item in output:
            if not isinstance(item, Mapping):
                raise TypeError(
                    f"evaluator output items must be dicts with pred_<task> keys, got {type(item).__name__}"
                )
            samples.append(item)
        return samples
    raise TypeError(
        f"evaluator output must be a dict or a list of per-sample dicts (pred_<task>, label_<task>, "
        f"<task>_present, case_id), got {type(output).__name__}"
    )


def update_from_samples(metrics: Mapping[str, TaskMetric], samples: Iterable[Mapping[str, Any]]) -> None:
    """Feed per-sample dicts (flat engine-contract keys) to one :class:`TaskMetric` per task.

    A sample without ``label_<task>`` counts as absent; ``<task>_present`` defaults to present
    when the label is there.

    Raises:
        KeyError: naming the task and the keys found when a sample lacks ``pred_<task>``.
    """
    samples = list(samples)
    for name, metric in metrics.items():
        preds, labels, flags, ids = [], [], [], []
        for i, s in enumerate(samples):
            if _pred_key(name) not in s:
                raise KeyError(
                    f"sample {s.get('case_id', i)} has no '{_pred_key(name)}' (keys: {sorted(s)}); flatten the "
                    "evaluator output with medmtl.engines.FlattenTaskOutputsd"
                )
            label = s.get(_label_key(name))
            preds.append(s[_pred_key(name)])
            labels.append(label)
            flags.append(label is not None and _flag(s.get(present_key(name))))
            ids.append(s.get("case_id"))
        metric.update(preds, labels, flags, None if all(c is None for c in ids) else [str(c) for c in ids])


def collect_results(tasks: Sequence[Task], outputs: Iterable[Any], **metric_kwargs: Any) -> EvaluationResults:
    """Per-case results from collected evaluator outputs.

    Args:
        tasks: the tasks.
        outputs: per-sample dicts, or per-iteration lists of them (``engine.state.output`` of a
            decollating evaluator), with the engine-contract keys ``pred_<task>``,
            ``label_<task>``, ``<task>_present`` and ``case_id``.
        metric_kwargs: passed to every :class:`TaskMetric` (``threshold``, ``seg_metrics``, ...).

    Returns:
        :class:`EvaluationResults` of the labelled cases of every task.

    Example::

        outputs = []
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
        evaluator.run()
        results = collect_results(tasks, outputs)
    """
    metrics = {t.name: TaskMetric(t, **metric_kwargs) for t in tasks}
    for out in outputs:
        update_from_samples(metrics, [out] if isinstance(out, Mapping) else as_samples(out))
    return EvaluationResults.from_results(m.result() for m in metrics.values())
