"""``MultiTaskLoss``: masked per-task losses combined by a weighting strategy.

One module that the trainer sees as an ordinary loss function: it builds one masked loss per
task from the ``Task`` objects (kind decides the loss, never the name), scores the tasks each
batch is labelled for, and hands those to a :class:`~medmtl.losses.weighting.Weighting`. It
returns a scalar, because MONAI's ``SupervisedTrainer`` calls ``.mean()`` on whatever the loss
function returns, and keeps detached per-task values and the weights for logging.

Wiring into MONAI's trainer: ``MultiTaskPrepareBatch`` returns ``(image, targets)`` where
``targets`` holds ``{task: target, "<task>_present": flags}``; the trainer calls
``loss_function(pred_dict, targets)``, and this module reads the presence flags from the
``<task>_present`` keys (``medmtl.data.present_key``). A three-argument call
``loss(preds, targets, present)`` is accepted as well.

Under DDP (``torchrun``, ``multi_gpu_train.json``) each rank scores its own shard of the global
batch and DDP averages the ranks' gradients. A per-task mean over each rank's labelled samples,
averaged over ranks, is not the mean over the global batch when the ranks hold different numbers of
labelled samples (partly labelled data), so by default each rank's mean is scaled by its share of
the labelled samples (``global_label_mean``): the averaged gradients are then those of one process
on the global batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import ignite.distributed as idist
import torch
from monai.losses import DeepSupervisionLoss
from torch import nn

from medmtl.data.task_keys import deep_supervision_key
from medmtl.data.tasks import Task, as_tasks, present_key
from medmtl.losses.task_losses import build_task_loss, present_flags
from medmtl.losses.weighting import Weighting, build_weighting

__all__ = ["MultiTaskLoss"]


def _deep_supervision_outputs(preds: Mapping[str, torch.Tensor], task: str) -> list[torch.Tensor]:
    """The task's deeply supervised logits, level 1 upwards, as far as the network returned them."""
    found: list[torch.Tensor] = []
    while (key := deep_supervision_key(task, len(found) + 1)) in preds:
        found.append(preds[key])
    return found


def _deeply_supervised(
    loss_fn: nn.Module, preds: list[torch.Tensor], target: torch.Tensor, flags: torch.Tensor | None
) -> torch.Tensor:
    """MONAI's ``DeepSupervisionLoss`` over the levels, with nnU-Net's weights normalised to sum 1.

    Why normalised: the task's loss keeps its scale against the other tasks' (fixed task weights
    mean the same with deep supervision on or off). The masked loss needs the labelled flags, which
    MONAI's two-argument call does not carry, hence the ``partial``.
    """
    weights = [0.5**level for level in range(len(preds))]
    total = sum(weights)
    supervised = DeepSupervisionLoss(partial(loss_fn, present=flags), weights=[w / total for w in weights])
    return supervised(preds, target if target.is_floating_point() else target.float())  # interpolate needs floats


