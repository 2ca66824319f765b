"""Transfer between models: weak-to-strong fine-tuning and auxiliary pre-training.

Why: labels of different quality and cost come in stages. A network pre-trained on many weak
labels (report-mined findings, algorithmic masks) or on an auxiliary task (body part) is a better
start for the few strong labels than random weights, but its heads often belong to another task
set. These helpers do the two things such a run needs, without a trainer of its own:

- :func:`load_pretrained` copies every weight whose name and shape match (through MONAI's
  ``copy_model_state``) and returns a :class:`PretrainedLoadReport` listing, separately, what was
  loaded, excluded, missing, unexpected, and present with another shape (typically the heads of a
  different task set), so a wrong checkpoint is noticed at once instead of silently training from
  scratch.
- :func:`freeze_encoder` / :func:`encoder_parameters` and :func:`finetune_param_groups`: keep the
  shared encoder fixed, or train it at a lower learning rate than the decoder and heads.

Routing each sample to one expert network per group lives with the networks
(:class:`medmtl.networks.ExpertRouter`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.networks.utils import copy_model_state
from torch import nn

from medmtl.engines.checkpoint_io import load_checkpoint, strip_ddp_prefix
from medmtl.engines.handlers import unwrap
from medmtl.networks.backbones import Backbone

__all__ = [
    "PretrainedLoadReport",
    "encoder_parameters",
    "finetune_param_groups",
    "freeze_encoder",
    "load_pretrained",
]

logger = logging.getLogger(__name__)


@dataclass
class PretrainedLoadReport:
    """What :func:`load_pretrained` did, key by key (names as in the network's ``state_dict``).

    Attributes:
        path: the checkpoint file.
        network_entries: number of entries of the network's ``state_dict``.
        loaded: keys copied from the checkpoint.
        excluded: keys of the network or the checkpoint matching ``exclude``: not loaded and not
            counted as missing, unexpected or mismatched.
        missing: network keys the checkpoint lacks (they keep their current values).
        unexpected: checkpoint keys the network lacks (ignored).
        mismatched: ``(key, checkpoint shape, network shape)`` for keys present in both with
            different shapes (not loaded), e.g. heads with another number of classes.
    """

    path: str
    network_entries: int = 0
    loaded: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every non-excluded network key was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"{self.path}: loaded {len(self.loaded)} of {self.network_entries} network entries"]
        if self.excluded:
            lines.append(f"  excluded ({len(self.excluded)}): {_short(self.excluded)}")
        if self.mismatched:
            shapes = [f"{k} {list(a)} in checkpoint vs {list(b)} in network" for k, a, b in self.mismatched]
            lines.append(f"  shape mismatch, not loaded ({len(self.mismatched)}): {_short(shapes)}")
        if self.missing:
            lines.append(
                f"  missing from checkpoint, left as initialised ({len(self.missing)}): {_short(self.missing)}"
            )
        if self.unexpected:
            lines.append(f"  in checkpoint only, ignored ({len(self.unexpected)}): {_short(self.unexpected)}")
        return "\n".join(lines)


def _short(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... (+{len(items) - limit} more)"


def _state_dict_from(checkpoint: Any, key: str | None, path: str) -> Mapping[str, torch.Tensor]:
    if key is not None and isinstance(checkpoint, Mapping) and key in checkpoint:
        state = checkpoint[key]
    elif (
        isinstance(checkpoint, Mapping) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    ):
        if key is not None:
            logger.info("%s has no '%s' entry but is a state_dict itself (MONAI model-zoo style): using it", path, key)
        state = checkpoint
    else:
        held = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        if key is None:
            raise KeyError(f"{path} is not a state_dict (it holds {held}); pass key=<entry holding the state_dict>")
        raise KeyError(
            f"{path}: no '{key}' entry to load (the file holds {held}); pass key=<entry holding the network's "
            "state_dict>, or key=None for a file that is a state_dict"
        )
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"{path}: entry '{key}' is a {type(state).__name__}, not a state_dict")
    return strip_ddp_prefix(state)  # saved from a DDP / DataParallel wrapper: keys without "module."


def load_pretrained(
    network: nn.Module,
    checkpoint_path: str | os.PathLike,
    key: str | None = "network",
    strict: bool = False,
    exclude: str | Sequence[str] = (),
    map_location: str | torch.device = "cpu",
) -> PretrainedLoadReport:
    """Load the weights of a checkpoint that fit ``network``; report precisely what did not.

    Weights are copied where the name and the shape match (MONAI ``copy_model_state``); everything
    else keeps its current value. The report is logged (warning level when something did not
    load) and returned.

    Args:
        network: the network to update in place (DDP / DataParallel wrappers are unwrapped).
        checkpoint_path: a file written by ``torch.save``: medmtl's ``last.pt`` / ``best.pt``, MONAI's
            ``CheckpointSaver`` output, or a bare ``state_dict`` (model-zoo ``model.pt``).
        key: entry of the checkpoint holding the network's ``state_dict``; ``None``, or a file
            without that entry that is itself a ``state_dict``, loads the file as is.
        strict: raise instead of loading when any non-excluded key is missing, unexpected or of
            another shape.
        exclude: regular expressions matched at the start of keys that are neither loaded nor
            checked; a plain prefix works, e.g. ``["heads."]`` keeps freshly initialised heads for a
            new task set, and with ``strict=True`` still demands that everything else fits.
        map_location: where tensors are loaded before being copied.

    Returns:
        A :class:`PretrainedLoadReport`.

    Raises:
        FileNotFoundError: when ``checkpoint_path`` does not exist.
        CheckpointError: when the file is truncated, corrupt, not a PyTorch file or holds anything but
            weights (refused: nothing in it is executed).
        KeyError: when the checkpoint has no ``key`` entry and is not a ``state_dict``.
        RuntimeError: with ``strict=True``, listing every key that would not load.

    Bundle config (``initialize`` list)::

        "$medmtl.engines.load_pretrained(@network, @pretrained_checkpoint, exclude=['heads.'])"
    """
    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_pretrained: checkpoint {path} does not exist")
    checkpoint = load_checkpoint(path, map_location=map_location, what="pretrained checkpoint")
    source = _state_dict_from(checkpoint, key, path)
    target = unwrap(network)
    own = target.state_dict()
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    regex = "|".join(f"^(?:{p})" for p in patterns) or None
    matcher = re.compile(regex) if regex else None

    report = PretrainedLoadReport(path=path, network_entries=len(own))
    for name in list(own) + [k for k in source if k not in own]:
        if matcher is not None and matcher.search(name):
            report.excluded.append(name)
        elif name not in source:
            report.missing.append(name)
        elif name not in own:
            report.unexpected.append(name)
        elif tuple(source[name].shape) != tuple(own[name].shape):
            report.mismatched.append((name, tuple(source[name].shape), tuple(own[name].shape)))
    if strict and not report.ok:
        raise RuntimeError(f"load_pretrained(strict=True): the checkpoint does not fit the network\n{report}")
    _, updated, _ = copy_model_state(target, dict(source), exclude_vars=regex, inplace=True)
    report.loaded = list(updated)
    logger.log(logging.INFO if report.ok else logging.WARNING, "%s", report)
    return report


def encoder_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters of the network's encoder(s): what fine-tuning freezes or slows down.

    A network may define ``encoder_parameters()`` itself. Otherwise the encoder is every medmtl
    :class:`~medmtl.networks.backbones.Backbone` inside it minus that backbone's
    ``decoder_modules()``: the shared encoder of ``MultiTaskNet`` / ``MultiTaskClassifier`` /
    ``SaliencyBridgeNet``, the view encoders of ``MultiPlaneNet`` and the column encoders of
    ``CrossStitchNet`` (its cross-stitch units, decoders, bridges and heads are not encoder).

    Args:
        network: a medmtl network (DDP / DataParallel wrappers are unwrapped).

    Returns:
        The encoder parameters, each once, in ``parameters()`` order.

    Raises:
        TypeError: when the network holds no medmtl backbone and has no ``encoder_parameters()``.
    """
    inner = unwrap(network)
    own = getattr(inner, "encoder_parameters", None)
    if callable(own):
        return list(own())
    backbones = [m for m in inner.modules() if isinstance(m, Backbone)]
    if not backbones:
        raise TypeError(
            f"{type(inner).__name__} holds no medmtl Backbone and has no encoder_parameters(): cannot tell its "
            "encoder apart; give the network an encoder_parameters() method"
        )
    decoder = {id(p) for b in backbones for m in b.decoder_modules() for p in m.parameters()}
    encoder = {id(p) for b in backbones for p in b.parameters() if id(p) not in decoder}
    return [p for p in inner.parameters() if id(p) in encoder]


def freeze_encoder(network: nn.Module, freeze: bool = True) -> list[nn.Parameter]:
    """Switch gradients of the encoder parameters (:func:`encoder_parameters`) off, or back on.

    Nothing else changes: decoders and heads keep ``requires_grad``. Frozen parameters also lose
    any stale ``.grad``, so an optimizer that already holds them skips them (torch optimizers skip
    parameters whose gradient is ``None``, weight decay included); keep them in the optimizer to
    unfreeze later. Normalisation layers' running statistics still update in train mode (MONAI's
    trainer calls ``network.train()`` every iteration); instance / group norm have none.

    Args:
        network: a medmtl network.
        freeze: ``True`` to freeze, ``False`` to make the encoder trainable again.

    Returns:
        The encoder parameters that were switched.

    Bundle config (``initialize`` list)::

        "$medmtl.engines.freeze_encoder(@network, @freeze_encoder)"
    """
    params = encoder_parameters(network)
    for p in params:
        p.requires_grad_(not freeze)
        if freeze:
            p.grad = None
    return params


def finetune_param_groups(
    network: nn.Module,
    lr: float,
    encoder_lr_factor: float = 0.1,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer groups: the encoder at ``lr * encoder_lr_factor``, the rest (decoder, heads) at ``lr``.

    Pre-trained encoder features are general and few strong labels would overwrite them at the
    full learning rate; new heads need it to learn anything. LR schedulers scale each group's
    own ``lr``, so the ratio is kept.

    Args:
        network: a medmtl network.
        lr: learning rate of the decoder and heads.
        encoder_lr_factor: multiplier for the encoder (0 keeps it fixed while still in the optimizer).
        weight_decay: weight decay of both groups.

    Returns:
        ``[{"params", "lr", "weight_decay", "name": "encoder"}, {..., "name": "heads"}]`` (a group
        without parameters is left out); frozen parameters are included and skipped by the optimizer
        while they have no gradient.

    Raises:
        ValueError: for a negative ``lr`` or ``encoder_lr_factor``.

    Bundles use :func:`medmtl.engines.optimizer_param_groups` with ``encoder_lr_factor``, which
    makes the same groups and adds the network's own (cross-stitch) and the loss's.
    """
    if lr < 0 or encoder_lr_factor < 0:
        raise ValueError(f"finetune_param_groups: lr={lr} and encoder_lr_factor={encoder_lr_factor} must be >= 0")
    encoder = encoder_parameters(network)
    ids = {id(p) for p in encoder}
    rest = [p for p in unwrap(network).parameters() if id(p) not in ids]
    groups = [
        {"params": encoder, "lr": lr * encoder_lr_factor, "weight_decay": weight_decay, "name": "encoder"},
        {"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "heads"},
    ]
    return [g for g in groups if g["params"]]
