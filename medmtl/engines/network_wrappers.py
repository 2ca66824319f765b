"""The network inside its wrappers: where ``shared_parameters``, the weights and the hooks live.

Why a module of its own: the guards and the checkpoint handlers both need it, and the handlers
import the guards.
"""

from __future__ import annotations

import torch

__all__ = ["unwrap"]


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DataParallel / :class:`~medmtl.engines.CompiledNetwork` wrappers (where
    ``shared_parameters`` lives); nested wrappers (compiled DDP) are all removed."""
    while hasattr(network, "module") and isinstance(network.module, torch.nn.Module):
        network = network.module
    return network
