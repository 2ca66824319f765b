"""Stop training cleanly when a wall-clock budget is spent ("train for at most 10 minutes").

Why: comparisons our users make (weightings, label budgets, hardware) are fair only at equal
compute, and shared GPU queues give jobs fixed time slots. Ignite's ``TimeLimit`` checks only at
epoch ends and cannot be switched off from a config; this handler takes ``None`` for "no limit",
so it can sit in every bundle's handler list, and it checks after every iteration so an epoch
longer than the remaining budget does not overrun it. Under DDP the ranks agree (all-reduce) so
they all stop at the same iteration instead of leaving one rank waiting in a collective. The run ends through ``engine.terminate()``:
``COMPLETED`` handlers still run, so ``last.pt`` / ``best.pt`` and the MLflow run are written.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

__all__ = ["TimeBudget"]

logger = logging.getLogger(__name__)


class TimeBudget:
    """Terminate the trainer once ``minutes`` of wall-clock time have passed since it started.

    Args:
        minutes: the budget; ``None`` or ``0``: no limit (the handler does nothing).
        check_every: iterations between clock checks.
    """

    def __init__(self, minutes: float | None = None, check_every: int = 1) -> None:
        self.minutes = float(minutes) if minutes else None
        self.check_every = max(1, int(check_every))
        self.started: float | None = None
        self.stopped_at_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.minutes is None or engine.has_event_handler(self._check):
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.check_every), self._check)

    def _start(self, engine: Engine) -> None:
        self.started = time.monotonic()

    def _check(self, engine: Engine) -> None:
        if self.started is None or self.minutes is None:
            return
        elapsed = time.monotonic() - self.started
        if _any_rank(elapsed >= self.minutes * 60.0):
            self.stopped_at_epoch = engine.state.epoch
            logger.warning(
                "time budget of %.1f min spent after %.1f min (epoch %d, iteration %d): stopping training",
                self.minutes,
                elapsed / 60.0,
                engine.state.epoch,
                engine.state.iteration,
            )
            engine.terminate()


def _any_rank(flag: bool) -> bool:
    """``flag`` OR-ed over all processes of a DDP run (the flag itself otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
