"""Opt-in speed switches of the training bundles: ``torch.compile`` and cuDNN autotuning.

Why not MONAI's ``SupervisedTrainer(compile=True)``: with MetaTensor inputs it wraps
``engine.state.output["pred"]`` in a ``MetaTensor`` after the forward pass, which fails for medmtl's
``{task: logits}`` dict. :class:`CompiledNetwork` instead compiles the network's call and hands it
plain tensors, while checkpoints, EMA, MLflow model logging and export keep the uncompiled network
(the compiled call shares its parameters; :func:`~medmtl.engines.unwrap` reaches it through
``module``, so state-dict keys never gain ``_orig_mod.``).

``cudnn.benchmark`` lets cuDNN time its convolution algorithms once per input shape and keep the
fastest. That pays off only when the shapes repeat (fixed 3D training patches) and it picks
algorithms by timing, so two runs may differ: MONAI's ``set_determinism`` turns it off, and
:func:`set_cudnn_benchmark` turns it back on where both conditions allow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor

__all__ = [
    "CUDNN_BENCHMARK_MODES",
    "CompiledNetwork",
    "compiled_network",
    "cudnn_benchmark_choice",
    "plain_tensors",
    "set_cudnn_benchmark",
]

logger = logging.getLogger(__name__)

CUDNN_BENCHMARK_MODES = ("auto", True, False)
"""``auto``: on for CUDA 3D training with fixed input shapes unless deterministic algorithms are on."""


def plain_tensors(inputs: Any) -> Any:
    """``MetaTensor`` -> ``torch.Tensor`` sharing its storage, also inside a ``{view: tensor}`` dict.

    Why: ``torch.compile`` does not trace MetaTensor inputs (pytorch/pytorch#117026). The engine's
    output keeps the MetaTensor batch: only the network's copy of the inputs loses its metadata.
    """
    if isinstance(inputs, MetaTensor):
        return inputs.as_tensor()
    if isinstance(inputs, Mapping):
        return {key: plain_tensors(value) for key, value in inputs.items()}
    return inputs


class CompiledNetwork(torch.nn.Module):
    """``network`` called through ``torch.compile`` on plain tensors; ``module`` is the network itself.

    Give it to the trainer and evaluators only. Like DDP it holds the wrapped network as ``module``
    (a registered child, so ``train()``/``eval()`` reach it and :func:`medmtl.engines.unwrap` returns
    it); the compiled call is a function, not a submodule, so nothing is registered twice.

    Args:
        network: the network (or its DDP wrapper) the optimizer, EMA and checkpoints use.
        compile_kwargs: arguments of ``torch.compile`` (``backend``, ``mode``, ``dynamic``, ...).
    """

    def __init__(self, network: torch.nn.Module, compile_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.module = network
        self.compile_kwargs = dict(compile_kwargs or {})
        # the bound call, as torch.compile(module) itself compiles it, so module-level hooks still run
        self._compiled = torch.compile(network.__call__, **self.compile_kwargs)

    def forward(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        return self._compiled(plain_tensors(inputs), *args, **kwargs)


def compiled_network(
    network: torch.nn.Module, enabled: bool = False, compile_kwargs: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """``network`` itself, or with ``enabled`` a :class:`CompiledNetwork` around it (the bundles' ``compile`` key).

    Raises:
        TypeError: ``compile_kwargs`` is not a mapping (``--compile_kwargs "{'backend': 'eager'}"``).
    """
    if compile_kwargs is not None and not isinstance(compile_kwargs, Mapping):
        raise TypeError(
            f"compile_kwargs must be a dict of torch.compile arguments, got {type(compile_kwargs).__name__} "
            f"{compile_kwargs!r}; e.g. --compile_kwargs \"{{'mode': 'max-autotune'}}\""
        )
    if not enabled:
        return network
    # not MONAI's Trainer(compile=True): it wraps output["pred"] in a MetaTensor, which fails for {task: logits}
    return CompiledNetwork(network, compile_kwargs)


def cudnn_benchmark_choice(
    setting: bool | str,
    device: torch.device | str,
    spatial_dims: int,
    fixed_shape: bool,
    deterministic: bool,
) -> tuple[bool, str]:
    """Whether to turn ``torch.backends.cudnn.benchmark`` on, and why (pure: no global state read).

    Args:
        setting: ``"auto"``, ``True`` or ``False`` (the bundles' ``cudnn_benchmark`` key); an
            explicit ``True`` is honoured on CUDA even with deterministic algorithms on.
        device: the training device; cuDNN exists on CUDA only.
        spatial_dims: 2 or 3; ``auto`` turns it on for 3D, where convolution algorithms differ most.
        fixed_shape: every training batch has the same spatial shape (patches of ``spatial_size``;
            not with ``resize: none``, whole volumes of varying size).
        deterministic: the user asked for reproducible runs (``torch.use_deterministic_algorithms``).

    Raises:
        ValueError: an unknown ``setting`` (the message lists the allowed ones).
    """
    if isinstance(setting, str) and setting.lower() in ("true", "false"):
        setting = setting.lower() == "true"  # a command-line override arrives as text
    if not (setting == "auto" or isinstance(setting, bool)):
        raise ValueError(f"cudnn_benchmark must be one of 'auto', true, false; got {setting!r}")
    if torch.device(device).type != "cuda":
        return False, f"off: device {torch.device(device).type} has no cuDNN"
    if setting is True:
        return True, "on: cudnn_benchmark true" + (" (deterministic algorithms are on)" if deterministic else "")
    if setting is False:
        return False, "off: cudnn_benchmark false"
    if deterministic:
        return False, "off: deterministic algorithms requested (cudnn_benchmark auto)"
    if spatial_dims != 3:
        return False, f"off: {spatial_dims}D input (cudnn_benchmark auto turns it on for 3D)"
    if not fixed_shape:
        return False, "off: training input shapes vary (resize none)"
    return True, "on: CUDA, fixed 3D training shapes (cudnn_benchmark auto)"


def set_cudnn_benchmark(
    setting: bool | str,
    device: torch.device | str,
    spatial_dims: int,
    fixed_shape: bool,
    deterministic: bool | None = None,
) -> bool:
    """Apply :func:`cudnn_benchmark_choice` and log it once; call it after ``set_determinism``.

    ``deterministic`` defaults to ``torch.are_deterministic_algorithms_enabled()``. Returns the
    value set. On CPU nothing is changed.
    """
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    enabled, why = cudnn_benchmark_choice(setting, device, spatial_dims, fixed_shape, deterministic)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = enabled
    logger.info("cudnn.benchmark %s", why)
    return enabled
