"""Small helpers shared by the medmtl networks: padding/cropping, preset merging.

Why: every multi-task network takes its tasks either as :class:`~medmtl.data.Task` objects (Python)
or as plain dicts (a MONAI bundle config), pads inputs to what its backbone can divide and crops
the dense outputs back, so that segmentation logits always come out at input resolution. Keeping
these in one place keeps each network short and the behaviour identical across networks. The
padding helpers are TorchScript-compatible so exported models keep the same behaviour.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["pad_to_multiple", "crop_to", "merge_preset", "reinitialised_copy"]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad the spatial dims of ``x`` (at their end) up to a multiple of ``multiple``.

    Args:
        x: ``(B, C, *spatial)`` tensor.
        multiple: the size every spatial dim must be divisible by (1: no padding).

    Returns:
        The padded tensor and the original spatial sizes (for :func:`crop_to`).
    """
    sizes: list[int] = []
    for s in x.shape[2:]:
        sizes.append(s)  # no int(): torch.export keeps the size symbolic (dynamic spatial axes)
    if multiple <= 1:
        return x, sizes
    pad: list[int] = []
    total = 0
    for d in range(len(sizes) - 1, -1, -1):  # F.pad lists the last dim first
        extra = (multiple - sizes[d] % multiple) % multiple
        pad += [0, extra]
        total += extra
    if total == 0:
        return x, sizes
    return F.pad(x, pad), sizes


def crop_to(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: keep the first ``sizes[d]`` voxels of each spatial dim."""
    for d in range(len(sizes)):
        if x.shape[d + 2] != sizes[d]:
            x = x.narrow(d + 2, 0, sizes[d])
    return x


def merge_preset(preset: Mapping[str, Any], kwargs: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Combine a named preset with user kwargs, refusing kwargs that contradict the preset.

    Args:
        preset: the arguments that define the preset (e.g. ``block_config`` of DenseNet121).
        kwargs: the user's arguments.
        name: preset name, for the error message.

    Returns:
        ``{**preset, **kwargs}``.

    Raises:
        ValueError: if a kwarg sets a preset argument to another value.
    """
    for key, value in kwargs.items():
        if key in preset and _normalise(value) != _normalise(preset[key]):
            raise ValueError(
                f"backbone '{name}' fixes {key}={preset[key]!r} but {key}={value!r} was given; drop '{key}' or use "
                "the generic backbone class with your own value"
            )
    return {**preset, **kwargs}


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    return value


def reinitialised_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with fresh random weights (every submodule's ``reset_parameters``).

    Used where one configured module is replicated (cross-stitch columns, per-view encoders) and
    the copies should not start identical.
    """
    clone = copy.deepcopy(module)
    for m in clone.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return clone