class MultiTaskLoss(nn.Module):
    """Masked per-task losses plus a weighting strategy, returning one scalar.

    Per task (see ``medmtl.losses.task_losses``): segmentation Dice+CE (or Dice+focal), binary /
    multilabel BCE with ``pos_weight``, multiclass CE with class weights, each averaged over the
    samples whose ``<task>_present`` flag is set. Tasks labelled in no sample of the batch are
    left out of the dict given to the weighting and add ``pred.sum() * 0`` to the total, which
    keeps every head in the graph (DDP) without changing the value.

    After each call:

    - ``last_components``: ``{task: detached loss}`` for the tasks labelled in the batch;
    - ``last_num_labelled``: ``{task: number of labelled samples}`` for every task;
    - ``last_weights``: ``{task: weight}`` the weighting used;
    - ``last_losses``: ``{task: loss}`` still attached to the graph, for gradient-based
      strategies (:meth:`backward`).

    Args:
        tasks: the tasks (``Task`` objects or dicts of their fields).
        weighting: a :class:`Weighting` built for the same task names, a registry name
            (``fixed``, ``uncertainty``, ``dwa``, ``gradnorm``, ``pcgrad``, ``scheduled``) or
            ``None`` for ``fixed`` with all weights 1.
        seg_loss: ``"dicece"`` (default) or ``"dicefocal"`` for segmentation tasks.
        pos_weight: ``{task: number or one number per label}`` for binary / multilabel tasks, e.g.
            ``CaseTable.pos_weights()``; tasks not listed use the task's numeric ``pos_weight``.
        class_weights: ``{task: weights}`` overriding ``Task.class_weights``.
        seg_kwargs: extra arguments of the MONAI segmentation loss (``lambda_dice``, ``batch``...).
        weighting_kwargs: hyperparameters when ``weighting`` is a registry name.
        global_label_mean: under ``torch.distributed`` with more than one process, and while
            gradients are enabled, scale each rank's per-task mean by ``n_rank * world_size /
            n_global`` (its share of the task's labelled samples; one all-reduce of the label counts
            per call), so that the gradients DDP averages, the epoch losses and the weighting's
            updates equal those of the masked mean over the global batch in one process. A task
            labelled on another rank only then enters this rank's weighting with a zero loss, as
            it enters the single process's. Without it, DDP weighs the ranks' means equally.
            Weightings that need per-task gradients (GradNorm, PCGrad) always get the rank's own
            means. No effect in a single process.
        label_smoothing: label smoothing of the multiclass tasks' cross-entropy (``nn.CrossEntropyLoss``).
            A small 2D dataset drives the classification loss of a shared network to ~0 long before
            the segmentation converges (BUSI: 0.05 at the end of training); smoothing keeps the
            classifier from growing overconfident on the training images.

    Raises:
        ValueError: for duplicate task names, dict keys naming unknown tasks, a weighting built
            for other tasks, or arguments that do not fit a task's kind.

    Example::

        loss = MultiTaskLoss(tasks, weighting="dwa", pos_weight=case_table.pos_weights())
        total = loss(net(image), {"lesion": mask, "lesion_present": flags, ...})

    Bundle config (``_target_`` syntax)::

        "loss": {"_target_": "medmtl.losses.MultiTaskLoss", "tasks": "@tasks",
                 "weighting": "uncertainty", "seg_loss": "dicefocal"},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-4,
                      "params": "$@loss.param_groups(@network.parameters(), 1e-5)"}
    """

    def __init__(
        self,
        tasks: Sequence[Task | Mapping[str, Any]],
        weighting: Weighting | str | None = None,
        seg_loss: str = "dicece",
        pos_weight: Mapping[str, float | Sequence[float] | torch.Tensor] | None = None,
        class_weights: Mapping[str, Sequence[float] | torch.Tensor] | None = None,
        seg_kwargs: Mapping[str, Any] | None = None,
        weighting_kwargs: Mapping[str, Any] | None = None,
        global_label_mean: bool = True,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        task_list = list(as_tasks(tasks, owner="MultiTaskLoss"))
        names = [t.name for t in task_list]
        if not names:
            raise ValueError("MultiTaskLoss: got no task; pass the tasks of the data spec or bundle config")
        if len(set(names)) != len(names):
            raise ValueError(f"MultiTaskLoss: duplicate task names {names}")
        for what, given in (("pos_weight", pos_weight), ("class_weights", class_weights)):
            unknown = sorted(set(given or {}) - set(names))
            if unknown:
                raise ValueError(f"MultiTaskLoss: {what} names unknown tasks {unknown}; tasks are {names}")
        self.tasks = tuple(task_list)
        self.task_losses = nn.ModuleDict()
        for task in task_list:
            module = build_task_loss(
                task,
                seg_loss=seg_loss,
                seg_kwargs=seg_kwargs,
                pos_weight=(pos_weight or {}).get(task.name),
                class_weights=(class_weights or {}).get(task.name),
                label_smoothing=label_smoothing,
            )
            try:
                self.task_losses[task.name] = module
            except KeyError as err:
                raise ValueError(
                    f"task name '{task.name}' clashes with a torch.nn.Module attribute; rename the task"
                ) from err

        if weighting is None or isinstance(weighting, str):
            weighting = build_weighting(weighting or "fixed", names, **dict(weighting_kwargs or {}))
        elif weighting_kwargs:
            raise ValueError("MultiTaskLoss: weighting_kwargs only applies when weighting is a registry name")
        if not isinstance(weighting, Weighting):
            raise TypeError(
                f"MultiTaskLoss: weighting must be a Weighting, a name or None, got {type(weighting).__name__}"
            )
        if set(weighting.task_names) != set(names):
            raise ValueError(
                f"MultiTaskLoss: the weighting was built for tasks {list(weighting.task_names)} but the loss has {names}"
            )
        self.weighting = weighting
        self.global_label_mean = bool(global_label_mean)
        self.last_components: dict[str, torch.Tensor] = {}
        self._last_weight_vector: torch.Tensor | None = None
        self.last_num_labelled: dict[str, int] = {}
        self.last_losses: dict[str, torch.Tensor] = {}
        self._last_absent: torch.Tensor | None = None
        self._local_means: dict[str, torch.Tensor] = {}

    @property
    def last_weights(self) -> dict[str, float]:
        """``{task: weight}`` the last forward used (``{}`` before the first), read on demand."""
        if self._last_weight_vector is None:
            return {}
        values = self._last_weight_vector.cpu().tolist()
        return dict(zip(self.weighting.task_names, values, strict=True))

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def compute_task_losses(
        self,
        preds: Mapping[str, torch.Tensor],
        targets: Mapping[str, Any],
        present: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Per-task masked losses, without weighting.

        Args:
            preds: ``{task: logits}``, plus a segmentation task's coarser logits under
                :func:`~medmtl.data.task_keys.deep_supervision_key` when the network is deeply
                supervised (nnU-Net: weights 1, 1/2, 1/4... normalised to sum 1, the target class map
                resized to each level by nearest neighbour); other keys are ignored.
            targets: ``{task: target}``, optionally with ``<task>_present`` flags.
            present: ``{task: (B,) flags}``; when ``None`` or missing a task, the flags are read
                from ``targets["<task>_present"]``, and without either every sample counts as labelled.

        Returns:
            ``(losses, absent)``: ``{task: loss}`` for tasks labelled in at least one sample, and
            the sum of ``pred.sum() * 0`` over the other tasks (``None`` when there is none).
            Under DDP with ``global_label_mean``, "labelled" means on any rank, and each loss is
            scaled by this rank's share of the labelled samples (zero where it has none).

        Raises:
            KeyError: when ``preds`` or ``targets`` lack a task.
            ValueError: on shape mismatches (naming the task, the shape received and the one expected).
        """
        values: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        device: torch.device | None = None
        for name, loss_fn in self.task_losses.items():
            if name not in preds:
                raise KeyError(f"MultiTaskLoss: the network returned no output for task '{name}' (got {sorted(preds)})")
            if name not in targets:
                raise KeyError(
                    f"MultiTaskLoss: the batch has no target for task '{name}' (got {sorted(targets)}); "
                    "fill a placeholder and a False '<task>_present' flag for unlabelled cases"
                )
            flags = (present or {}).get(name)
            if flags is None:
                flags = targets.get(present_key(name))
            pred = preds[name]
            device = pred.device
            flags = present_flags(flags, pred.shape[0], name)  # host flags are counted without a GPU read
            target = targets[name]
            if not isinstance(target, torch.Tensor):
                target = torch.as_tensor(target, device=pred.device)
            deeper = _deep_supervision_outputs(preds, name)
            values[name] = (
                _deeply_supervised(loss_fn, [pred, *deeper], target, flags) if deeper else loss_fn(pred, target, flags)
            )
            counts[name] = pred.shape[0] if flags is None else int(flags.sum())
        self.last_num_labelled = counts
        self._local_means = {k: v for k, v in values.items() if counts[k]}
        shares = self._rank_shares(counts, device) if device is not None else None

        losses: dict[str, torch.Tensor] = {}
        absent: torch.Tensor | None = None
        for name, value in values.items():
            if shares is None and counts[name]:
                losses[name] = value
            elif shares is not None and name in shares:
                losses[name] = value if shares[name] == 1.0 else value * shares[name]
            else:
                absent = value if absent is None else absent + value
        return losses, absent

    def _rank_shares(self, counts: Mapping[str, int], device: torch.device) -> dict[str, float] | None:
        """``{task: n_rank * world_size / n_global}`` for tasks labelled on some rank; ``None`` when inactive.

        Why: DDP averages the ranks' gradients, so scaling each rank's masked mean by its share of
        the global labelled count makes the average exactly the masked mean over the global batch
        (``sum_r n_r mean_r / N``). Every rank must call the loss the same number of times while
        this is active (training does); monitoring under ``torch.no_grad()``, where validation
        shards may differ in length, runs no collective.
        """
        world = idist.get_world_size()
        if not self.global_label_mean or world == 1 or self.needs_shared_params or not torch.is_grad_enabled():
            return None
        names = list(counts)  # the task order of self.task_losses: the same on every rank
        totals = torch.tensor([float(counts[n]) for n in names], dtype=torch.float64, device=device)
        totals = idist.all_reduce(totals)
        return {n: counts[n] * world / total for n, total in zip(names, totals.tolist(), strict=True) if total > 0}

    def forward(
        self,
        preds: Mapping[str, torch.Tensor],
        targets: Mapping[str, Any],
        present: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """Weighted multi-task loss.

        Args:
            preds: ``{task: logits}``: segmentation ``(B, C, *spatial)``, binary ``(B, 1)``,
                multilabel / multiclass ``(B, K)``.
            targets: ``{task: target}``: segmentation ``(B, 1, *spatial)`` class map, binary float
                ``(B, 1)``, multilabel float ``(B, K)``, multiclass long ``(B,)``; may also hold
                ``<task>_present`` flags (the single-dict style MONAI's trainer uses).
            present: optional ``{task: (B,) flags}``; takes precedence over the flags in ``targets``.

        Returns:
            scalar tensor, graph-connected even when no task is labelled (then exactly 0).

        Raises:
            KeyError: when ``preds`` or ``targets`` lack a task.
            ValueError: on shape mismatches.
        """
        losses, absent = self.compute_task_losses(preds, targets, present)
        # a copy on the device: reading it now would block the host (see ``last_weights``)
        self._last_weight_vector = self.weighting.weight_vector().detach().clone()
        total = self.weighting(losses)
        if absent is not None:
            total = total + absent.to(total.device)
        self.last_losses = losses
        self._last_absent = absent
        # this rank's own means (unscaled): the handler weighs them by last_num_labelled for the epoch log
        self.last_components = {k: v.detach() for k, v in self._local_means.items()}
        return total

    # -- trainer hooks ----------------------------------------------------------------------------
    @property
    def manipulates_gradients(self) -> bool:
        """True when :meth:`backward` must replace ``loss.backward()`` (PCGrad-like weightings)."""
        return bool(self.weighting.manipulates_gradients)

    @property
    def needs_shared_params(self) -> bool:
        """True when :meth:`before_backward` / :meth:`backward` need the shared parameters (GradNorm, PCGrad)."""
        return bool(self.weighting.requires_shared_grads or self.weighting.manipulates_gradients)

    def before_backward(self, shared_params: Iterable[torch.Tensor] | None = None) -> None:
        """Extra step between loss and backward (GradNorm's weight update); no-op otherwise.

        Fits a handler on ``IterationEvents.LOSS_COMPLETED`` of MONAI's stock ``SupervisedTrainer``.

        Raises:
            ValueError: when the weighting needs ``shared_params`` and none are given.
        """
        if self.weighting.requires_shared_grads:
            if shared_params is None:
                raise ValueError(f"{type(self.weighting).__name__} needs the shared parameters: pass shared_params")
            self.weighting.gradnorm_step(self.last_losses, shared_params)

    def backward(
        self,
        loss: torch.Tensor,
        shared_params: Iterable[torch.Tensor] | None = None,
        scale: float | None = None,
    ) -> None:
        """Backward for any weighting: call instead of ``loss.backward()`` in an iteration.

        Runs :meth:`before_backward`, then either the weighting's own ``backward`` (PCGrad-like)
        or ``loss.backward()``.

        Args:
            loss: the value returned by :meth:`forward` for this batch.
            shared_params: the network's shared parameters (needed by GradNorm and PCGrad).
            scale: multiplies what is backpropagated (AMP scaler factor, ``1 / accumulation_steps``).

        Raises:
            ValueError: when the weighting needs ``shared_params`` and none are given.
        """
        params = list(shared_params) if shared_params is not None else None
        self.before_backward(params)
        if self.weighting.manipulates_gradients:
            if params is None:
                raise ValueError(f"{type(self.weighting).__name__} needs the shared parameters: pass shared_params")
            factor = 1.0 if scale is None else scale
            losses = {k: v * factor for k, v in self.last_losses.items()}
            extra = None if self._last_absent is None else self._last_absent * factor
            self.weighting.backward(losses, params, extra=extra)
        else:
            (loss if scale is None else loss * scale).backward()

    def sync_gradients(self) -> None:
        """Average the weighting's learnable parameters' gradients across DDP ranks (before the step)."""
        self.weighting.sync_gradients()

    def on_epoch_end(self, epoch_losses: Mapping[str, float] | None = None) -> None:
        """Epoch hook, forwarded to the weighting (DWA history, schedules)."""
        self.weighting.on_epoch_end(epoch_losses)

    def param_groups(
        self, network_params: Iterable[torch.nn.Parameter] | None = None, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the network's with ``weight_decay``, this loss's without.

        Args:
            network_params: the network's parameters (omitted: only the loss's group).
            weight_decay: weight decay of the network group.

        Returns:
            list of groups for ``torch.optim`` (the loss group is left out when it is empty).
        """
        groups: list[dict[str, Any]] = []
        if network_params is not None:
            groups.append({"params": list(network_params), "weight_decay": weight_decay})
        own = [p for p in self.parameters() if p.requires_grad]
        if own:
            groups.append({"params": own, "weight_decay": 0.0})
        return groups

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}"
