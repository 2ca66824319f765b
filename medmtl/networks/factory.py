"""Pick the sharing scheme of a multi-task network by name, so a bundle switches it with one override.

Why: MONAI configs instantiate every component they reference, so choosing between two
``_target_`` blocks with an expression would build both networks. ``--sharing cross_stitch`` on
the command line should change one value; this factory maps the name to the class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monai.utils import look_up_option
from torch import nn

from medmtl.data.tasks import Task
from medmtl.networks.backbones import Backbone
from medmtl.networks.cross_stitch import CrossStitchNet
from medmtl.networks.multitask import MultiTaskNet
from medmtl.networks.saliency import SaliencyBridgeNet

__all__ = ["SHARING", "build_multitask_network"]

SHARING: dict[str, type[nn.Module]] = {
    "hard": MultiTaskNet,
    "cross_stitch": CrossStitchNet,
    "saliency_bridge": SaliencyBridgeNet,
}
"""``hard``: one backbone, one head per task; ``cross_stitch``: one backbone column per task group,
mixed by learned cross-stitch units (soft sharing); ``saliency_bridge``: the classifier's
input-gradient saliency map is fed to the segmentation decoder (MultiMix)."""

_HARD_ONLY: dict[str, Any] = {"mask_pooling": None, "deep_supervision": 0}
"""``MultiTaskNet`` options and their "off" value, which is dropped for the other sharing schemes."""


def build_multitask_network(
    sharing: str,
    backbone: Backbone | str,
    tasks: Iterable[Task | Mapping[str, Any]],
    backbone_kwargs: Mapping[str, Any] | None = None,
    return_saliency: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """The multi-task network of sharing scheme ``sharing`` (a key of :data:`SHARING`).

    Args:
        sharing: ``hard``, ``cross_stitch`` or ``saliency_bridge``.
        backbone: backbone name or module.
        tasks: the tasks.
        backbone_kwargs: backbone constructor arguments.
        return_saliency: also return the classifier's saliency map (``saliency_bridge`` only; what
            inference writes with ``MultiTaskPredictionWriter(maps=("saliency",))``).
        kwargs: further arguments of the chosen class (``pooling``, ``head_dropout``, ``groups``,
            ``mask_pooling`` (``hard`` only; ``None`` is dropped for every scheme), ``deep_supervision``
            (``hard`` only; 0 is dropped for every scheme)...).

    Raises:
        ValueError: an unknown ``sharing`` (the message lists the known ones).
    """
    cls = look_up_option(sharing, SHARING)
    for option, off in _HARD_ONLY.items():  # bundles pass them, switched off, for every sharing
        value = kwargs.pop(option, off)
        if value != off:
            if cls is not MultiTaskNet:
                raise ValueError(f"{option} needs sharing='hard', got {sharing!r}")
            kwargs[option] = value
    if return_saliency:
        if cls is not SaliencyBridgeNet:
            raise ValueError(
                f"return_saliency needs sharing='saliency_bridge' (the only network with a saliency map), got {sharing!r}"
            )
        kwargs["return_saliency"] = True
    return cls(backbone=backbone, tasks=tasks, backbone_kwargs=backbone_kwargs, **kwargs)
