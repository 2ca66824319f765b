"""Task weighting strategies: how per-task losses become one training loss.

Every strategy is an ``nn.Module`` with one small interface (:class:`Weighting`), so a bundle
switches strategy with one ``_target_`` (or a registry name) and the trainer never branches on
strategy names:

- ``forward(losses)`` takes ``{task: scalar loss}`` for the tasks labelled in the batch (absent
  tasks are simply missing) and returns the weighted total;
- ``on_epoch_end(epoch_losses=None)`` is the epoch hook a handler calls (DWA history, schedules);
- ``current_weights()`` gives ``{task: weight}`` for logging;
- hyperparameters are ``__init__`` arguments, and all state lives in registered buffers or
  parameters, so ``state_dict()`` round-trips exactly and a resumed run computes the same next
  weights. LibMTL keeps DWA's history in attributes the trainer sets, which a checkpoint misses.

Strategies that need more than the loss values declare it with a capability flag, never by name:
``requires_shared_grads`` (GradNorm: :meth:`gradnorm_step` before backward) and
``manipulates_gradients`` (PCGrad: :meth:`backward` replaces ``loss.backward()``); see
``medmtl.losses.gradient``.

This module holds the base class, the registry and the loss-scaling strategies: ``fixed``,
``uncertainty`` (Kendall et al. 2018), ``dwa`` (Liu et al. 2019) and ``scheduled``.
"""

from __future__ import annotations

import bisect
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import ignite.distributed as idist
import torch
from monai.utils import look_up_option
from torch import nn

__all__ = [
    "Weighting",
    "WEIGHTINGS",
    "register_weighting",
    "build_weighting",
    "available_weightings",
    "FixedWeighting",
    "UncertaintyWeighting",
    "DWAWeighting",
    "ScheduledWeighting",
    "SCHEDULES",
    "schedule_value",
]

#: registry name -> weighting class (filled by :func:`register_weighting`).
WEIGHTINGS: dict[str, type[Weighting]] = {}


def register_weighting(name: str) -> Callable[[type[Weighting]], type[Weighting]]:
    """Class decorator adding a :class:`Weighting` subclass to :data:`WEIGHTINGS` under ``name``.

    Raises:
        ValueError: when ``name`` is already registered (to another class).
    """

    def deco(cls: type[Weighting]) -> type[Weighting]:
        if name in WEIGHTINGS and WEIGHTINGS[name] is not cls:
            raise ValueError(f"weighting '{name}' is already registered to {WEIGHTINGS[name].__qualname__}")
        WEIGHTINGS[name] = cls
        cls.registry_name = name
        return cls

    return deco


def available_weightings() -> tuple[str, ...]:
    """Names accepted by :func:`build_weighting`."""
    return tuple(sorted(WEIGHTINGS))


