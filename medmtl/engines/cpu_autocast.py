"""Mixed precision on the CPU: the bundles' ``amp`` setting as bfloat16 autocast where MONAI's engines have none.

MONAI's ``SupervisedTrainer`` and ``Evaluator`` take ``amp`` as CUDA float16 autocast with a gradient
scaler (``torch.autocast("cuda")``); on a CPU they would only warn and run in float32. CPUs with native
bfloat16 (AVX512-BF16, AMX) run convolutions in bfloat16 faster, and bfloat16 keeps float32's exponent,
so no gradient scaler is needed. :class:`CPUAutocastNetwork` runs the forward pass under
``torch.autocast("cpu", torch.bfloat16)`` and hands float32 logits back, so losses, metrics and
post-processing stay in float32. Like :class:`~medmtl.engines.CompiledNetwork` it holds the network as
``module``: optimizer, EMA, checkpoints and exports keep the float32 network itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["CPUAutocastNetwork", "cpu_autocast_network", "cuda_amp"]


def _as_float32(outputs: Any) -> Any:
    """Floating tensors (also in a ``{task: logits}`` dict, list or tuple) cast to float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, Mapping):
        return {key: _as_float32(value) for key, value in outputs.items()}
    if isinstance(outputs, list | tuple):
        return type(outputs)(_as_float32(value) for value in outputs)
    return outputs


class CPUAutocastNetwork(torch.nn.Module):
    """``module`` called under CPU autocast (bfloat16 by default); its floating outputs come back in float32.

    Args:
        module: the network (or its DDP wrapper) the optimizer, EMA and checkpoints use.
        dtype: the autocast type on the CPU.
    """

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=self.dtype):
            outputs = self.module(*args, **kwargs)
        return _as_float32(outputs)


def cpu_autocast_network(network: torch.nn.Module, device: torch.device | str, amp: bool) -> torch.nn.Module:
    """``network`` itself, or with ``amp`` on a CPU device a :class:`CPUAutocastNetwork` around it."""
    if amp and torch.device(device).type == "cpu":
        return CPUAutocastNetwork(network)
    return network


def cuda_amp(amp: bool, device: torch.device | str) -> bool:
    """The ``amp`` MONAI's engines get: CUDA float16 AMP only (the CPU's is :class:`CPUAutocastNetwork`)."""
    return bool(amp) and torch.device(device).type == "cuda"
