"""The optimizer parameter groups of a bundle: the network's own groups plus the loss's learnable weights.

Why one helper: a network may need its own learning rates (the cross-stitch units of
:class:`~medmtl.networks.CrossStitchNet` learn at x100 without weight decay), fine-tuning slows
the encoder down, and a learnable weighting (uncertainty) must not be decayed. Writing this out
in each bundle's ``optimizer`` lost the network's groups; every bundle calls this instead::

    "params": "$medmtl.engines.optimizer_param_groups(@network, @loss_function, @learning_rate, @weight_decay)"
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medmtl.engines.finetune import encoder_parameters
from medmtl.engines.handlers import unwrap

__all__ = ["optimizer_param_groups"]


def _network_groups(network: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    own = getattr(network, "param_groups", None)
    if callable(own):  # e.g. CrossStitchNet: its mixing weights at lr x100, without weight decay
        return [dict(group) for group in own(lr, weight_decay=weight_decay)]
    return [{"params": list(network.parameters()), "lr": lr, "weight_decay": weight_decay, "name": "network"}]


def _split_encoder(groups: list[dict[str, Any]], encoder: list[nn.Parameter], factor: float) -> list[dict[str, Any]]:
    """Each group's encoder parameters in a group of their own at ``lr * factor`` (placed first)."""
    ids = {id(p) for p in encoder}
    out: list[dict[str, Any]] = []
    for group in groups:
        name = group.get("name", "network")
        inside = [p for p in group["params"] if id(p) in ids]
        rest = [p for p in group["params"] if id(p) not in ids]
        encoder_name, rest_name = ("encoder", "heads") if name == "network" else (f"{name}_encoder", name)
        out.append({**group, "params": inside, "lr": group["lr"] * factor, "name": encoder_name})
        out.append({**group, "params": rest, "name": rest_name})
    return out


def optimizer_param_groups(
    network: nn.Module,
    loss: nn.Module | None,
    lr: float,
    weight_decay: float = 0.0,
    encoder_lr_factor: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer groups: the network's (its own ``param_groups`` when it has one), then the loss's.

    Args:
        network: a medmtl network (DDP / DataParallel wrappers are unwrapped).
        loss: the loss whose learnable weights are optimised too (``param_groups()``, no weight
            decay, e.g. uncertainty weighting); ``None`` for none.
        lr: the base learning rate.
        weight_decay: weight decay of the network's parameters (groups that set none get it).
        encoder_lr_factor: ``None`` keeps the encoder in the network's groups; a number moves it to
            a group at ``lr * encoder_lr_factor`` (fine-tuning; 0 keeps it fixed).

    Returns:
        Groups ready for ``torch.optim.*(groups)``, each with ``lr``; empty groups are left out.

    Raises:
        ValueError: for a negative ``lr`` or ``encoder_lr_factor``.
    """
    if lr < 0 or (encoder_lr_factor is not None and encoder_lr_factor < 0):
        raise ValueError(f"optimizer_param_groups: lr={lr} and encoder_lr_factor={encoder_lr_factor} must be >= 0")
    inner = unwrap(network)
    groups = _network_groups(inner, lr, weight_decay)
    if encoder_lr_factor is not None:
        groups = _split_encoder(groups, encoder_parameters(inner), encoder_lr_factor)
    if loss is not None:
        groups += [{"lr": lr, **group} for group in loss.param_groups()]
    return [group for group in groups if group["params"]]
