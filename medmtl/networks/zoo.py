"""A multi-task network seen as the MONAI model zoo sees a network: ``image -> one tensor``, same weights file.

Why: the zoo's CI builds the bundle's ``network_def`` and (1) feeds it one ``image`` tensor and
checks the output's channels against ``network_data_format.outputs.pred`` (``verify_net_in_out``),
(2) loads ``models/model.pt`` into it by parameter name and scripts it (``ckpt_export``). A medmtl
network returns ``{task: logits}`` (and a multi-plane one takes ``{view: tensor}``), and
:class:`medmtl.networks.TaskOutput` prefixes every parameter with ``network.``, so neither check
passes. :class:`ZooNetwork` returns one task's logits, scripts, and keeps the wrapped network's own
state dict keys (a post hook strips the prefix, a load pre-hook adds it back), so the one plain
state dict in ``models/model.pt`` loads into both the zoo's ``network_def`` and the bundle's
multi-task network. The wrapper holds no weights of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medmtl.networks.backbone_holders import HoldsBackbones, prefixed_backbones
from medmtl.networks.backbones import Backbone

__all__ = ["ZooNetwork", "ZooViewsNetwork", "zoo_network"]

_PREFIX = "network."


class ZooNetwork(nn.Module, HoldsBackbones):
    """``image -> logits of one task`` around a ``{task: logits}`` network, with the network's state dict keys.

    Args:
        network: the multi-task network (``forward(x: Tensor) -> dict[str, Tensor]``).
        task: the task whose logits are returned.

    Example (the exported bundle's ``network_def``, ``network_def_multitask`` being the medmtl network)::

        "network_def": {"_target_": "medmtl.networks.zoo.zoo_network",
                        "network": "@network_def_multitask", "task": "lesion"}
    """

    def __init__(self, network: nn.Module, task: str) -> None:
        super().__init__()
        self.network = network
        self.task = str(task)
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def backbones(self) -> dict[str, Backbone]:
        """The wrapped network's backbones, under its own prefixes: the state dict keeps the network's names."""
        return prefixed_backbones("", self.network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> the task's logits (``(B, classes, *spatial)`` or ``(B, classes)``)."""
        return self.network(x)[self.task]


class ZooViewsNetwork(ZooNetwork):
    """:class:`ZooNetwork` for networks taking ``{view: tensor}`` (MRNet planes): the image is every view.

    Args:
        network: the multi-view network (``forward(x: dict[str, Tensor]) -> dict[str, Tensor]``).
        task: the task whose logits are returned.
        views: the view names.
    """

    def __init__(self, network: nn.Module, task: str, views: Sequence[str]) -> None:
        super().__init__(network, task)
        self.views = [str(v) for v in views]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` given as every view -> the task's logits."""
        inputs: dict[str, torch.Tensor] = {}
        for view in self.views:
            inputs[view] = x
        return self.network(inputs)[self.task]


def zoo_network(network: nn.Module, task: str, views: Sequence[str] | None = None) -> ZooNetwork:
    """:class:`ZooViewsNetwork` when ``views`` has more than one name, else :class:`ZooNetwork`.

    Args:
        network: the multi-task network.
        task: the task whose logits the zoo's checks see.
        views: the network's input keys (``@input_keys``); one key means a plain tensor input.
    """
    views = [str(v) for v in views or ()]
    return ZooViewsNetwork(network, task, views) if len(views) > 1 else ZooNetwork(network, task)


def _strip_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State dict post hook: ``<prefix>network.<key>`` -> ``<prefix><key>`` (the plain network's names)."""
    for key in [k for k in state_dict if k.startswith(prefix + _PREFIX)]:
        state_dict[prefix + key[len(prefix + _PREFIX) :]] = state_dict.pop(key)
    _move_metadata(state_dict, prefix + _PREFIX[:-1], prefix[:-1])


def _add_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load pre-hook: the plain network's ``<prefix><key>`` -> ``<prefix>network.<key>``.

    A state dict already in the wrapper's own names (some key is not a name of the plain network) is
    left as it is.
    """
    plain = set(module.network.state_dict())
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not all(k[len(prefix) :] in plain for k in keys):
        return
    for key in keys:
        state_dict[prefix + _PREFIX + key[len(prefix) :]] = state_dict.pop(key)
    _move_metadata(state_dict, prefix[:-1], prefix + _PREFIX[:-1])


def _move_metadata(state_dict: Any, old: str, new: str) -> None:
    """Move the per-module version entries (``state_dict._metadata``) of module ``old`` and below to ``new``."""
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is None:
        return
    inside = [k for k in metadata if not old or k == old or k.startswith(old + ".")]
    moved = {k: metadata.pop(k) for k in inside}
    for key, value in moved.items():
        rest = key[len(old) :].lstrip(".")
        metadata[f"{new}.{rest}" if new and rest else new or rest] = value
