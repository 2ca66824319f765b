"""Guards that stop a training run early, clearly, and without damaging what it already saved.

- :class:`NonFiniteLossGuard`: a NaN or Inf loss (total or any task's) stops the run before the
  optimizer applies it, with an error naming the epoch, the iteration and the task(s). Without it a
  diverged run trains on for hours, validation metrics turn NaN and, worst, the NaN weights
  overwrite ``last.pt``. :class:`medmtl.engines.ResumableCheckpoint` adds the second line of
  defence: it never writes weights that are not finite.
- :class:`TrainingMemoryGuard`: before the first optimizer step, estimates the memory one
  training step needs (activations of the batch, weights, gradients, optimizer state) and stops
  with a message that says what to lower when it exceeds the budget, instead of an out-of-memory
  crash (or hours of swapping) somewhere in the first epoch.

Both raise from inside the engine, so ignite stops the run without firing ``COMPLETED`` (no final
checkpoint of a bad state). With ``exit_on_error=True`` (what bundles set) the exception is a
:class:`GuardExit`, a ``SystemExit``: ``python -m monai.bundle run`` then ends with the message on
stderr and exit status 1 instead of a traceback that buries it (MONAI wraps every ``Exception`` of
a config expression in a ``RuntimeError``), the way :func:`medmtl.data.validate.require_valid_dataset`
stops a bundle on bad data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from medmtl.byte_size import parse_byte_size
from medmtl.engines.network_wrappers import unwrap
from medmtl.networks.memory import MemoryBudgetError, estimate_activation_bytes

__all__ = [
    "GuardExit",
    "NonFiniteError",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "TrainingMemoryGuard",
    "non_finite_tensors",
]

logger = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """Weights or a loss became NaN/Inf: the run cannot go on usefully."""


class NonFiniteLossError(NonFiniteError):
    """The training loss (total or a task's) is NaN or Inf at a known epoch and iteration."""

    def __init__(self, message: str, epoch: int, iteration: int, tasks: list[str]) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.iteration = iteration
        self.tasks = tasks

    def __reduce__(self):  # picklable (DDP / process pools), like medmtl's data errors
        return type(self), (self.args[0], self.epoch, self.iteration, self.tasks)


class GuardExit(SystemExit):
    """A guard stopped the run: exit status 1 with ``"<ErrorType>: <message>"`` and no traceback.

    Attributes:
        error: the guard's exception (:class:`NonFiniteLossError`, ``MemoryBudgetError``).
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(f"{type(error).__name__}: {error}")


def _stop(error: Exception, exit_on_error: bool) -> None:
    logger.error("%s", error)  # in the run's log too, not only on stderr
    if exit_on_error:
        raise GuardExit(error) from error
    raise error


def non_finite_tensors(module: torch.nn.Module) -> Iterator[str]:
    """Names of the floating-point parameters and buffers of ``module`` that hold NaN or Inf."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
            yield name


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def _finite_flags(values: Mapping[str, Any]) -> dict[str, bool]:
    """``{name: all finite}`` with one device-to-host transfer for all tensors.

    Why: the guard runs every iteration; one check per value would block the host once per task
    on a GPU, where a single transfer costs the same as one.
    """
    flags = {name: _finite(v) for name, v in values.items() if not isinstance(v, torch.Tensor)}
    tensors = {name: v for name, v in values.items() if isinstance(v, torch.Tensor)}
    if tensors:
        device = next(iter(tensors.values())).device
        checks = torch.stack([torch.isfinite(v.detach()).all().to(device) for v in tensors.values()])
        flags.update(zip(tensors, checks.tolist(), strict=True))
    return flags


def _number(value: Any) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


class NonFiniteLossGuard:
    """Stop training at the first NaN/Inf loss, before the optimizer step, naming the task.

    Checks at MONAI's ``IterationEvents.LOSS_COMPLETED`` (after the loss, before ``backward`` and
    ``optimizer.step``): the weights stay those of the previous iteration and no checkpoint of the
    bad state is written. The per-task losses come from the loss function's ``last_components``
    (:class:`medmtl.losses.MultiTaskLoss`), so the message says which head diverged; a custom
    iteration that fires no ``LOSS_COMPLETED`` is still checked at ``ITERATION_COMPLETED``.

    Usage in a bundle's ``train::handlers``::

        {"_target_": "medmtl.engines.NonFiniteLossGuard", "exit_on_error": true}

    Args:
        exit_on_error: raise :class:`GuardExit` (exit status 1, the message, no traceback) instead of
            :class:`NonFiniteLossError`; for bundles.

    Raises:
        NonFiniteLossError: from inside the trainer, with a message like ``epoch 3, iteration 7 (42
            overall): non-finite training loss (total nan; task lesion nan)``.
        GuardExit: the same, with ``exit_on_error=True``.
    """

    def __init__(self, exit_on_error: bool = False) -> None:
        self.exit_on_error = exit_on_error
        self._checked_iteration = -1

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.loss_completed, IterationEvents.LOSS_COMPLETED):
            return
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.loss_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    def loss_completed(self, engine: Engine) -> None:
        self._check(engine, before_step=True)

    def iteration_completed(self, engine: Engine) -> None:
        """Fallback for iterations that fire no ``LOSS_COMPLETED`` (checked once per iteration)."""
        self._check(engine, before_step=False)

    def _check(self, engine: Engine, before_step: bool) -> None:
        if engine.state.iteration == self._checked_iteration:
            return
        self._checked_iteration = engine.state.iteration
        output = engine.state.output
        first = output[0] if isinstance(output, list) and output else output
        total = first.get(CommonKeys.LOSS) if isinstance(first, Mapping) else None
        components = getattr(getattr(engine, "loss_function", None), "last_components", None) or {}
        finite = _finite_flags({"": total, **components} if total is not None else dict(components))
        bad_tasks = sorted(t for t in components if not finite[t])
        bad = not finite.get("", True) or bool(bad_tasks)
        if not _any_rank(bad):
            return
        state = engine.state
        in_epoch = (state.iteration - 1) % state.epoch_length + 1 if state.epoch_length else state.iteration
        parts = [] if total is None else [f"total {_number(total):g}"]
        parts += [f"task {t} {_number(components[t]):g}" for t in bad_tasks]
        if not bad:
            parts = ["on another DDP rank"]
        # raising (not engine.terminate()) stops at once: terminate() would still run backward and
        # optimizer.step on this loss and then fire COMPLETED, which saves the final checkpoint
        error = NonFiniteLossError(
            f"epoch {state.epoch}, iteration {in_epoch} ({state.iteration} overall): non-finite training loss "
            f"({'; '.join(parts)}). Training stopped {'before this step was applied' if before_step else 'here'}; "
            "the checkpoints keep the last finite weights. Lower the learning rate, check the inputs and labels of this batch "
            "(NaN voxels, empty masks with a loss that divides by them), or use AMP's loss scaling on CUDA",
            epoch=state.epoch,
            iteration=state.iteration,
            tasks=bad_tasks,
        )
        _stop(error, self.exit_on_error)


