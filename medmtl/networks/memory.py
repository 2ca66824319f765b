"""How much memory a network's forward pass needs: the estimate both training and inference check.

Why here: the training guard (:class:`medmtl.engines.TrainingMemoryGuard`) and the sliding-window
inferer (:class:`medmtl.inference.MultiTaskSlidingWindowInferer`) both refuse work that would not
fit, from the same estimate and with the same error; it depends only on the network, so it lives
with the networks and neither of those packages imports the other for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["MemoryBudgetError", "estimate_activation_bytes"]


class MemoryBudgetError(RuntimeError):
    """A case would need more memory than the configured budget at the chosen ROI and batch."""


def estimate_activation_bytes(network: Callable[..., Any], window: torch.Tensor) -> int:
    """Sum of the bytes of every module output in one no-grad forward of ``window``.

    An upper bound of the live activation memory of an inference forward pass, measured the same
    way on CPU and CUDA (``torch.cuda.max_memory_allocated`` has no CPU counterpart). Scaled by the
    voxel ratio it estimates the cost of a larger input.
    """
    total = 0

    def count(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        for tensor in _tensors(output):
            total += tensor.numel() * tensor.element_size()

    modules = list(network.modules()) if isinstance(network, torch.nn.Module) else []
    hooks = [m.register_forward_hook(count) for m in modules if not list(m.children())]
    try:
        with torch.no_grad():
            network(window)
    finally:
        for hook in hooks:
            hook.remove()
    return total + window.numel() * window.element_size()


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []
