"""Exponential moving average (EMA) of the network's weights, used for validation, checkpoints and the result.

Small medical datasets give noisy late-training weights: on BUSI (624 training images) the
image-level diagnosis swings by a few points of balanced accuracy from one epoch to the next, so
which epoch a run happens to stop at decides whether it meets a target. Averaging the weights over
the last few hundred steps (Polyak averaging, as timm's ``ModelEmaV2`` and ignite's ``EMAHandler``
do) removes most of that swing at no cost in training time.

Unlike ignite's ``EMAHandler``, which keeps the average in a second model that every consumer must be
pointed at, :class:`EMAWeights` swaps the averaged weights *into* the trained network at the end of
every epoch and the raw weights back at the start of the next. Validation, ``best.pt``/``last.pt``,
the evaluation and inference bundles and MLflow then use the averaged weights without a config
change, and the optimizer keeps its parameters (values are copied, tensors are never replaced).
The raw weights live in the handler's ``state_dict``, so a resumed run continues exactly.

Attach it before the ``ValidationHandler`` (handlers of one event run in attachment order)::

    {"_target_": "medmtl.engines.EMAWeights", "network": "@network", "decay": 0.995}

and list it in ``ResumableCheckpoint``'s ``save_dict`` (``"weight_average": "@..."``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

from medmtl.engines.handlers import unwrap

__all__ = ["EMAWeights"]


class EMAWeights:
    """Keep ``ema = decay * ema + (1 - decay) * weights`` after every step; train raw, use the average.

    Args:
        network: the trained network (a DDP wrapper is unwrapped; every rank keeps the same average,
            as DDP keeps the same weights).
        decay: weight of the old average per step; ``None`` or ``0`` turns the handler off (it then
            saves an empty state), so a bundle can always list it. Steps per time constant:
            ``1 / (1 - decay)`` (0.995: 200 steps, about 5 BUSI epochs at batch 16).
        warmup: ramp the decay as ``min(decay, (1 + n) / (10 + n))`` over the first steps ``n``, so
            the average is not dominated by the random initial weights (timm's rule).

    Floating-point parameters and buffers are averaged; integer buffers (BatchNorm's
    ``num_batches_tracked``) are left as trained.
    """

    resumes_without_state = True
    """A ``last.pt`` without this handler's entry (a run started before it was added, or with an
    older medmtl) resumes with an empty average instead of failing: the average only smooths the
    weights, so restarting it loses nothing the run needs (see ``ResumableCheckpoint``)."""

    def __init__(self, network: torch.nn.Module, decay: float | None = 0.995, warmup: bool = True) -> None:
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"EMAWeights decay must be in [0, 1) (or None to turn it off), got {decay}")
        self.network = network
        self.decay = float(decay or 0.0)
        self.warmup = warmup
        self.steps = 0
        self._average: list[torch.Tensor] | None = None  # EMA of the floating-point tensors
        self._raw: list[torch.Tensor] | None = None  # training weights while the average is in the network

    @property
    def enabled(self) -> bool:
        return self.decay > 0.0

    @property
    def holds_average(self) -> bool:
        """True while the network holds the averaged weights (between epochs and after training)."""
        return self._raw is not None

    def _tensors(self) -> list[torch.Tensor]:
        """The network's floating-point parameters and buffers, in a fixed order."""
        module = unwrap(self.network)
        tensors = [p.data for p in module.parameters()] + list(module.buffers())
        return [t for t in tensors if t.is_floating_point()]

    def attach(self, engine: Engine) -> None:
        if not self.enabled or engine.has_event_handler(self.update, Events.ITERATION_COMPLETED):
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self.use_raw)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.use_average)
        engine.add_event_handler(Events.COMPLETED, self.use_average)  # also after a mid-epoch stop

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))

    @torch.no_grad()
    def update(self, engine: Engine | None = None) -> None:
        """One averaging step with the weights the optimizer just produced."""
        tensors = self._tensors()
        if self._average is None:
            self._average = [t.detach().clone() for t in tensors]
        else:
            torch._foreach_lerp_(self._average, tensors, 1.0 - self.current_decay())
        self.steps += 1

    @torch.no_grad()
    def use_average(self, engine: Engine | None = None) -> None:
        """Put the averaged weights into the network (keeping the raw ones); a no-op if already there."""
        if self._average is None or self.holds_average:
            return
        tensors = self._tensors()
        self._raw = [t.detach().clone() for t in tensors]
        torch._foreach_copy_(tensors, self._average)

    @torch.no_grad()
    def use_raw(self, engine: Engine | None = None) -> None:
        """Put the training weights back (start of an epoch); a no-op if the network holds them."""
        if self._raw is None:
            return
        torch._foreach_copy_(self._tensors(), self._raw)
        self._raw = None

    def state_dict(self) -> dict[str, Any]:
        if not self.enabled or self._average is None:
            return {}
        return {
            "steps": self.steps,
            "average": list(self._average),
            "raw": None if self._raw is None else list(self._raw),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the average and the raw weights: the next ``EPOCH_STARTED`` trains on the raw ones.

        The network itself is loaded by the checkpoint (with the averaged weights, if it was saved
        between epochs); an empty ``state`` (written with the handler off) resets the average.
        """
        if not state:
            self.steps, self._average, self._raw = 0, None, None
            return
        tensors = self._tensors()
        if len(state["average"]) != len(tensors):
            raise ValueError(
                f"EMAWeights state holds {len(state['average'])} tensors but the network has {len(tensors)}: "
                "the checkpoint was written for another network"
            )
        device = tensors[0].device
        self.steps = int(state["steps"])
        self._average = [t.to(device) for t in state["average"]]
        self._raw = None if state["raw"] is None else [t.to(device) for t in state["raw"]]