def _any_rank(flag: bool) -> bool:
    """``flag`` OR-ed over DDP ranks: every rank must stop at the same step, or the others hang in backward."""
    if idist.get_world_size() == 1:
        return flag
    return idist.all_reduce(float(flag)) > 0  # ignite puts the number on the backend's device (NCCL: the GPU)


def _bytes(value: int | float | str | None) -> int | None:
    """``8e9``, ``"12GiB"``, ``"512 MB"`` -> bytes (:func:`medmtl.byte_size.parse_byte_size`)."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return None if value is None else int(value)
    return parse_byte_size(value, "TrainingMemoryGuard(max_bytes)")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


class TrainingMemoryGuard:
    """Stop before the first training step when one step would not fit in memory.

    Estimate: the activations of one no-grad forward of one sample of the first batch
    (:func:`medmtl.networks.memory.estimate_activation_bytes`, under autocast when the trainer uses AMP)
    times the batch size times ``activation_factor`` (autograd keeps the activations for backward
    and backward creates their gradients), plus the weights times ``4`` (weights, gradients, two
    Adam moments). It is a coarse upper bound meant to catch a batch or patch size that is several
    times too large, with a message saying so, not to predict the peak to the megabyte.

    Args:
        max_bytes: the budget: bytes, or text such as ``"10GiB"``; ``None`` uses the free memory of
            the CUDA device and skips the check on CPU (where the OS swaps rather than fails).
        activation_factor: multiplier of the forward activations (see above).
        exit_on_error: raise :class:`GuardExit` (exit status 1, the message, no traceback) instead of
            ``MemoryBudgetError``; for bundles.

    Raises:
        medmtl.networks.memory.MemoryBudgetError: from the first iteration, before ``forward``.
        GuardExit: the same, with ``exit_on_error=True``.
    """

    def __init__(
        self,
        max_bytes: int | float | str | None = None,
        activation_factor: float = 2.0,
        exit_on_error: bool = False,
    ) -> None:
        self.max_bytes = _bytes(max_bytes)
        self.activation_factor = activation_factor
        self.exit_on_error = exit_on_error
        self.estimate: int | None = None
        self._checked = False

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.check, Events.ITERATION_STARTED):
            return
        # not ITERATION_STARTED(once=1): a resumed run starts at a later iteration and must be checked too
        engine.add_event_handler(Events.ITERATION_STARTED, self.check)

    def _budget(self, device: torch.device) -> int | None:
        if self.max_bytes is not None:
            return self.max_bytes
        if device.type == "cuda" and torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        return None

    @staticmethod
    def _inputs(engine: Engine, device: torch.device) -> Any:
        """The batch's network input, without the batch augmentation: the shape is all the estimate needs,
        and drawing augmentations here would shift the random stream of a resumed run by one batch."""
        prepare_batch = engine.prepare_batch
        augment = getattr(prepare_batch, "augment", None)
        if augment is not None:
            prepare_batch.augment = None
        try:
            return prepare_batch(engine.state.batch, device, getattr(engine, "non_blocking", False))[0]
        finally:
            if augment is not None:
                prepare_batch.augment = augment

    def check(self, engine: Engine) -> None:
        if self._checked:
            return
        self._checked = True
        network = getattr(engine, "network", None)
        # the plain network: through a CompiledNetwork this one estimate would compile an eval-mode graph
        network = None if network is None else unwrap(network)
        device = torch.device(getattr(engine.state, "device", None) or getattr(engine, "device", "cpu"))
        budget = self._budget(device)
        if network is None or budget is None or engine.state.batch is None:
            return
        inputs = self._inputs(engine, device)
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2:
            logger.debug("TrainingMemoryGuard: the batch's input is not one tensor, no estimate")
            return
        batch_size = inputs.shape[0]
        was_training = network.training
        network.eval()
        try:
            autocast = torch.autocast(device.type, enabled=bool(getattr(engine, "amp", False)))
            with autocast:
                per_sample = estimate_activation_bytes(network, inputs[:1])
        finally:
            network.train(was_training)
        weights = sum(p.numel() * p.element_size() for p in network.parameters())
        self.estimate = int(per_sample * batch_size * self.activation_factor + 4 * weights)
        shape = "x".join(str(s) for s in inputs.shape[2:])
        if self.estimate > budget:
            error = MemoryBudgetError(
                f"one training step needs about {_gib(self.estimate)} (batch {batch_size} of {shape} voxels: "
                f"{_gib(per_sample * batch_size * self.activation_factor)} activations, {_gib(4 * weights)} "
                f"weights/gradients/optimizer) but the budget is {_gib(budget)}"
                + (" (free CUDA memory)" if self.max_bytes is None else "")
                + ". Lower --batch_size or --spatial_size, use a smaller network (features/channels), "
                "or turn on AMP (--amp True on CUDA); raise the budget with TrainingMemoryGuard(max_bytes=...)"
            )
            _stop(error, self.exit_on_error)
        logger.info(
            "memory check: one training step needs about %s of %s (batch %d of %s)",
            _gib(self.estimate),
            _gib(budget),
            batch_size,
            shape,
        )
