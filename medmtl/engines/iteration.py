"""Training iteration for weightings that replace ``loss.backward()`` (PCGrad-like gradient surgery).

MONAI's ``SupervisedTrainer`` calls ``loss.backward()`` itself, which is right for every weighting
that only scales losses (fixed, uncertainty, DWA, scheduled, GradNorm). Gradient surgery needs the
per-task gradients of the shared parameters, so it plugs in through the trainer's documented
``iteration_update`` seam; the trainer, its events and its handlers stay MONAI's.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from medmtl.engines.handlers import unwrap

__all__ = ["GradientSurgeryIteration"]


class GradientSurgeryIteration:
    """``iteration_update`` for ``SupervisedTrainer`` calling ``loss_function.backward(total, shared_params)``.

    Fires the same events as MONAI's iteration (FORWARD, LOSS, BACKWARD, MODEL completed), supports
    AMP (the gradient scaler's factor is passed as ``scale``; ``scaler.step`` unscales) and works
    for any weighting, so it is safe to use always; it is only required when
    ``loss_function.manipulates_gradients`` is true.
    """

    def __call__(self, engine: Engine, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("GradientSurgeryIteration got no batch")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[
            :2
        ]
        engine.state.output = {CommonKeys.IMAGE: inputs, CommonKeys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        scaler = getattr(engine, "scaler", None) if engine.amp else None
        with torch.autocast("cuda", **engine.amp_kwargs) if engine.amp else nullcontext():
            engine.state.output[CommonKeys.PRED] = engine.inferer(inputs, engine.network)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(engine.state.output[CommonKeys.PRED], targets).mean()
            engine.state.output[CommonKeys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scale = float(scaler.get_scale()) if scaler is not None else None
        engine.loss_function.backward(loss, unwrap(engine.network).shared_parameters(), scale=scale)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if scaler is not None:
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
