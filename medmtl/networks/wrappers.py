"""Single-output views of a multi-task network, for tools that expect ``image -> tensor``.

Why: MONAI's ``verify_net_in_out`` feeds one ``image`` tensor and checks one output's channels
(``network_data_format.outputs.pred``), and many deployment tools (TorchScript consumers, MONAI
Deploy operators, ONNX graphs) want one tensor out. A multi-task network returns ``{task: logits}``
and a multi-plane network takes ``{view: tensor}``; :class:`TaskOutput` adapts both without
touching the network's weights (its state dict is the wrapped network's under ``network.``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medmtl.networks.backbone_holders import HoldsBackbones, prefixed_backbones
from medmtl.networks.backbones import Backbone

__all__ = ["TaskOutput"]


class TaskOutput(nn.Module, HoldsBackbones):
    """``image -> logits of one task`` around a ``{task: logits}`` network.

    Args:
        network: the multi-task network.
        task: the task whose logits are returned.
        views: for networks taking ``{view: tensor}`` (MRNet planes): the view names; the single
            input is passed as every view.

    Example (a bundle's ``verify_net`` id, checked with ``verify_net_in_out --net_id verify_net``)::

        "verify_net": {"_target_": "medmtl.networks.TaskOutput", "network": "@network_def", "task": "lesion"}
    """

    def __init__(self, network: nn.Module, task: str, views: Sequence[str] | None = None) -> None:
        super().__init__()
        self.network = network
        self.task = str(task)
        self.views = None if views is None else [str(v) for v in views]

    def backbones(self) -> dict[str, Backbone]:
        """The wrapped network's backbones under ``network.``."""
        return prefixed_backbones("network", self.network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x if self.views is None else {v: x for v in self.views}
        out = self.network(inputs)
        if self.task not in out:
            raise KeyError(f"TaskOutput: the network has no task {self.task!r} (tasks: {sorted(out)})")
        return out[self.task]
