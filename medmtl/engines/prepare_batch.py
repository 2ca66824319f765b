"""Batch preparation and output flattening: how MONAI's stock engines carry several tasks.

MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` stay unchanged (STYLE: assembled, not
subclassed). Two small pieces make them multi-task:

- :class:`MultiTaskPrepareBatch` turns a collated batch into ``(inputs, targets)`` where
  ``targets`` holds ``{task: target, "<task>_present": flags}``; the trainer then calls
  ``loss_function(pred_dict, targets)``, which :class:`medmtl.losses.MultiTaskLoss` understands.
- :class:`FlattenTaskOutputsd` (evaluator ``postprocessing``) copies the nested ``pred`` / ``label``
  dicts of each decollated sample to flat keys ``pred_<task>``, ``label_<task>``, ``<task>_present``,
  because MONAI's key-based transforms and ``from_engine`` only see top-level keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents, PrepareBatch
from monai.utils import CommonKeys

from medmtl.data.task_keys import label_key, pred_key, present_key, prob_key
from medmtl.data.tasks import Task, as_tasks

__all__ = ["MultiTaskPrepareBatch", "FlattenTaskOutputsd", "as_tasks", "pred_key", "label_key"]


def _target(task: Task, value: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Targets in the shapes the losses expect: binary ``(B, 1)`` float, multiclass ``(B,)`` long."""
    value = torch.as_tensor(value)
    if task.is_dense:
        return value
    if task.kind.value == "multiclass":
        return value.reshape(batch_size).long()
    return value.reshape(batch_size, task.num_outputs).float()


def _check_class_range(task: Task, target: torch.Tensor, batchdata: Mapping[str, Any]) -> None:
    """Multiclass labels of the labelled samples within ``[0, K-1]``, checked on the host before the move.

    Why here: on a GPU the losses skip this check (it would block the host every iteration), and an
    out-of-range label there ends in a device-side assert that names nothing. B numbers per batch
    cost nothing; segmentation masks (a volume per sample) are checked once, up front, by the
    dataset validation (``medmtl validate``, the bundles' ``validate_data``), not every iteration.
    """
    if task.kind.value != "multiclass":
        return
    flags = torch.as_tensor(batchdata[present_key(task.name)]).reshape(-1) != 0
    k = task.num_outputs
    outside = flags & ((target < 0) | (target >= k))
    bad = outside.nonzero().reshape(-1).tolist()
    if bad:
        ids = batchdata.get("case_id")
        names = [str(ids[i]) if isinstance(ids, Sequence) and not isinstance(ids, str) else f"sample {i}" for i in bad]
        raise ValueError(
            f"task '{task.name}' ({task.kind.value}): labels outside [0, {k - 1}] in {names}; "
            "check the label mapping or mark these cases as not labelled"
        )


