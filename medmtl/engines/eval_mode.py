"""Eval mode once per evaluation run instead of once per batch.

MONAI's ``SupervisedEvaluator`` runs every batch inside ``monai.networks.utils.eval_mode``, which
calls ``network.eval()`` before the batch and ``network.train()`` after it when the network was
training (it is, whenever the evaluator runs from a trainer's ``ValidationHandler``). Each call
walks every submodule: about 145 for the 2D UNets here, 0.5 ms per batch on this CPU and more on
a busy GPU host. When the forward pass is short (small 2D networks on a GPU), that host work is a
visible share of the evaluation time, and it is the same answer on every batch.

:class:`EvalModePerRun` keeps MONAI's evaluator and its ``_iteration`` unchanged: it sets the network
to eval mode once when the run starts, gives the evaluator a per-batch context that only opens
``torch.no_grad()`` (walking the modules again only if something switched the network back to
training mid-run), and restores the training mode when the run completes or a forward pass raises.
An exception raised by another handler between batches ends the run with the network in eval mode
(MONAI's trainers call ``network.train()`` on every iteration, so training is unaffected).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from ignite.engine import Engine, Events
from monai.engines import Evaluator
from monai.networks.utils import eval_mode
from torch import nn

__all__ = ["EvalModePerRun"]


class EvalModePerRun:
    """Handler for MONAI evaluators: ``network.eval()`` once per run, ``no_grad`` per batch.

    Attach it to a ``SupervisedEvaluator`` or any MONAI ``Evaluator``, ``EnsembleEvaluator`` included
    (bundle configs: ``validate#handlers`` or the inference ``handlers``); it replaces the evaluator's
    ``mode`` context, the per-batch hook of MONAI's ``_iteration``. Evaluators built with
    ``mode="train"`` are refused: that mode is deliberate (e.g. Monte Carlo dropout). Results are the same as with ``eval_mode``: every batch runs in eval mode
    without gradients, and a network that was training before the run is training again after it.
    """

    def __init__(self) -> None:
        self._restore: list[nn.Module] = []

    def attach(self, engine: Engine) -> None:
        if not isinstance(engine, Evaluator):
            raise TypeError(f"EvalModePerRun needs a MONAI evaluator, got {type(engine).__name__}")
        # MONAI registers handlers before it sets ``mode`` and ``network``: take over at each start
        engine.add_event_handler(Events.STARTED, self._enter_eval)
        engine.add_event_handler(Events.COMPLETED, self._restore_training)
        engine.add_event_handler(Events.TERMINATE, self._restore_training)

    def _enter_eval(self, engine: Evaluator) -> None:
        self._restore_training()  # a previous run that ended in an exception: its networks first
        if engine.mode is not eval_mode and engine.mode != self._batch_mode:
            raise ValueError(
                f"EvalModePerRun replaces MONAI's eval_mode, but this {type(engine).__name__} runs batches in "
                f"{getattr(engine.mode, '__name__', engine.mode)}: remove EvalModePerRun from its handlers"
            )
        engine.mode = self._batch_mode
        networks = getattr(engine, "networks", None) or [engine.network]  # EnsembleEvaluator has several
        for network in networks:
            if getattr(network, "training", False):
                network.eval()
                self._restore.append(network)

    def _restore_training(self) -> None:
        while self._restore:
            self._restore.pop().train()

    @contextmanager
    def _batch_mode(self, *nets: nn.Module) -> Iterator[tuple[nn.Module, ...]]:
        """Per-batch context: ``no_grad``; an O(1) check that each network is still in eval mode."""
        for net in nets:
            if getattr(net, "training", False):  # switched back mid-run (a handler did): walk again
                net.eval()
                if net not in self._restore:
                    self._restore.append(net)
        try:
            with torch.no_grad():
                yield nets
        except BaseException:
            self._restore_training()  # as eval_mode's ``finally``: a failed forward leaves the mode as found
            raise
