"""Monte Carlo dropout at inference: several passes with the network's dropout on, probabilities averaged.

Why an inferer: the evaluator puts the network in eval mode (``EvalModePerRun``), which switches
dropout off; MC dropout needs exactly the dropout layers back on while everything else (batch norm
statistics) stays in eval mode, for the duration of one call. Wrapping the inferer does that
without touching the network, its checkpoint or its state dict, and composes with the bundle's own
inferer (sliding window in 3D) and with :class:`~medmtl.inference.MirrorTTAInferer` around it.
MONAI has no multi-output MC dropout inferer (its ``TestTimeAugmentation`` needs random transforms).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from medmtl.data.task_keys import MC_DROPOUT_KEY
from medmtl.data.tasks import Task, as_tasks
from medmtl.networks.ensemble import average_probabilities, stack_members

__all__ = ["MonteCarloDropoutInferer", "dropout_layers"]

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def dropout_layers(network: nn.Module) -> list[nn.Module]:
    """The network's dropout layers that drop something (``p > 0``), in module order."""
    return [m for m in network.modules() if isinstance(m, _DROPOUT) and float(m.p) > 0]


@contextmanager
def _dropout_on(layers: Sequence[nn.Module]) -> Iterator[None]:
    modes = [m.training for m in layers]
    try:
        for m in layers:
            m.train(True)
        yield
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.train(mode)


class MonteCarloDropoutInferer(Inferer):
    """Runs ``inferer`` ``samples`` times with the network's dropout layers on and averages the probabilities.

    The output is the logits of the mean probabilities (as :class:`~medmtl.networks.FoldEnsemble`),
    plus ``{"mc_dropout_samples": {task: (B, samples, C) logits}}`` for the image-level tasks, from
    which the prediction writer reports each case's spread. Only dropout layers are switched on
    (batch norm keeps its running statistics), and only during the call.

    Args:
        tasks: the tasks (softmax or sigmoid per kind).
        samples: passes per batch (>= 2).
        inferer: the inferer to wrap (default ``SimpleInferer``).
        seed: seeds torch's generator before the passes, so an evaluation is repeatable.

    Raises:
        ValueError: fewer than 2 samples; at call time, a network without dropout (nothing would vary).
    """

    def __init__(
        self,
        tasks: Sequence[Task | Any],
        samples: int = 10,
        inferer: Inferer | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        if int(samples) < 2:
            raise ValueError(f"MC dropout needs at least 2 samples, got {samples}")
        self.tasks = list(as_tasks(tasks, owner=type(self).__name__))
        self.samples = int(samples)
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.seed = seed

    def __call__(self, inputs: Any, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        module = network if isinstance(network, nn.Module) else getattr(network, "__self__", None)
        layers = dropout_layers(module) if isinstance(module, nn.Module) else []
        if not layers:
            raise ValueError(
                f"MC dropout: the network {type(module).__name__} has no dropout layer with p > 0, so every "
                "sample would be the same; train with dropout (e.g. --network_def#head_dropout 0.2) and give the "
                "same option here (dropout has no weights, so the checkpoint does not carry it), or turn "
                "mc_dropout_samples off"
            )
        if self.seed is not None:
            torch.manual_seed(self.seed)
        with _dropout_on(layers):
            outputs = [self.inferer(inputs, network, *args, **kwargs) for _ in range(self.samples)]
        out: dict[str, Any] = average_probabilities(outputs, self.tasks)
        out[MC_DROPOUT_KEY] = stack_members(outputs, self.tasks)
        return out
