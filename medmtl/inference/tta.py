"""Mirroring test-time augmentation for multi-task networks (nnU-Net's default at inference).

Why: a network trained with random flips answers slightly differently for an image and its mirror
image; averaging the answers over the mirror images seen in training is a free gain in Dice and
calibration that nnU-Net applies by default. MONAI's ``TestTimeAugmentation`` targets one output
key and random transforms; a multi-task network returns ``{task: logits}`` with masks (which must be
flipped back before averaging) next to per-image class logits (which are averaged as they are), so
this wrapper does the bookkeeping around any inner inferer (``SimpleInferer`` for 2D images,
:class:`~medmtl.inference.MultiTaskSlidingWindowInferer` for volumes).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

from medmtl.data.task_keys import TTA_PASSES_KEY

__all__ = ["MirrorTTAInferer", "mirror_combinations"]


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the identity first): the 2**k mirror images nnU-Net averages."""
    unique = sorted({int(a) for a in axes})
    return [combo for r in range(len(unique) + 1) for combo in itertools.combinations(unique, r)]


class MirrorTTAInferer(Inferer):
    """Runs ``inferer`` on the input and its mirror images and averages the outputs.

    Dense outputs (a tensor with the input's number of dimensions and spatial shape: masks,
    saliency maps) are flipped back before the mean; image-level outputs (``(B, C)`` class logits)
    are averaged directly. Logits are averaged, so the evaluator's post-processing (sigmoid/softmax,
    argmax) is unchanged.

    Use it as the evaluator's inferer, wrapping the bundle's own::

        "validate::evaluator::inferer": {"_target_": "medmtl.inference.MirrorTTAInferer",
                                         "inferer": "@validate::inferer", "mirror_axes": [0]}

    Args:
        inferer: the inferer to wrap (default ``SimpleInferer``).
        mirror_axes: spatial axes to mirror (0 = first spatial axis); use the axes flipped in
            training. Empty: a plain pass through ``inferer`` (TTA off).
        keep_passes: also return ``{"tta_passes": {name: (B, mirror images, C) logits}}`` for the
            image-level outputs (``(B, C)`` tensors of the output dict), from which the prediction
            writer reports each case's spread over the mirror images; off with TTA off.

    Raises:
        ValueError: a negative axis, or an axis the input does not have (at call time).
    """

    def __init__(
        self, inferer: Inferer | None = None, mirror_axes: Sequence[int] = (), keep_passes: bool = False
    ) -> None:
        super().__init__()
        if any(int(a) < 0 for a in mirror_axes):
            raise ValueError(f"mirror_axes are spatial axes counted from 0, got {list(mirror_axes)}")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.combinations = mirror_combinations(mirror_axes)
        self.keep_passes = keep_passes

    def __call__(self, inputs: Any, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
        spatial_dims = first.ndim - 2
        for combo in self.combinations:
            if combo and max(combo) >= spatial_dims:
                raise ValueError(
                    f"mirror_axes {list(combo)} do not fit a {spatial_dims}D input of shape {tuple(first.shape)}; "
                    f"use spatial axes 0..{spatial_dims - 1}"
                )
        total: Any = None
        passes: dict[str, list[torch.Tensor]] = {}
        for combo in self.combinations:
            dims = [a + 2 for a in combo]
            outputs = self.inferer(_flip(inputs, dims), network, *args, **kwargs)
            outputs = _unflip(outputs, dims, first)
            if self.keep_passes and isinstance(outputs, Mapping):
                for name, value in outputs.items():
                    if isinstance(value, torch.Tensor) and value.ndim == 2:  # (B, C): an image-level output
                        passes.setdefault(name, []).append(value.float())
            total = outputs if total is None else _add(total, outputs)
        mean = _scale(total, 1.0 / len(self.combinations))
        if passes and len(self.combinations) > 1:
            mean = {**mean, TTA_PASSES_KEY: {name: torch.stack(v, dim=1) for name, v in passes.items()}}
        return mean


def _flip(inputs: Any, dims: list[int]) -> Any:
    if not dims:
        return inputs
    if isinstance(inputs, Mapping):
        return {k: torch.flip(v, dims) for k, v in inputs.items()}
    return torch.flip(inputs, dims)


def _is_dense(output: torch.Tensor, reference: torch.Tensor) -> bool:
    return output.ndim == reference.ndim and output.shape[2:] == reference.shape[2:]


def _unflip(outputs: Any, dims: list[int], reference: torch.Tensor) -> Any:
    if not dims:
        return outputs
    if isinstance(outputs, Mapping):
        return {k: _unflip(v, dims, reference) for k, v in outputs.items()}
    if isinstance(outputs, tuple | list):
        return type(outputs)(_unflip(v, dims, reference) for v in outputs)
    if isinstance(outputs, torch.Tensor) and _is_dense(outputs, reference):
        return torch.flip(outputs, dims)
    return outputs


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, Mapping):
        return {k: _add(a[k], b[k]) for k in a}
    if isinstance(a, tuple | list):
        return type(a)(_add(x, y) for x, y in zip(a, b, strict=True))
    return a + b


def _scale(a: Any, factor: float) -> Any:
    if isinstance(a, Mapping):
        return {k: _scale(v, factor) for k, v in a.items()}
    if isinstance(a, tuple | list):
        return type(a)(_scale(v, factor) for v in a)
    return a * factor
