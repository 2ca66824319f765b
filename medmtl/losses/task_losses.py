"""Per-task losses that only learn from the samples that carry the task's label.

Multi-source medical data is partly labelled: a case may have a mask but no diagnosis, or the other
way round. The batch still holds a placeholder target for every task, plus a per-sample
``<task>_present`` flag. Zeroing the inputs of unlabelled samples is not a mask (zero logits still
give a non-zero cross-entropy), so these wrappers select the labelled samples and hand them to an
unchanged MONAI / PyTorch loss. The value is therefore exactly the base loss on the labelled subset:
a sample without the label neither changes the loss nor receives a gradient. When no sample of the
batch is labelled the loss is ``pred.sum() * 0``: zero, never NaN, and still connected to the graph
so DDP sees every head used (nnU-Net skips its CE term the same way when no voxel is valid).

The loss is chosen from the task's kind, never from its name:

- segmentation: MONAI ``DiceCELoss`` (default) or ``DiceFocalLoss``, softmax, ``to_onehot_y``;
- binary / multilabel: ``BCEWithLogitsLoss`` with an optional per-label ``pos_weight`` buffer;
- multiclass: ``CrossEntropyLoss`` with optional class weights (buffer).

Class weights and ``pos_weight`` live in registered buffers (of the wrapped loss), so they follow
``.to(device)`` and are saved in the ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss, DiceFocalLoss
from monai.utils import look_up_option
from torch import nn

from medmtl.data.tasks import Task, TaskKind

__all__ = [
    "SEGMENTATION_LOSSES",
    "MaskedTaskLoss",
    "MaskedSegmentationLoss",
    "MaskedBCELoss",
    "MaskedCELoss",
    "build_task_loss",
    "present_flags",
]

#: names accepted by ``seg_loss``, mapped to the MONAI loss they build.
SEGMENTATION_LOSSES: dict[str, type[nn.Module]] = {"dicece": DiceCELoss, "dicefocal": DiceFocalLoss}


def _plain(x: Any) -> Any:
    """A MetaTensor as a plain tensor (keeps autograd); anything else unchanged."""
    as_tensor = getattr(x, "as_tensor", None)
    return as_tensor() if callable(as_tensor) and isinstance(x, torch.Tensor) else x


def present_flags(present: Any, batch_size: int, name: str = "task") -> torch.Tensor | None:
    """Per-sample presence flags as a checked ``(B,)`` bool tensor, on the device they came on.

    Why not move them: :class:`medmtl.engines.MultiTaskPrepareBatch` keeps the flags on the host,
    so the losses count and select the labelled samples without reading anything back from a GPU
    (each read would block the host until the GPU's queue drains). Flags given on a GPU stay there
    and cost one such read where a decision needs them.

    Args:
        present: ``None`` (every sample labelled), or B flags (bool, int or float; non-zero means
            labelled) as a tensor, list or array of shape ``(B,)`` or ``(B, 1)``.
        batch_size: B, the number of samples in the prediction.
        name: task name, used in error messages.

    Returns:
        ``None`` for ``present=None``, else a bool tensor of shape ``(B,)``.

    Raises:
        ValueError: when the flags do not hold exactly one value per sample.
    """
    if present is None:
        return None
    flags = torch.as_tensor(_plain(present))
    if flags.numel() != batch_size:
        raise ValueError(
            f"task '{name}': presence flags have shape {tuple(flags.shape)} but the batch has {batch_size} samples; "
            f"expected one flag per sample, shape ({batch_size},)"
        )
    return flags.reshape(-1) != 0


class MaskedTaskLoss(nn.Module):
    """Base class: check shapes, keep labelled samples, apply the wrapped loss.

    Subclasses implement :meth:`check` (validate and normalise the shapes of one task kind) and
    build ``self.loss``, a loss module with a mean reduction.

    Args:
        task: the task this loss scores.
        loss: the base loss, called as ``loss(pred_subset, target_subset)`` and reducing to a scalar;
            subclasses may set ``self.loss`` after validating their arguments.

    Example::

        loss = build_task_loss(Task(name="malignant", kind="binary"), pos_weight=[3.0])
        value = loss(logits, target, present)  # mean BCE over labelled samples
    """

    def __init__(self, task: Task, loss: nn.Module | None = None) -> None:
        super().__init__()
        self.task = task
        self.loss = loss

    @property
    def name(self) -> str:
        return self.task.name

    def check(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate shapes for this task kind and return ``(pred, target)`` in the base loss's layout.

        Only shapes are checked here: values of unlabelled samples are placeholders.
        """
        raise NotImplementedError

    def _shape_error(self, what: str, got: Sequence[int], expected: str) -> ValueError:
        return ValueError(
            f"task '{self.name}' ({self.task.kind.value}): {what} has shape {tuple(got)}, expected {expected}; "
            "check the network head and the label transforms for this task"
        )

    def forward(self, pred: torch.Tensor, target: torch.Tensor, present: Any = None) -> torch.Tensor:
        """Mean loss over the labelled samples.

        Args:
            pred: logits of this task for the whole batch.
            target: target of this task for the whole batch (placeholders where unlabelled).
            present: ``(B,)`` flags, non-zero where the sample carries this task's label; ``None``
                means every sample is labelled.

        Returns:
            scalar tensor: the base loss on the labelled samples, or ``pred.sum() * 0`` when there is none.

        Raises:
            ValueError: when shapes do not match the task (the message names the task and both shapes).
        """
        pred, target = self.check(_plain(pred), _plain(target))
        flags = present_flags(present, pred.shape[0], self.name)  # decisions read them where they live
        if flags is not None and not bool(flags.any()):
            return pred.sum() * 0
        if flags is not None and not bool(flags.all()):
            index = flags.nonzero().reshape(-1)
            pred, target = pred.index_select(0, index.to(pred.device)), target.index_select(0, index.to(target.device))
        return self.loss(pred, self.prepare_target(pred, target))

    def prepare_target(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Check the labelled samples' target values and cast them for the base loss (default: as is)."""
        return target

    def _check_class_range(self, target: torch.Tensor) -> None:
        """Labels outside ``[0, K-1]`` -> a clear error (the base losses would fail obscurely).

        Checked for host targets only: on a GPU the check would block the host every iteration.
        There :class:`medmtl.engines.MultiTaskPrepareBatch` checks multiclass labels on the host
        before the move (naming the cases), and the dataset validation checks the masks up front.
        """
        if target.device.type != "cpu":
            return
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= self.task.num_outputs:
            raise ValueError(
                f"task '{self.name}' ({self.task.kind.value}): labels range over [{lo}, {hi}] but the task has "
                f"{self.task.num_outputs} classes (expected values in [0, {self.task.num_outputs - 1}]); "
                "check the label mapping or mark the sample as not labelled"
            )


class MaskedSegmentationLoss(MaskedTaskLoss):
    """Dice + CE (or Dice + focal) on labelled samples, from MONAI.

    Args:
        task: a segmentation task.
        seg_loss: ``"dicece"`` (MONAI ``DiceCELoss``) or ``"dicefocal"`` (MONAI ``DiceFocalLoss``).
        class_weights: optional weight per class, passed as the MONAI loss's ``weight``; defaults to
            ``task.class_weights``.
        **kwargs: other arguments of the MONAI loss (``lambda_dice``, ``include_background``,
            ``batch``, ``gamma``...). ``softmax=True`` and ``to_onehot_y=True`` are the defaults.

    Shapes: ``pred`` ``(B, C, *spatial)`` logits, ``target`` ``(B, 1, *spatial)`` integer class map.

    Raises:
        ValueError: for a task that is not a segmentation task, or an unknown ``seg_loss``.
    """

    def __init__(
        self,
        task: Task,
        seg_loss: str = "dicece",
        class_weights: Sequence[float] | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(task)
        if task.kind != TaskKind.SEGMENTATION:
            raise ValueError(
                f"MaskedSegmentationLoss needs a segmentation task, task '{task.name}' is {task.kind.value}"
            )
        loss_cls = look_up_option(seg_loss, SEGMENTATION_LOSSES)
        weights = class_weights if class_weights is not None else _given_class_weights(task)
        options: dict[str, Any] = {"softmax": True, "to_onehot_y": True, **kwargs}
        if weights is not None:
            options["weight"] = _vector(weights, task.num_outputs, task.name, "class_weights")
        self.loss = loss_cls(**options)

    def check(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.task.num_outputs
        if pred.ndim < 3 or pred.shape[1] != c:
            raise self._shape_error("prediction", pred.shape, f"(B, {c}, *spatial)")
        expected = (pred.shape[0], 1, *pred.shape[2:])
        if tuple(target.shape) != expected:
            raise self._shape_error("target", target.shape, f"{expected} (an integer class map with one channel)")
        return pred, target

    def prepare_target(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check_class_range(target)
        return target


class MaskedBCELoss(MaskedTaskLoss):
    """``BCEWithLogitsLoss`` on labelled samples, for binary and multilabel tasks.

    Args:
        task: a binary or multilabel task.
        pos_weight: weight of positives per label (a number or K numbers), e.g. from
            ``CaseTable.pos_weights()``; defaults to ``task.pos_weight`` when that is a number.
            Kept as the ``pos_weight`` buffer of the wrapped ``BCEWithLogitsLoss``.

    Shapes: ``pred`` ``(B, K)`` logits (K = 1 for binary); ``target`` float ``(B, K)`` (a binary
    target may also be ``(B,)``).

    Raises:
        ValueError: for another task kind, for ``pos_weight="auto"`` without counted weights, or a
            ``pos_weight`` of the wrong length.
    """

    def __init__(self, task: Task, pos_weight: float | Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__(task)
        if task.kind not in (TaskKind.BINARY, TaskKind.MULTILABEL):
            raise ValueError(
                f"MaskedBCELoss needs a binary or multilabel task, task '{task.name}' is {task.kind.value}"
            )
        if pos_weight is None:
            if task.pos_weight == "auto":
                raise ValueError(
                    f"task '{task.name}' has pos_weight 'auto': pass the counted weights, e.g. "
                    f"MultiTaskLoss(..., pos_weight=case_table.pos_weights())"
                )
            pos_weight = task.pos_weight
        weight = None if pos_weight is None else _vector(pos_weight, task.num_outputs, task.name, "pos_weight")
        self.loss = nn.BCEWithLogitsLoss(pos_weight=weight)

    def check(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.task.num_outputs
        if pred.ndim != 2 or pred.shape[1] != k:
            raise self._shape_error("prediction", pred.shape, f"(B, {k})")
        if k == 1 and target.ndim == 1:
            target = target.unsqueeze(1)
        if tuple(target.shape) != tuple(pred.shape):
            raise self._shape_error("target", target.shape, f"{tuple(pred.shape)} (float 0/1 per label)")
        return pred, target

    def prepare_target(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return target.to(pred.dtype)


class MaskedCELoss(MaskedTaskLoss):
    """``CrossEntropyLoss`` on labelled samples, for multiclass tasks.

    With class weights the value is PyTorch's weighted mean over the labelled samples,
    ``sum_i w[y_i] * ce_i / sum_i w[y_i]``, i.e. exactly ``nn.CrossEntropyLoss(weight=w)`` on them.

    Args:
        task: a multiclass task.
        class_weights: optional weight per class (buffer); defaults to ``task.class_weights``.
        label_smoothing: passed to ``nn.CrossEntropyLoss``.

    Shapes: ``pred`` ``(B, K)`` logits; ``target`` integer ``(B,)`` (or ``(B, 1)``) class indices.

    Raises:
        ValueError: for another task kind or class weights of the wrong length.
    """

    def __init__(
        self,
        task: Task,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(task)
        if task.kind != TaskKind.MULTICLASS:
            raise ValueError(f"MaskedCELoss needs a multiclass task, task '{task.name}' is {task.kind.value}")
        weights = class_weights if class_weights is not None else _given_class_weights(task)
        weight = None if weights is None else _vector(weights, task.num_outputs, task.name, "class_weights")
        self.loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def check(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.task.num_outputs
        if pred.ndim != 2 or pred.shape[1] != k:
            raise self._shape_error("prediction", pred.shape, f"(B, {k})")
        if target.ndim == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if tuple(target.shape) != (pred.shape[0],):
            raise self._shape_error("target", target.shape, f"({pred.shape[0]},) (class indices)")
        return pred, target

    def prepare_target(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.is_floating_point() and not bool((target == target.round()).all()):
            raise ValueError(
                f"task '{self.name}' (multiclass): target holds non-integer values {target.tolist()}; expected class indices"
            )
        self._check_class_range(target)
        return target.long()


def _vector(values: float | Sequence[float] | torch.Tensor, size: int, task: str, what: str) -> torch.Tensor:
    """A float vector of ``size`` values (a single number is repeated); checks length and sign."""
    vec = torch.as_tensor(values, dtype=torch.float32).detach().clone().reshape(-1)
    if vec.numel() == 1 and size > 1:
        vec = vec.repeat(size)
    if vec.numel() != size:
        raise ValueError(f"task '{task}': {what} has {vec.numel()} values, expected {size} (one per class/label)")
    if not bool(torch.isfinite(vec).all()) or bool((vec < 0).any()):
        raise ValueError(f"task '{task}': {what} must be finite and non-negative, got {vec.tolist()}")
    return vec


def _given_class_weights(task: Task) -> Sequence[float] | None:
    """The task's own class weights; ``"auto"`` must have been counted on the data by the caller."""
    if task.class_weights == "auto":
        raise ValueError(
            f"task '{task.name}' has class_weights 'auto': pass the counted weights, e.g. "
            "MultiTaskLoss(..., class_weights=case_table.class_weights())"
        )
    return task.class_weights


def build_task_loss(
    task: Task,
    *,
    seg_loss: str = "dicece",
    seg_kwargs: Mapping[str, Any] | None = None,
    pos_weight: float | Sequence[float] | torch.Tensor | None = None,
    class_weights: Sequence[float] | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> MaskedTaskLoss:
    """The masked loss for ``task``, chosen from its kind.

    Args:
        task: the task.
        seg_loss: ``"dicece"`` or ``"dicefocal"`` (segmentation tasks).
        seg_kwargs: extra arguments of the MONAI segmentation loss.
        pos_weight: positives' weight (binary / multilabel); defaults to the task's numeric ``pos_weight``.
        class_weights: class weights (multiclass / segmentation); defaults to ``task.class_weights``.
        label_smoothing: label smoothing of multiclass cross-entropy (ignored by other kinds, so one
            value can be given for every task of a network).

    Returns:
        a :class:`MaskedTaskLoss`.

    Raises:
        ValueError: when an argument does not apply to the task's kind.
    """
    if pos_weight is not None and task.kind not in (TaskKind.BINARY, TaskKind.MULTILABEL):
        raise ValueError(f"pos_weight is for binary/multilabel tasks; task '{task.name}' is {task.kind.value}")
    if class_weights is not None and task.kind not in (TaskKind.MULTICLASS, TaskKind.SEGMENTATION):
        raise ValueError(f"class_weights is for multiclass/segmentation tasks; task '{task.name}' is {task.kind.value}")
    if task.kind == TaskKind.SEGMENTATION:
        return MaskedSegmentationLoss(task, seg_loss, class_weights, **dict(seg_kwargs or {}))
    if task.kind == TaskKind.MULTICLASS:
        return MaskedCELoss(task, class_weights, label_smoothing=label_smoothing)
    return MaskedBCELoss(task, pos_weight)