class MultiTaskPrepareBatch(PrepareBatch):
    """``(inputs, {task: target, task_present: flags})`` from a collated medmtl batch.

    Inputs and targets move to the engine's device; the ``<task>_present`` flags stay on the host
    as ``(B,)`` bool tensors. Why: :class:`medmtl.losses.MultiTaskLoss` needs the number of
    labelled samples per task as a Python number (to leave unlabelled tasks out of the weighting),
    and counting flags that live on a GPU blocks the host until the forward pass has finished,
    every iteration. Host flags keep the GPU's queue full.

    Args:
        tasks: the tasks (``Task`` or dicts).
        input_keys: batch keys holding the network input. One key gives a tensor; several (MRNet's
            ``axial``/``coronal``/``sagittal`` views) give ``{key: tensor}``.
        augment: random augmentation of the whole batch, applied after the move to the device
            (a :class:`medmtl.transforms.BatchAugment`, or any callable ``augment(data,
            image_keys=..., label_keys=...) -> dict``); it gets the input keys as images and the
            dense tasks' targets as label maps. For the trainer only: give the evaluator a
            ``MultiTaskPrepareBatch`` without it. Its ``state_dict`` is saved in
            :class:`~medmtl.engines.ResumableCheckpoint`'s ``last.pt``.

    Raises:
        KeyError: naming the missing key when the batch lacks an input, a task or a present flag
            (usually a transform chain without ``EnsureTaskLabelsd`` at its end).
    """

    def __init__(
        self,
        tasks: Sequence[Task | Mapping[str, Any]],
        input_keys: str | Sequence[str] = "image",
        augment: Callable[..., Mapping[str, Any]] | None = None,
    ) -> None:
        self.tasks = list(as_tasks(tasks, owner=type(self).__name__))
        self.input_keys = (input_keys,) if isinstance(input_keys, str) else tuple(input_keys)
        self.augment = augment

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        missing = [k for k in self.input_keys if k not in batchdata]
        missing += [k for t in self.tasks for k in (t.name, present_key(t.name)) if k not in batchdata]
        if missing:
            raise KeyError(
                f"batch lacks keys {missing} (has {sorted(batchdata)}); end the transform chain with "
                "medmtl.transforms.EnsureTaskLabelsd so every task has a target and a present flag"
            )

        def move(x: Any) -> torch.Tensor:
            return torch.as_tensor(x).to(device=device, non_blocking=non_blocking, **kwargs)

        inputs: Any
        if len(self.input_keys) == 1:
            inputs = move(batchdata[self.input_keys[0]])
        else:
            inputs = {k: move(batchdata[k]) for k in self.input_keys}
        first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
        batch_size = first.shape[0]
        targets: dict[str, torch.Tensor] = {}
        to_accelerator = torch.device(device or "cpu").type != "cpu"  # the loss checks host targets itself
        for task in self.tasks:
            target = _target(task, batchdata[task.name], batch_size)
            if to_accelerator:
                _check_class_range(task, target, batchdata)
            targets[task.name] = move(target)
            # the flags stay on the host: the loss counts labelled samples and the metrics read
            # them per sample without waiting for the GPU (a device copy would cost a sync each)
            targets[present_key(task.name)] = torch.as_tensor(batchdata[present_key(task.name)]).reshape(-1).bool()
        return self._augment(inputs, targets), targets

    def _augment(self, inputs: Any, targets: dict[str, torch.Tensor]) -> Any:
        """Run :attr:`augment` on the inputs and dense targets together (one draw per sample)."""
        augment = self.augment
        if augment is None:
            return inputs
        dense = [t.name for t in self.tasks if t.is_dense]
        images = dict(inputs) if isinstance(inputs, Mapping) else {self.input_keys[0]: inputs}
        out = augment({**images, **{name: targets[name] for name in dense}}, image_keys=list(images), label_keys=dense)
        targets.update({name: out[name] for name in dense})
        if isinstance(inputs, Mapping):
            return {k: out[k] for k in images}
        return out[self.input_keys[0]]


class FlattenTaskOutputsd:
    """Nested ``pred``/``label`` dicts of each sample -> flat ``pred_<task>``, ``label_<task>``, ``<task>_present``.

    Use it as a handler (``FlattenTaskOutputsd(tasks).attach(evaluator)``): it runs after MONAI's
    decollation and writes every flat key into ``engine.state.output`` together with ``case_id``.
    As a plain ``postprocessing`` transform, MONAI routes keys that already exist in the batch
    (``<task>_present``, ``case_id``) back into ``engine.state.batch`` instead of the output.

    Args:
        tasks: the tasks.
        activation: also store probabilities as ``prob_<task>`` (softmax for segmentation and
            multiclass, sigmoid for binary / multilabel).
    """

    def __init__(self, tasks: Sequence[Task | Mapping[str, Any]], activation: bool = True) -> None:
        self.tasks = list(as_tasks(tasks, owner=type(self).__name__))
        self.activation = activation

    def attach(self, engine: Any) -> None:
        if not engine.has_event_handler(self._flatten_engine_output, IterationEvents.MODEL_COMPLETED):
            engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self._flatten_engine_output)

    def _flatten_engine_output(self, engine: Any) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batches = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch] * len(outputs)
        for output, batch in zip(outputs, batches, strict=True):
            output.update(self(output))
            if isinstance(batch, Mapping) and "case_id" in batch:
                output.setdefault("case_id", batch["case_id"])

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        preds = data.get(CommonKeys.PRED) or {}
        labels = data.get(CommonKeys.LABEL) or {}
        for task in self.tasks:
            if task.name in preds:
                out[pred_key(task.name)] = preds[task.name]
                if self.activation:
                    out[prob_key(task.name)] = probabilities(task, preds[task.name])
            if task.name in labels:
                out[label_key(task.name)] = torch.as_tensor(labels[task.name])  # decollate turns 0-d into numbers
            flag = labels.get(present_key(task.name), data.get(present_key(task.name)))
            if flag is not None:
                out[present_key(task.name)] = bool(torch.as_tensor(flag).reshape(-1)[0])
        return out


def probabilities(task: Task, logits: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """Softmax (segmentation, multiclass) or sigmoid (binary, multilabel) of one sample's logits."""
    if task.kind.value in ("segmentation", "multiclass"):
        return torch.softmax(logits.float(), dim=channel_dim)
    return torch.sigmoid(logits.float())
