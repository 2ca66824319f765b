"""Semi-supervised multi-task training (FixMatch pseudo-labels + segmentation consistency, as in MultiMix).

Why: medical data sets have many more images than labels. FixMatch (Sohn et al. 2020) uses an
unlabelled image twice: the prediction on a weakly augmented view becomes a hard target where it is
confident, and the network learns to give that answer on a strongly augmented view. MultiMix
(Haque et al. 2021) does the same for the classification tasks of a multi-task network and adds a
consistency term for segmentation, where a per-voxel hard target would be too noisy. Both views come
from :func:`medmtl.transforms.build_weak_strong_transforms`, which keeps them voxel-aligned.

How it plugs in: MONAI's ``SupervisedTrainer`` stays unchanged (STYLE: assembled, not subclassed);
:class:`SemiSupervisedIteration` is its ``iteration_update``. Each step takes the trainer's labelled
batch (plus, optionally, one batch from each extra labelled loader, e.g. segmentation-labelled and
classification-labelled sources) and one batch from an unlabelled loader that is re-iterated
whenever it runs out. The supervised :class:`~medmtl.losses.MultiTaskLoss` sees the labelled
predictions only; the unlabelled views are scored by :func:`pseudo_label_loss` (classification
tasks) and :func:`consistency_loss` (segmentation tasks) and never reach the supervised loss. The
same events as MONAI's own iteration fire, so every handler keeps working, and
:class:`SemiSupervisedHandler` turns the per-step statistics (fraction of pseudo-labels kept per
task, the unsupervised losses, the ramp-up factor) into epoch values in ``engine.state.metrics``,
where MONAI's ``MLFlowHandler`` picks them up.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys, look_up_option

from medmtl.data.task_keys import CONSISTENCY_LOSS_KEY, ENGINE_LOSS_KEYS, PSEUDO_LABEL_LOSS_KEY, SUPERVISED_LOSS_KEY
from medmtl.data.tasks import Task, TaskKind, as_tasks
from medmtl.engines.handlers import unwrap
from medmtl.transforms.augment_pairs import STRONG_SUFFIX, WEAK_SUFFIX, strong_key, weak_key

__all__ = [
    "CONSISTENCY_KINDS",
    "SemiSupervisedHandler",
    "SemiSupervisedIteration",
    "consistency_loss",
    "pseudo_label_loss",
    "pseudo_label_mask",
    "sigmoid_rampup",
]

logger = logging.getLogger(__name__)

CONSISTENCY_KINDS = ("kl", "mse")
"""``kl``: KL(weak || strong) of the per-voxel class distributions; ``mse``: squared difference of
the probabilities (Laine & Aila's Pi-model)."""

_FRACTION = "pseudo_label_fraction"


def _as_task(task: Task | Mapping[str, Any]) -> Task:
    return as_tasks([task], owner="pseudo_label_mask")[0]


def pseudo_label_mask(
    logits: torch.Tensor, task: Task | Mapping[str, Any], threshold: float = 0.7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-targets from (weak-view) logits and where they are confident enough to train on.

    Confidence is the probability of the predicted answer: ``max(p, 1 - p)`` of the sigmoid for
    binary tasks and for each label of a multilabel task, the largest softmax probability for a
    multiclass task. A prediction is kept when its confidence is ``>= threshold``; a binary
    confidence is never below 0.5, so thresholds up to 0.5 keep everything.

    Args:
        logits: ``(B, K)`` logits (``K = 1`` for binary); used without gradient.
        task: the task (its kind picks sigmoid or softmax).
        threshold: confidence needed to keep a pseudo-label, in ``[0, 1]`` (FixMatch uses 0.95 on
            natural images; medical classifiers are less calibrated, hence 0.7).

    Returns:
        ``(targets, keep)``: binary / multilabel float targets ``(B, K)`` in {0, 1} with a bool
        ``(B, K)`` mask (each label kept on its own); multiclass long targets ``(B,)`` with a bool
        ``(B,)`` mask.

    Raises:
        ValueError: for a segmentation task (use :func:`consistency_loss`), a threshold outside
            ``[0, 1]`` or logits whose shape does not fit the task.
    """
    task = task if isinstance(task, Task) else _as_task(task)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"task '{task.name}': pseudo-label threshold must be in [0, 1], got {threshold!r}")
    if task.kind == TaskKind.SEGMENTATION:
        raise ValueError(
            f"task '{task.name}' is a segmentation task: per-voxel hard pseudo-labels are not used, "
            "train it with consistency_loss on the two views"
        )
    if logits.dim() != 2 or logits.shape[1] != task.num_outputs:
        raise ValueError(
            f"task '{task.name}' ({task.kind.value}): logits have shape {tuple(logits.shape)}, expected "
            f"(B, {task.num_outputs})"
        )
    logits = logits.detach().float()
    if task.kind == TaskKind.MULTICLASS:
        confidence, targets = torch.softmax(logits, dim=1).max(dim=1)
        return targets, confidence >= threshold
    prob = torch.sigmoid(logits)
    confidence = torch.maximum(prob, 1.0 - prob)
    return (prob >= 0.5).float(), confidence >= threshold


def pseudo_label_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    keep: torch.Tensor,
    task: Task | Mapping[str, Any],
) -> torch.Tensor:
    """Cross-entropy of (strong-view) logits against kept pseudo-labels, FixMatch-normalised.

    The per-sample (per-label for multilabel) losses are multiplied by ``keep`` and averaged over
    *all* entries, as in FixMatch: the term grows as the model becomes confident, instead of
    giving full weight to the first few, often wrong, confident predictions.

    Args:
        logits: ``(B, K)`` logits of the strong view.
        targets: from :func:`pseudo_label_mask`.
        keep: from :func:`pseudo_label_mask`.
        task: the task (binary / multilabel: BCE; multiclass: CE).

    Returns:
        A scalar; ``0`` (still attached to ``logits``) when nothing is kept.
    """
    task = task if isinstance(task, Task) else _as_task(task)
    logits = logits.float()
    if task.kind == TaskKind.MULTICLASS:
        per_entry = F.cross_entropy(logits, targets.long(), reduction="none")
    else:
        per_entry = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if per_entry.shape != keep.shape:
        raise ValueError(
            f"task '{task.name}': pseudo-label mask has shape {tuple(keep.shape)}, the loss {tuple(per_entry.shape)}"
        )
    return (per_entry * keep.to(per_entry.dtype)).sum() / max(per_entry.numel(), 1)


def consistency_loss(
    weak_logits: torch.Tensor,
    strong_logits: torch.Tensor,
    kind: str = "kl",
) -> torch.Tensor:
    """Disagreement between the strong view's prediction and the (detached) weak view's.

    Channels are on dim 1. Two or more channels are class distributions (softmax); one channel is a
    Bernoulli probability (sigmoid), so a single-channel head is never pushed through a softmax,
    which would make both distributions identically 1 and the term identically 0. The weak view is
    the target and gets no gradient (FixMatch / mean-teacher style), so the network is pulled
    towards its own prediction on the easier view, never the other way round.

    Args:
        weak_logits: ``(B, C, *spatial)`` (or ``(B, C)``) logits of the weak view.
        strong_logits: logits of the strong view, same shape.
        kind: ``"kl"``: ``KL(p_weak || p_strong)`` summed over channels (the two Bernoulli
            outcomes for one channel), averaged over samples and voxels; ``"mse"``: mean squared
            difference of the probabilities.

    Returns:
        A non-negative scalar, exactly ``0`` when the two logits tensors are equal and positive
        when their probabilities differ.

    Raises:
        ValueError: for different shapes, fewer than 2 dims, or an unknown ``kind``.
    """
    kind = look_up_option(kind, CONSISTENCY_KINDS)
    if weak_logits.shape != strong_logits.shape or weak_logits.dim() < 2:
        raise ValueError(
            f"consistency_loss: weak logits {tuple(weak_logits.shape)} and strong logits "
            f"{tuple(strong_logits.shape)} must have the same (B, C, ...) shape; the strong view must be the weak "
            "view plus photometric changes (build_weak_strong_transforms), never a second spatial transform"
        )
    weak = weak_logits.detach().float()
    strong = strong_logits.float()
    if weak.shape[1] == 1:
        if kind == "mse":
            return F.mse_loss(torch.sigmoid(strong), torch.sigmoid(weak))
        p = torch.sigmoid(weak)
        log_p, log_not_p = F.logsigmoid(weak), F.logsigmoid(-weak)
        log_q, log_not_q = F.logsigmoid(strong), F.logsigmoid(-strong)
        return (p * (log_p - log_q) + (1.0 - p) * (log_not_p - log_not_q)).mean()
    if kind == "mse":
        return F.mse_loss(torch.softmax(strong, dim=1), torch.softmax(weak, dim=1))
    log_p = torch.log_softmax(weak, dim=1)
    log_q = torch.log_softmax(strong, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = current / length`` clipped to ``[0, 1]`` (Laine & Aila 2017).

    Unsupervised terms start near 0 and reach their full weight after ``length`` epochs, so early
    pseudo-labels of an untrained network cannot dominate; ``length <= 0`` gives 1 from the start.
    """
    if length <= 0:
        return 1.0
    t = min(max(float(current) / float(length), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


class EmptyLoaderError(ValueError):
    """A loader of :class:`SemiSupervisedIteration` yields no batch at all."""


class _Cycle:
    """Re-iterates a loader whenever it is exhausted (``itertools.cycle`` would replay cached batches,
    freezing the augmentations, and keep a whole epoch in memory); calls ``sampler.set_epoch`` so a
    ``DistributedSampler`` reshuffles each pass."""

    def __init__(self, loader: Iterable[Any], name: str) -> None:
        self.loader = loader
        self.name = name
        self.passes = 0
        self._iterator: Iterator[Any] | None = None

    def _restart(self) -> None:
        set_epoch = getattr(getattr(self.loader, "sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.passes)
        self._iterator = iter(self.loader)
        self.passes += 1

    def next(self) -> Any:
        if self._iterator is None:
            self._restart()
        try:
            return next(self._iterator)  # type: ignore[arg-type]
        except StopIteration:
            self._restart()
            try:
                return next(self._iterator)  # type: ignore[arg-type]
            except StopIteration:
                raise EmptyLoaderError(
                    f"SemiSupervisedIteration: the {self.name} yields no batch (empty dataset?)"
                ) from None


def _plain(x: Any, device: Any, non_blocking: bool) -> torch.Tensor:
    tensor = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
    return tensor.to(device=device, non_blocking=non_blocking)


def _as_dict(preds: Any) -> dict[str, torch.Tensor]:
    if not isinstance(preds, Mapping):
        raise TypeError(
            f"SemiSupervisedIteration: the network must return {{task: logits}}, got {type(preds).__name__}"
        )
    return dict(preds)


def _batch_size(inputs: Any) -> int:
    first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    return int(first.shape[0])


def _concat(parts: list[Any], what: str, hint: str) -> Any:
    """Concatenate prepared batches along the batch dim (tensors, or dicts of tensors)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, Mapping):
        keys = list(first)
        for part in parts[1:]:
            if not isinstance(part, Mapping) or list(part) != keys:
                raise ValueError(f"SemiSupervisedIteration: {what} with different keys cannot be stacked; {hint}")
        return {k: _concat([p[k] for p in parts], f"{what}['{k}']", hint) for k in keys}
    try:
        return torch.cat([torch.as_tensor(p) for p in parts], dim=0)
    except RuntimeError as err:
        shapes = [tuple(torch.as_tensor(p).shape) for p in parts]
        raise ValueError(
            f"SemiSupervisedIteration: {what} of shapes {shapes} cannot be stacked into one batch; {hint}"
        ) from err


class SemiSupervisedIteration:
    """``iteration_update`` for MONAI's ``SupervisedTrainer``: supervised + pseudo-label + consistency losses.

    Per step, with ``r`` the ramp-up factor (:func:`sigmoid_rampup`)::

        loss = MultiTaskLoss(net(labelled), targets)
             + r * unsupervised_weight * sum_{classification t} pseudo_label_loss(net(strong)[t], pseudo(net(weak)[t]))
             + r * consistency_weight  * sum_{segmentation t}   consistency_loss(net(weak)[t], net(strong)[t])

    The weak view is predicted without gradient. The labelled and strong inputs share one forward
    pass (``joint_forward``), but the outputs are split by row before any loss: the supervised
    loss gets the labelled rows only, so unlabelled samples never enter it (nor its presence
    masks, normalisation or weighting state). Fires FORWARD, LOSS, BACKWARD and MODEL completed like
    MONAI's iteration; at LOSS_COMPLETED ``engine.state.output`` also holds ``loss_supervised``,
    ``loss_pseudo_label``, ``loss_consistency``, ``unsupervised_ramp`` and
    ``pseudo_label_fraction_<task>`` (detached), which :class:`SemiSupervisedHandler` logs.
    ``loss`` is the total that was backpropagated.

    AMP: with ``amp=True`` on CUDA the forward passes run under autocast and the trainer's
    ``GradScaler`` scales the backward; on CPU the flag is ignored (full precision). Gradient
    accumulation (``accumulation_steps``) follows MONAI's trainer. Gradient-surgery weightings
    (PCGrad) project the supervised task losses; the unsupervised terms are added unprojected.

    Args:
        unlabelled_loader: loader of unlabelled samples carrying ``<key><weak_suffix>`` and
            ``<key><strong_suffix>`` for every input key (see
            :func:`medmtl.transforms.build_weak_strong_transforms`); re-iterated when exhausted, so it
            may be longer or shorter than the labelled loader.
        tasks: tasks that get an unsupervised term (default: every task of
            ``engine.loss_function.tasks``); segmentation tasks get the consistency loss, the others
            pseudo-labels.
        input_keys: the network's input key(s), as given to ``MultiTaskPrepareBatch``.
        threshold: pseudo-label confidence threshold, one number or ``{task: threshold}`` (tasks
            not listed: 0.7).
        unsupervised_weight: weight of the pseudo-label term (FixMatch's lambda_u).
        consistency_weight: weight of the segmentation consistency term.
        consistency: ``"kl"`` or ``"mse"`` (see :func:`consistency_loss`).
        rampup_epochs: epochs over which both unsupervised weights ramp up from ~0 (0: no ramp-up).
        labelled_loaders: extra labelled loaders (e.g. one per label source); one batch of each is
            prepared with the trainer's ``prepare_batch`` and appended to the trainer's batch, so
            each step sees every source. Their samples must stack with the trainer's (same preset
            and size); their ``<task>_present`` flags mask the losses as usual.
        weak_suffix: suffix of the weak views' keys.
        strong_suffix: suffix of the strong views' keys.
        joint_forward: run the labelled and strong inputs through the network as one stacked
            batch and split the outputs. Needed under DDP (one forward pass per backward) and what
            FixMatch does; BatchNorm statistics then mix both parts (instance / group norm: no
            effect). Requires equal input sizes; ``False`` runs two passes.

    Raises:
        ValueError: for negative weights or ramp-up, or a threshold outside ``[0, 1]``.

    Example (bundle ``train.json``)::

        "unlabelled": {"dataset": {"_target_": "Dataset", "data": "$@cases.datalist('unlabelled')",
                                   "transform": {"_target_": "medmtl.transforms.build_weak_strong_transforms",
                                                 "image_keys": "@input_keys", "spatial_dims": 2,
                                                 "preprocessing": "@validate::preprocessing"}},
                       "dataloader": {"_target_": "DataLoader", "dataset": "@unlabelled::dataset",
                                      "batch_size": "@batch_size", "shuffle": true}},
        "semi_supervised": {"_target_": "medmtl.engines.SemiSupervisedIteration",
                            "unlabelled_loader": "@unlabelled::dataloader", "tasks": "@tasks",
                            "input_keys": "@input_keys", "threshold": 0.7, "rampup_epochs": 10},
        ... "trainer": {"_target_": "SupervisedTrainer", ..., "iteration_update": "@semi_supervised"}
        ... "handlers": [..., {"_target_": "medmtl.engines.SemiSupervisedHandler"}]
    """

    def __init__(
        self,
        unlabelled_loader: Iterable[Mapping[str, Any]],
        tasks: Sequence[Task | Mapping[str, Any]] | None = None,
        input_keys: str | Sequence[str] = "image",
        threshold: float | Mapping[str, float] = 0.7,
        unsupervised_weight: float = 1.0,
        consistency_weight: float = 1.0,
        consistency: str = "kl",
        rampup_epochs: float = 0.0,
        labelled_loaders: Sequence[Iterable[Mapping[str, Any]]] | None = None,
        weak_suffix: str = WEAK_SUFFIX,
        strong_suffix: str = STRONG_SUFFIX,
        joint_forward: bool = True,
    ) -> None:
        for name, value in (
            ("unsupervised_weight", unsupervised_weight),
            ("consistency_weight", consistency_weight),
            ("rampup_epochs", rampup_epochs),
        ):
            if not math.isfinite(float(value)) or float(value) < 0:
                raise ValueError(f"SemiSupervisedIteration: {name} must be finite and >= 0, got {value!r}")
        thresholds = threshold.values() if isinstance(threshold, Mapping) else [threshold]
        if any(not 0.0 <= float(t) <= 1.0 for t in thresholds):
            raise ValueError(f"SemiSupervisedIteration: threshold must be in [0, 1], got {threshold!r}")
        self.tasks: tuple[Task, ...] | None = (
            None if tasks is None else as_tasks(tasks, owner="SemiSupervisedIteration")
        )
        self.input_keys = (input_keys,) if isinstance(input_keys, str) else tuple(input_keys)
        self.threshold = threshold
        self.unsupervised_weight = float(unsupervised_weight)
        self.consistency_weight = float(consistency_weight)
        self.consistency = look_up_option(consistency, CONSISTENCY_KINDS)
        self.rampup_epochs = float(rampup_epochs)
        self.weak_suffix = weak_suffix
        self.strong_suffix = strong_suffix
        self.joint_forward = bool(joint_forward)
        self._unlabelled = _Cycle(unlabelled_loader, "unlabelled loader")
        self._supervised_only = False
        self._labelled = [_Cycle(loader, f"labelled loader {i}") for i, loader in enumerate(labelled_loaders or [])]

    # -- helpers ------------------------------------------------------------------------------------
    def _tasks(self, engine: Engine) -> tuple[Task, ...]:
        if self.tasks is None:
            tasks = getattr(engine.loss_function, "tasks", None)
            if not tasks:
                raise ValueError(
                    "SemiSupervisedIteration: pass 'tasks' (the loss function has no .tasks to take them from)"
                )
            self.tasks = as_tasks(tasks, owner="SemiSupervisedIteration")
        return self.tasks

    def _threshold(self, task: str) -> float:
        if isinstance(self.threshold, Mapping):
            return float(self.threshold.get(task, 0.7))
        return float(self.threshold)

    def ramp(self, engine: Engine) -> float:
        """Ramp-up factor at the current step (fractional epochs since the start)."""
        if self.rampup_epochs <= 0:
            return 1.0
        epoch_length = engine.state.epoch_length or 1
        done = max(engine.state.epoch - 1, 0) + ((engine.state.iteration - 1) % epoch_length) / epoch_length
        return sigmoid_rampup(done, self.rampup_epochs)

    def _labelled_batch(self, engine: Engine, batchdata: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        prepared = [
            engine.prepare_batch(batch, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
            for batch in [batchdata, *(cycle.next() for cycle in self._labelled)]
        ]
        hint = "use the same preset and spatial_size for every labelled dataset"
        inputs = _concat([p[0] for p in prepared], "labelled inputs", hint)
        targets = _concat([p[1] for p in prepared], "labelled targets", hint)
        return inputs, targets

    def _joint(self, inputs: Any, strong_inputs: Any) -> Any:
        """Labelled and strong inputs stacked into one batch (plain tensors)."""
        if isinstance(inputs, Mapping):
            labelled: Any = {k: _plain(v, None, False) for k, v in inputs.items()}
        else:
            labelled = _plain(inputs, None, False)
        hint = (
            "joint_forward=True runs labelled and strong unlabelled inputs as one batch: give both datasets the "
            "same preprocessing size, or set joint_forward=False (not under DDP, which allows one forward per backward)"
        )
        return _concat([labelled, strong_inputs], "labelled and unlabelled inputs", hint)

    def _views(self, engine: Engine, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        wanted = [
            f(k, s)
            for k in self.input_keys
            for f, s in ((weak_key, self.weak_suffix), (strong_key, self.strong_suffix))
        ]
        missing = [k for k in wanted if k not in batch]
        if missing:
            raise KeyError(
                f"unlabelled batch lacks {missing} (has {sorted(batch)}); build the unlabelled dataset's transform with "
                "medmtl.transforms.build_weak_strong_transforms for the input keys "
                f"{list(self.input_keys)}"
            )
        device, non_blocking = engine.state.device, engine.non_blocking
        views = []
        for key_of, suffix in ((weak_key, self.weak_suffix), (strong_key, self.strong_suffix)):
            tensors = {k: _plain(batch[key_of(k, suffix)], device, non_blocking) for k in self.input_keys}
            views.append(tensors[self.input_keys[0]] if len(self.input_keys) == 1 else tensors)
        return views[0], views[1]

    def unsupervised_terms(
        self,
        tasks: Sequence[Task],
        weak_preds: Mapping[str, torch.Tensor],
        strong_preds: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Pseudo-label and consistency sums over ``tasks`` plus the fraction of pseudo-labels kept per task.

        Both sums start from a graph-connected zero of the strong predictions, so they are tensors
        even without tasks of a kind and every head stays in the graph (DDP).
        """
        missing = [t.name for t in tasks if t.name not in weak_preds or t.name not in strong_preds]
        if missing:
            raise KeyError(f"SemiSupervisedIteration: the network returned no output for tasks {missing}")
        zero = sum(p.float().sum() for p in strong_preds.values()) * 0.0
        pseudo, consistency = zero, zero
        fractions: dict[str, torch.Tensor] = {}
        for task in tasks:
            if task.is_dense:
                consistency = consistency + consistency_loss(
                    weak_preds[task.name], strong_preds[task.name], self.consistency
                )
            else:
                targets, keep = pseudo_label_mask(weak_preds[task.name], task, self._threshold(task.name))
                pseudo = pseudo + pseudo_label_loss(strong_preds[task.name], targets, keep, task)
                fractions[task.name] = keep.float().mean()
        return pseudo, consistency, fractions

    def _next_unlabelled(self) -> Mapping[str, Any] | None:
        """The next unlabelled batch, or ``None`` (with one warning) when there are no unlabelled cases.

        Why: a learning curve's 100 % point (``--label_fraction 1.0``, no ``unlabelled`` split) leaves
        the unlabelled stream empty; training on the labelled data alone is what the user expects there,
        not a crash.
        """
        if self._supervised_only:
            return None
        try:
            return self._unlabelled.next()
        except EmptyLoaderError:
            self._supervised_only = True
            logger.warning(
                "semi-supervised training: the unlabelled stream is empty (every training case is labelled and the "
                "spec has no 'unlabelled' split), so the pseudo-label and consistency terms are off and training "
                "is supervised only; lower --label_fraction or add unlabelled cases to use them"
            )
            return None

    # -- the iteration ------------------------------------------------------------------------------
    def __call__(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("SemiSupervisedIteration got no batch")
        tasks = self._tasks(engine)
        inputs, targets = self._labelled_batch(engine, batchdata)
        unlabelled = self._next_unlabelled()
        weak_inputs, strong_inputs = (None, None) if unlabelled is None else self._views(engine, unlabelled)
        engine.state.output = {CommonKeys.IMAGE: inputs, CommonKeys.LABEL: targets}

        acc = int(getattr(engine, "accumulation_steps", 1) or 1)
        should_zero_grad, should_step = True, True
        if acc > 1:
            epoch_length = engine.state.epoch_length
            local = (engine.state.iteration - 1) % epoch_length if epoch_length else engine.state.iteration - 1
            should_zero_grad = local % acc == 0
            should_step = (local + 1) % acc == 0 or (epoch_length is not None and local + 1 == epoch_length)

        device = torch.device(engine.state.device) if engine.state.device is not None else torch.device("cpu")
        use_amp = bool(getattr(engine, "amp", False)) and device.type == "cuda"
        scaler = getattr(engine, "scaler", None) if use_amp else None
        if scaler is not None and not scaler.is_enabled():
            scaler = None

        engine.network.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        ramp = self.ramp(engine)
        with torch.autocast("cuda", **engine.amp_kwargs) if use_amp else nullcontext():
            if unlabelled is None:
                preds = _as_dict(engine.inferer(inputs, engine.network))
            else:
                with torch.no_grad():
                    weak_preds = _as_dict(engine.inferer(weak_inputs, engine.network))
                if self.joint_forward:
                    n = _batch_size(inputs)
                    both = _as_dict(engine.inferer(self._joint(inputs, strong_inputs), engine.network))
                    preds = {k: v[:n] for k, v in both.items()}
                    strong_preds = {k: v[n:] for k, v in both.items()}
                else:
                    preds = _as_dict(engine.inferer(inputs, engine.network))
                    strong_preds = _as_dict(engine.inferer(strong_inputs, engine.network))
            engine.state.output[CommonKeys.PRED] = preds
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            supervised = engine.loss_function(preds, targets).mean()
            if unlabelled is None:
                pseudo = consistency = supervised.detach() * 0.0
                fractions: dict[str, torch.Tensor] = {}
            else:
                pseudo, consistency, fractions = self.unsupervised_terms(tasks, weak_preds, strong_preds)
            unsupervised = ramp * (self.unsupervised_weight * pseudo + self.consistency_weight * consistency)
            total = supervised + unsupervised
        output = engine.state.output
        output[CommonKeys.LOSS] = total
        output[SUPERVISED_LOSS_KEY] = supervised.detach()
        output[PSEUDO_LABEL_LOSS_KEY] = pseudo.detach()
        output[CONSISTENCY_LOSS_KEY] = consistency.detach()
        output["unsupervised_ramp"] = torch.tensor(ramp)
        for name, fraction in fractions.items():
            output[f"{_FRACTION}_{name}"] = fraction
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if getattr(engine.loss_function, "manipulates_gradients", False):
            # unsupervised terms first, keeping the (possibly shared) graph for the projected supervised backward
            rest = unsupervised / acc
            if rest.requires_grad:  # a constant zero without unlabelled data
                (scaler.scale(rest) if scaler is not None else rest).backward(retain_graph=True)
            scale = float(scaler.get_scale()) if scaler is not None else 1.0
            engine.loss_function.backward(supervised, unwrap(engine.network).shared_parameters(), scale=scale / acc)
        else:
            scaled = total / acc
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            if scaler is not None:
                scaler.step(engine.optimizer)
                scaler.update()
            else:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class SemiSupervisedHandler:
    """Epoch values of the semi-supervised terms in ``engine.state.metrics`` (so MLflow logs them).

    Collects, at every ``LOSS_COMPLETED`` of a trainer running :class:`SemiSupervisedIteration`
    (before MONAI decollates the output), the fraction of pseudo-labels kept per task, the
    supervised / pseudo-label / consistency losses and the ramp-up factor, and at
    ``EPOCH_COMPLETED`` writes their epoch means as ``<prefix>pseudo_label_fraction/<task>``,
    ``<prefix>loss_supervised``, ``<prefix>loss_pseudo_label``, ``<prefix>loss_consistency`` and
    ``<prefix>unsupervised_ramp``, and logs one line. A fraction stuck near 0 means the threshold
    is too high for the model's calibration; near 1 early in training, it is too low.

    List it in the trainer's ``train_handlers`` (attached before MONAI's ``MLFlowHandler``, which
    ``--tracking mlflow`` adds later, so MLflow sees the values of the epoch just finished).

    Args:
        prefix: metric name prefix (``train_`` like :class:`~medmtl.engines.MultiTaskLossHandler`).
        log_level: level of the per-epoch log line (``None``: no line).
    """

    _SCALARS = (*ENGINE_LOSS_KEYS, "unsupervised_ramp")

    def __init__(self, prefix: str = "train_", log_level: int | None = logging.INFO) -> None:
        self.prefix = prefix
        self.log_level = log_level
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.loss_completed, IterationEvents.LOSS_COMPLETED):
            return
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.loss_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def loss_completed(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, Mapping):
            return
        for key, value in output.items():
            if key in self._SCALARS:
                name = key
            elif isinstance(key, str) and key.startswith(f"{_FRACTION}_"):
                name = f"{_FRACTION}/{key[len(_FRACTION) + 1 :]}"
            else:
                continue
            self._sums[name] += float(value)
            self._counts[name] += 1

    def epoch_completed(self, engine: Engine) -> None:
        means = {name: self._sums[name] / self._counts[name] for name in self._sums if self._counts[name]}
        for name, value in means.items():
            engine.state.metrics[f"{self.prefix}{name}"] = value
        if self.log_level is not None and means:
            text = ", ".join(f"{name}={value:.4g}" for name, value in sorted(means.items()))
            logger.log(self.log_level, "epoch %d semi-supervised: %s", engine.state.epoch, text)
        self._sums.clear()
        self._counts.clear()