def build_weighting(name: str, task_names: Sequence[str], **kwargs: Any) -> Weighting:
    """Build a registered weighting strategy.

    Args:
        name: registry name (``fixed``, ``uncertainty``, ``dwa``, ``gradnorm``, ``pcgrad``, ``scheduled``).
        task_names: names of all tasks, in a fixed order (the order of the state buffers).
        **kwargs: hyperparameters of the strategy's ``__init__``.

    Returns:
        the strategy.

    Raises:
        ValueError: for an unknown name (the message lists the known ones and the closest match).

    Example::

        weighting = build_weighting("dwa", ["lesion", "diagnosis"], temperature=2.0)
    """
    cls = look_up_option(name, WEIGHTINGS)
    return cls(task_names, **kwargs)


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` in place across DDP ranks with ignite's ``idist.all_reduce`` (no-op in one process).

    In place because callers average ``.grad`` and buffers; ``copy_`` covers the case where ignite
    reduced a copy on the backend's device. Gloo has no average, hence the sum and the division.
    """
    ws = idist.get_world_size()
    if ws > 1:
        t.copy_(idist.all_reduce(t)).div_(ws)
    return t


class Weighting(nn.Module, ABC):
    """Base class of task weighting strategies.

    Subclasses implement :meth:`weight_vector`; the default :meth:`forward` returns
    ``sum_t w_t * L_t`` over the tasks present in ``losses``. Weights of absent tasks are not
    redistributed: a task missing from a batch contributes nothing.

    Args:
        task_names: names of all tasks; the order fixes the layout of every state buffer.

    Raises:
        ValueError: when ``task_names`` is empty, holds duplicates or non-strings.
    """

    #: GradNorm-like: call :meth:`gradnorm_step` with the shared parameters before backward.
    requires_shared_grads: ClassVar[bool] = False
    #: PCGrad-like: call :meth:`backward` instead of ``loss.backward()``.
    manipulates_gradients: ClassVar[bool] = False
    #: name in :data:`WEIGHTINGS` (set by :func:`register_weighting`).
    registry_name: ClassVar[str] = ""

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        if isinstance(task_names, str):
            task_names = [task_names]
        names = tuple(task_names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{type(self).__name__}: task_names must be a non-empty list of names, got {task_names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: task_names has duplicates: {list(names)}")
        self.task_names = names
        self._index = {n: i for i, n in enumerate(names)}

    # -- helpers --------------------------------------------------------------------------------
    def _per_task(self, values: float | Mapping[str, float] | None, default: float, what: str) -> torch.Tensor:
        """A ``(T,)`` float vector from a number or a ``{task: value}`` dict (missing tasks: ``default``)."""
        if values is None:
            values = default
        if isinstance(values, Mapping):
            unknown = sorted(set(values) - set(self.task_names))
            if unknown:
                raise ValueError(
                    f"{type(self).__name__}: {what} names unknown tasks {unknown}; known tasks: {list(self.task_names)}"
                )
            vec = [float(values.get(n, default)) for n in self.task_names]
        else:
            vec = [float(values)] * len(self.task_names)
        if not all(math.isfinite(v) for v in vec):
            raise ValueError(f"{type(self).__name__}: {what} must be finite, got {vec}")
        return torch.tensor(vec, dtype=torch.float32)

    def _check_losses(self, losses: Mapping[str, torch.Tensor]) -> list[str]:
        """Names of ``losses`` in task order; raises on unknown names or non-scalar values."""
        unknown = sorted(set(losses) - set(self.task_names))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: losses for unknown tasks {unknown}; known tasks: {list(self.task_names)}"
            )
        for name, value in losses.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{type(self).__name__}: loss of task '{name}' must be a scalar tensor, got {shape}")
        return [n for n in self.task_names if n in losses]

    def index(self, name: str) -> int:
        """Position of task ``name`` in the state buffers."""
        return self._index[name]

    # -- interface ------------------------------------------------------------------------------
    @abstractmethod
    def weight_vector(self) -> torch.Tensor:
        """Current weights, shape ``(T,)`` in ``task_names`` order."""

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted total ``sum_t w_t * L_t`` of the tasks in ``losses``.

        Args:
            losses: ``{task: scalar loss}`` for the tasks labelled in the batch.

        Returns:
            scalar tensor (a plain zero when ``losses`` is empty).

        Raises:
            ValueError: for unknown task names or non-scalar losses.
        """
        names = self._check_losses(losses)
        w = self.weight_vector().detach().clone()  # a copy: later in-place updates keep the graph valid
        if not names:
            return w.sum() * 0
        total = None
        for n in names:
            loss = losses[n]
            term = w[self._index[n]].to(loss.device) * loss.reshape(())
            total = term if total is None else total + term
        return total

    def current_weights(self) -> dict[str, float]:
        """``{task: weight}`` for every task, for logging."""
        return dict(zip(self.task_names, self.weight_vector().detach().cpu().tolist(), strict=True))

    def on_epoch_end(self, epoch_losses: Mapping[str, float] | None = None) -> None:  # noqa: B027
        """Epoch hook (a handler calls it at ``EPOCH_COMPLETED``); no-op for stateless strategies.

        Args:
            epoch_losses: mean loss per task over the epoch; ``None`` lets strategies that need it
                use what they accumulated during the epoch.
        """

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups of the learnable parameters, without weight decay (``[]`` when none)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": 0.0}] if params else []

    def sync_gradients(self) -> None:
        """Average the gradients of this module's parameters across DDP ranks.

        These parameters are not inside the DDP-wrapped network, so DDP does not reduce them. Call
        after backward and before ``optimizer.step()`` on every rank; no-op without a process group.
        """
        if idist.get_world_size() == 1:
            return
        for p in self.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                _all_reduce_mean(p.grad)

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}"


@register_weighting("fixed")
class FixedWeighting(Weighting):
    """Constant weights: ``L = sum_t w_t L_t``.

    Args:
        task_names: all task names.
        weights: ``{task: weight}`` (missing tasks get 1) or one number for all; default all 1.

    Raises:
        ValueError: for unknown task names, or negative / non-finite weights.

    Example::

        FixedWeighting(["lesion", "diagnosis"], weights={"lesion": 2.0})
    """

    def __init__(self, task_names: Sequence[str], weights: float | Mapping[str, float] | None = None) -> None:
        super().__init__(task_names)
        w = self._per_task(weights, 1.0, "weights")
        if bool((w < 0).any()):
            raise ValueError(f"{type(self).__name__}: weights must be non-negative, got {w.tolist()}")
        self.register_buffer("weights", w)

    def weight_vector(self) -> torch.Tensor:
        return self.weights


@register_weighting("uncertainty")
class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learns one log-variance ``s_t = log(sigma_t^2)`` per task and returns
    ``L = sum_t exp(-s_t) * L_t + s_t``.

    The paper's Gaussian likelihood gives ``0.5 * exp(-s) * L + 0.5 * s`` (LibMTL's UW), which is
    the same objective times 0.5: it has the same optimum ``s_t = log L_t`` and only halves every
    gradient. The 0.5 is dropped so that at ``s = 0`` the total equals the plain sum (``fixed``),
    and learning rates tuned without weighting carry over. ``current_weights()`` reports
    ``exp(-s_t)``.

    The log-variances are an ``nn.Parameter``: pass ``@loss.parameters()`` (or the groups of
    :meth:`param_groups`, which disable weight decay on them, since decay would pull every
    ``s_t`` to 0) to the optimizer. Under DDP call :meth:`sync_gradients` before the step.

    Args:
        task_names: all task names.
        init_log_var: initial ``s_t``, one number or ``{task: value}`` (default 0, i.e. weight 1).

    Example::

        weighting = UncertaintyWeighting(["lesion", "diagnosis"])
        optimizer = torch.optim.AdamW([{"params": net.parameters()}, *weighting.param_groups()], lr=1e-3)
    """

    def __init__(self, task_names: Sequence[str], init_log_var: float | Mapping[str, float] = 0.0) -> None:
        super().__init__(task_names)
        self.log_vars = nn.Parameter(self._per_task(init_log_var, 0.0, "init_log_var"))

    def weight_vector(self) -> torch.Tensor:
        return torch.exp(-self.log_vars)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum_t exp(-s_t) L_t + s_t`` over the tasks in ``losses``, connected to every ``s_t``.

        Args:
            losses: ``{task: scalar loss}`` for the tasks labelled in the batch.

        Returns:
            scalar tensor; ``0 * sum(s)`` when ``losses`` is empty, so every rank has gradients.
        """
        names = self._check_losses(losses)
        device = losses[names[0]].device if names else self.log_vars.device
        s = self.log_vars.to(device)
        total = s.sum() * 0
        for n in names:
            i = self._index[n]
            total = total + torch.exp(-s[i]) * losses[n].reshape(()) + s[i]
        return total


@register_weighting("dwa")
class DWAWeighting(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    ``w_k(t) = K exp(r_k(t-1) / T) / sum_i exp(r_i(t-1) / T)`` with ``r_k(t-1) = L_k(t-1) / L_k(t-2)``,
    ``L_k`` the mean training loss of task k over an epoch and K the number of tasks; all weights
    are 1 until two epochs are recorded. A task recorded for fewer than two epochs uses ``r = 1``.

    During training (``self.training``) ``forward`` accumulates each task's batch losses; call
    :meth:`on_epoch_end` once per epoch (a handler at ``EPOCH_COMPLETED``) to turn them into the
    epoch mean, averaged across DDP ranks, and shift the history. Sums, counts and the two-epoch
    history are buffers, so a checkpoint restores the exact next weights. Switch to ``eval()``
    when computing validation losses through the same module.

    Args:
        task_names: all task names.
        temperature: T, softness of the weights (paper: 2).

    Raises:
        ValueError: when ``temperature`` is not positive.
    """

    def __init__(self, task_names: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(task_names)
        if not temperature > 0:
            raise ValueError(f"DWAWeighting: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        t = len(self.task_names)
        self.register_buffer("history", torch.zeros(2, t))  # [L(t-1), L(t-2)]
        self.register_buffer("epochs_seen", torch.zeros(t, dtype=torch.long))
        self.register_buffer("epoch_sum", torch.zeros(t))
        self.register_buffer("epoch_count", torch.zeros(t))

    def weight_vector(self) -> torch.Tensor:
        ready = self.epochs_seen >= 2
        ratio = torch.where(ready, self.history[0] / self.history[1].clamp_min(1e-12), torch.ones_like(self.history[0]))
        return len(self.task_names) * torch.softmax(ratio / self.temperature, dim=0)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = super().forward(losses)
        if self.training:
            with torch.no_grad():
                for n, loss in losses.items():
                    i = self._index[n]
                    self.epoch_sum[i] += loss.detach().reshape(()).to(self.epoch_sum)
                    self.epoch_count[i] += 1
        return total

    def on_epoch_end(self, epoch_losses: Mapping[str, float] | None = None) -> None:
        """Record this epoch's mean loss per task and reset the accumulators.

        Args:
            epoch_losses: ``{task: mean loss}``; ``None`` uses the losses accumulated by ``forward``.
                Tasks without a value this epoch keep their history.

        Raises:
            ValueError: for unknown task names.
        """
        with torch.no_grad():
            if epoch_losses is None:
                sums, counts = self.epoch_sum.clone(), self.epoch_count.clone()
                _all_reduce_mean(sums)
                _all_reduce_mean(counts)
                seen = counts > 0
                means = sums / counts.clamp_min(1)
            else:
                self._check_losses({k: torch.as_tensor(float(v)) for k, v in epoch_losses.items()})
                seen = torch.tensor([n in epoch_losses for n in self.task_names], device=self.history.device)
                means = torch.tensor(
                    [float(epoch_losses.get(n, 0.0)) for n in self.task_names], device=self.history.device
                )
            self.history[1] = torch.where(seen, self.history[0], self.history[1])
            self.history[0] = torch.where(seen, means.to(self.history), self.history[0])
            self.epochs_seen += seen.long()
            self.epoch_sum.zero_()
            self.epoch_count.zero_()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"


# ---------------------------------------------------------------------------------------------
# schedules


def _constant(epoch: float, value: float = 1.0) -> float:
    return value


def _progress(epoch: float, epochs: float) -> float:
    return min(max(epoch / epochs, 0.0), 1.0)


def _linear(epoch: float, start: float, end: float, epochs: float) -> float:
    return start + (end - start) * _progress(epoch, epochs)


def _poly(epoch: float, start: float, end: float, epochs: float, power: float = 1.0) -> float:
    return end + (start - end) * (1.0 - _progress(epoch, epochs)) ** power


def _cosine(epoch: float, start: float, end: float, epochs: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * _progress(epoch, epochs)))


def _step(epoch: float, values: Sequence[float], milestones: Sequence[float]) -> float:
    if len(values) != len(milestones) + 1 or list(milestones) != sorted(milestones):
        raise ValueError(
            f"step schedule needs sorted milestones and one more value than milestones, got values={list(values)}, "
            f"milestones={list(milestones)}"
        )
    return float(values[bisect.bisect_right(list(milestones), epoch)])


#: schedule name -> ``f(epoch, **params) -> weight``. ``epochs`` is the length of the ramp; the value
#: stays at ``end`` afterwards. ``poly`` with start 0.5, end 1, power 4 is ``1 - 0.5 (1 - e/E)^4``.
SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": _constant,
    "linear": _linear,
    "poly": _poly,
    "cosine": _cosine,
    "step": _step,
}


def schedule_value(spec: float | Mapping[str, Any], epoch: float) -> float:
    """Weight given by a schedule spec at ``epoch`` (0-based).

    Args:
        spec: a number (constant weight) or ``{"name": <SCHEDULES key>, **params}``, e.g.
            ``{"name": "poly", "start": 0.5, "end": 1.0, "epochs": 100, "power": 4}``.
        epoch: epochs completed so far.

    Returns:
        the weight.

    Raises:
        ValueError: for an unknown schedule, missing / unknown parameters, a non-positive
            ``epochs`` or a negative / non-finite weight.
    """
    if isinstance(spec, (int, float)):
        value = float(spec)
    else:
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"a schedule is a number or a dict with 'name' and its parameters, got {spec!r}")
        params = {k: v for k, v in spec.items() if k != "name"}
        fn = look_up_option(spec["name"], SCHEDULES)
        try:
            inspect.signature(fn).bind(epoch, **params)
        except TypeError as err:
            raise ValueError(f"schedule '{spec['name']}' got parameters {sorted(params)}: {err}") from None
        if "epochs" in params and not float(params["epochs"]) > 0:
            raise ValueError(f"schedule '{spec['name']}': epochs must be > 0, got {params['epochs']}")
        value = float(fn(epoch, **params))
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"schedule {spec!r} gives weight {value} at epoch {epoch}; weights must be finite and >= 0")
    return value


@register_weighting("scheduled")
class ScheduledWeighting(Weighting):
    """Weights that follow a per-epoch schedule, e.g. ramping a segmentation loss up.

    The epoch counter is a buffer advanced by :meth:`on_epoch_end` (or set with :meth:`set_epoch`
    from ``engine.state.epoch``), so a resumed run continues the schedule.

    Args:
        task_names: all task names.
        schedules: ``{task: spec}`` where spec is a number or ``{"name": ..., **params}`` (see
            :func:`schedule_value` and :data:`SCHEDULES`); tasks not listed keep weight 1.

    Raises:
        ValueError: for unknown tasks or invalid schedules (checked at construction).

    Example::

        ScheduledWeighting(["lesion", "diagnosis"],
                           schedules={"lesion": {"name": "poly", "start": 0.5, "end": 1.0, "epochs": 50, "power": 4}})
    """

    def __init__(
        self, task_names: Sequence[str], schedules: Mapping[str, float | Mapping[str, Any]] | None = None
    ) -> None:
        super().__init__(task_names)
        schedules = dict(schedules or {})
        unknown = sorted(set(schedules) - set(self.task_names))
        if unknown:
            raise ValueError(
                f"ScheduledWeighting: schedules for unknown tasks {unknown}; known: {list(self.task_names)}"
            )
        self.schedules = {n: schedules.get(n, 1.0) for n in self.task_names}
        for spec in self.schedules.values():
            schedule_value(spec, 0)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        # the buffer is the checkpointed state; this host copy is what every forward reads, since
        # reading a GPU buffer would block the host once per iteration
        self._host_epoch = 0
        self.register_load_state_dict_post_hook(_refresh_host_epoch)

    def weight_vector(self) -> torch.Tensor:
        values = [schedule_value(self.schedules[n], self._host_epoch) for n in self.task_names]
        return torch.tensor(values).to(self.epoch.device, non_blocking=True)

    def set_epoch(self, epoch: int) -> None:
        """Set the number of completed epochs (e.g. ``engine.state.epoch - 1`` at ``EPOCH_STARTED``)."""
        self._host_epoch = int(epoch)
        self.epoch.fill_(self._host_epoch)

    def on_epoch_end(self, epoch_losses: Mapping[str, float] | None = None) -> None:
        """Advance the schedule by one epoch (``epoch_losses`` is ignored)."""
        self.set_epoch(self._host_epoch + 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, schedules={self.schedules}"


def _refresh_host_epoch(module: ScheduledWeighting, incompatible_keys: Any) -> None:
    """After ``load_state_dict``: the host copy of the epoch follows the loaded buffer (read once)."""
    module._host_epoch = int(module.epoch)


def _flat_params(params: Iterable[torch.Tensor], who: str) -> list[torch.Tensor]:
    """Shared parameters that require grad, as a list; raises when there are none."""
    out = [p for p in params if isinstance(p, torch.Tensor) and p.requires_grad]
    if not out:
        raise ValueError(
            f"{who}: got no shared parameter that requires grad; pass the shared encoder's parameters, "
            "e.g. network.shared_parameters()"
        )
    return out
