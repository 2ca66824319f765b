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
- :func:`load_pretrained_weights` reads a foreign weight file (torchvision, timm, MONAI, MedicalNet;
  fetched on a connected machine) into the network's backbones through
  :func:`medmtl.networks.load_backbone_weights`: hospital machines are often offline.
- :func:`freeze_encoder` / :func:`encoder_parameters` and :func:`finetune_param_groups`: keep the
  shared encoder fixed (a linear probe: its batch-norm statistics too), or train it at a lower
  learning rate than the decoder and heads.

Routing each sample to one expert network per group lives with the networks
(:class:`medmtl.networks.ExpertRouter`).
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.utils import copy_model_state
from monai.utils import optional_import
from torch import nn

from medmtl.engines.checkpoint_io import CheckpointError, load_checkpoint, strip_ddp_prefix
from medmtl.engines.guards import GuardExit
from medmtl.engines.handlers import unwrap
from medmtl.networks.backbone_holders import prefixed_backbones
from medmtl.networks.pretrained import (
    PretrainedWeightsError,
    PretrainedWeightsReport,
    load_backbone_weights,
    state_dict_of,
)

safetensors_torch, has_safetensors = optional_import("safetensors.torch")

__all__ = [
    "PretrainedLoadReport",
    "encoder_norm_layers",
    "encoder_parameters",
    "finetune_param_groups",
    "freeze_encoder",
    "load_pretrained",
    "load_pretrained_weights",
    "read_weights",
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


def read_weights(path: str | os.PathLike) -> Any:
    """What a weight file holds: ``.safetensors`` through safetensors (when installed), else ``torch.load``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not has_safetensors:
            raise PretrainedWeightsError(
                f"{path} is a safetensors file and the safetensors package is not installed: pip install safetensors, "
                'or convert it on the connected machine: python -c "import torch, safetensors.torch as s; '
                f"torch.save(s.load_file('{path.name}'), '{path.stem}.pt')\""
            )
        try:
            return safetensors_torch.load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError for damaged files
            raise PretrainedWeightsError(f"{path} cannot be read as safetensors: {err}") from None
    return load_checkpoint(path, what="pretrained weights file")


def load_pretrained_weights(
    network: nn.Module,
    weights_path: str | os.PathLike,
    strict: bool = True,
    exit_on_error: bool = False,
) -> PretrainedWeightsReport:
    """Load a torchvision, timm, MONAI or MedicalNet weight file into the network's backbone(s).

    The layout is recognised from the key names, keys are renamed to the medmtl (MONAI) backbone's,
    the first convolution is adapted to the network's input channels and the file's classifier is
    left out (rules: :mod:`medmtl.networks.pretrained`). Every backbone of the network gets the
    weights (each view encoder of ``MultiPlaneNet``); heads keep their initialisation. Nothing in the
    file is executed (``torch.load(weights_only=True)``, or ``safetensors`` for ``.safetensors``
    files when that package is installed). A medmtl checkpoint is refused with a pointer to
    :func:`load_pretrained`.

    Args:
        network: the network to update in place (DDP / DataParallel wrappers are unwrapped).
        weights_path: the weight file (``.pt`` / ``.pth`` / ``.bin`` from ``torch.save``, or ``.safetensors``).
        strict: raise when anything but the file's classifier does not fit (default); ``False`` loads
            what fits and logs the rest.
        exit_on_error: for bundle runs: log the error and exit with status 1 and the message
            (``GuardExit``) instead of a traceback.

    Returns:
        A :class:`~medmtl.networks.pretrained.PretrainedWeightsReport` (also logged).

    Raises:
        FileNotFoundError: when the file does not exist.
        CheckpointError: when the file is damaged, not a PyTorch file or holds anything but weights.
        PretrainedWeightsError: not a state dict, an unknown layout, no backbone it fits, or keys /
            shapes that do not fit (listed, with the fix).

    Bundle config (``initialize`` list; the bundle key ``pretrained_weights``)::

        "$medmtl.engines.load_pretrained_weights(@network, @pretrained_weights, exit_on_error=True) if @pretrained_weights else None"
    """
    path = Path(weights_path)
    try:
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights file {path} does not exist: fetch it on a connected machine and copy it here "
                "(bundles/knee_mri_mtl/docs/README.md, 'Pretrained encoders')"
            )
        state, _ = state_dict_of(read_weights(path), str(path))
        return load_backbone_weights(unwrap(network), state, str(path), strict=strict)
    except (FileNotFoundError, CheckpointError, PretrainedWeightsError) as err:
        if not exit_on_error:
            raise
        logger.error("%s", err)
        raise GuardExit(err) from err


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
    backbones = list(prefixed_backbones("", inner).values())
    if not backbones:
        raise TypeError(
            f"{type(inner).__name__} lists no medmtl backbone (backbones()) and has no encoder_parameters(): "
            "cannot tell its encoder apart; give the network an encoder_parameters() method"
        )
    decoder = {id(p) for b in backbones for m in b.decoder_modules() for p in m.parameters()}
    encoder = {id(p) for b in backbones for p in b.parameters() if id(p) not in decoder}
    return [p for p in inner.parameters() if id(p) in encoder]


_RUNNING_STATISTICS = (  # normalisation layers that may keep running statistics (track_running_stats)
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
_FROZEN_STATISTICS: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def _keep_eval(module: nn.Module, args: Any) -> None:
    module.training = False  # the trainer calls network.train() every iteration: undo it for this layer


def encoder_norm_layers(network: nn.Module) -> list[nn.Module]:
    """The encoder's normalisation layers with running statistics (batch norm, tracking instance norm).

    Args:
        network: a medmtl network (DDP / DataParallel wrappers are unwrapped).

    Returns:
        The layers, each once: inside the medmtl backbones minus their decoders, or, for a network
        with its own ``encoder_parameters()``, those whose parameters are all encoder parameters.
    """
    inner = unwrap(network)
    backbones = list(prefixed_backbones("", inner).values())
    if backbones:
        decoder = {id(m) for b in backbones for d in b.decoder_modules() for m in d.modules()}
        candidates = [m for b in backbones for m in b.modules() if id(m) not in decoder]
    else:
        encoder = {id(p) for p in encoder_parameters(inner)}
        candidates = [m for m in inner.modules() if _all_in(m, encoder)]
    layers = {id(m): m for m in candidates if isinstance(m, _RUNNING_STATISTICS) and m.track_running_stats}
    return list(layers.values())


def _all_in(module: nn.Module, ids: set[int]) -> bool:
    params = list(module.parameters())
    return bool(params) and all(id(p) in ids for p in params)


def freeze_encoder(network: nn.Module, freeze: bool = True, norm_statistics: bool = True) -> list[nn.Parameter]:
    """Switch gradients of the encoder parameters (:func:`encoder_parameters`) off, or back on.

    Decoders and heads keep ``requires_grad``. Frozen parameters also lose any stale ``.grad``, so
    an optimizer that already holds them skips them (torch optimizers skip parameters whose gradient
    is ``None``, weight decay included); keep them in the optimizer to unfreeze later. With
    ``norm_statistics`` the encoder's batch-norm layers also stay in eval mode (a forward pre-hook,
    since MONAI's trainer calls ``network.train()`` every iteration): they normalise with their
    stored (pretrained) statistics and never update them, so the encoder is a fixed function and
    training only the heads is a true linear probe. Instance / group norm layers without running
    statistics behave the same in both modes. To keep the weights but let batch-norm statistics
    adapt to the new data, use ``encoder_lr_factor=0`` instead (:func:`finetune_param_groups`).

    Args:
        network: a medmtl network.
        freeze: ``True`` to freeze, ``False`` to make the encoder trainable again (its normalisation
            statistics then update in train mode again).
        norm_statistics: with ``freeze``, also keep the encoder's normalisation statistics fixed.

    Returns:
        The encoder parameters that were switched.

    Bundle config (``initialize`` list)::

        "$medmtl.engines.freeze_encoder(@network) if @freeze_encoder else None"
    """
    params = encoder_parameters(network)
    for p in params:
        p.requires_grad_(not freeze)
        if freeze:
            p.grad = None
    fixed = freeze and norm_statistics
    for layer in encoder_norm_layers(network):
        if fixed and layer not in _FROZEN_STATISTICS:
            _FROZEN_STATISTICS[layer] = layer.register_forward_pre_hook(_keep_eval)
        elif not fixed and layer in _FROZEN_STATISTICS:
            _FROZEN_STATISTICS.pop(layer).remove()
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
