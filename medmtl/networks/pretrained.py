"""Pretrained encoders from foreign weight files: torchvision, timm, MONAI and MedicalNet into medmtl backbones.

Why: hospital machines are often offline, and the MRNet / MURA recipes start from ImageNet weights.
medmtl backbones are MONAI networks (wrapped, :mod:`medmtl.networks.backbones`), whose parameter
names differ from the other libraries' in places, and whose heads belong to the task set at hand.
:func:`load_backbone_weights` recognises a state dict's layout from its key names, renames the keys
to the backbone's, adapts the first convolution to the network's input channels, leaves the file's
classifier out and copies the rest into every backbone of the network (the view encoders of
``MultiPlaneNet``, the columns of ``CrossStitchNet``). Anything that does not fit is one error
listing the keys and the fix: a partial load never passes silently. Reading the file (nothing in it
is executed) is :func:`medmtl.engines.load_pretrained_weights`, what bundles call.

Layouts, recognised in this order from the keys (after unwrapping a ``state_dict`` / ``model`` /
``network`` entry and a DDP ``module.`` prefix, as in MedicalNet files):

- **medmtl checkpoint**: ``heads.*`` with ``backbone.*`` / ``encoders.*`` / ``columns.*``: refused
  here, it is loaded by :func:`medmtl.engines.load_pretrained` (bundle key ``pretrained_ckpt``).
- **ResNet** (torchvision, timm, MONAI and MedicalNet share the names): ``conv1.weight`` and
  ``layer1.*``; 2D or 3D from the kernel. ResNet-D variants (timm deep stem ``conv1.0.*``,
  average-pool shortcut ``downsample.2.*``) have no MONAI equivalent and are refused.
- **DenseNet** (torchvision / timm): ``features.conv0.weight`` and ``features.denseblock1.*``;
  MONAI's DenseNet has the same names plus ``.layers.`` inside each dense layer.
- **BasicUNet** (MONAI): ``conv_0.conv_0.conv.weight`` and ``down_1.*``.
- **UNet** (MONAI, e.g. model-zoo ``model.pt``): ``model.0.*`` and ``model.1.submodule.*``.
- **SegResNet** (MONAI): ``convInit.conv.weight`` and ``down_layers.*``.

Each fits one backbone class (:data:`LAYOUT_BACKBONES`). Mapping rules:

- Renamed keys: torchvision / timm ``denselayerN.norm1`` (and the older ``norm.1``) become
  ``denselayerN.layers.norm1``: MONAI's own rule (``monai.networks.nets.densenet._load_state_dict``,
  which reads only from a URL and silently drops what does not fit, so the rule is applied here);
  MONAI UNet's nested ``model.1.submodule...`` becomes ``down.<i>`` / ``bottom`` / ``up.<i>`` as
  :class:`~medmtl.networks.backbones.ResUNetBackbone` re-walks it. Other layouts keep their names.
- Left out (the file's classes, not ours): ResNet ``fc.*`` (and MedicalNet ``conv_seg.*``),
  DenseNet ``classifier.*`` / ``class_layers.*``, BasicUNet ``final_conv.*``, SegResNet
  ``conv_final.2.*``, and MONAI UNet's top up-layer ``model.2.*`` (it outputs the file's classes;
  in medmtl that layer is each segmentation head, which keeps its initial weights).
- First convolution, from the file's ``c`` input channels to the network's ``n``: ``n == 1`` sums
  the weights over ``c`` (a grey image then gives the response the RGB network gave to that image
  repeated on every channel); otherwise the channels are repeated cyclically and scaled by ``c / n``
  (timm's ``adapt_input_conv`` convention), which keeps the activation scale (and, when ``n`` is a
  multiple of ``c``, exactly the response to an image equal on every channel).
- A convolution bias the network has and the file lacks (torchvision and MedicalNet ResNet shortcuts
  are bias-free, medmtl's ResNet default has one) is set to zero: the same function as no bias.
  A ``num_batches_tracked`` missing from an old file keeps its value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medmtl.networks.backbone_holders import prefixed_backbones
from medmtl.networks.backbones import (
    Backbone,
    BasicUNetBackbone,
    DenseNetBackbone,
    ResNetBackbone,
    ResUNetBackbone,
    SegResNetBackbone,
)

__all__ = [
    "LAYOUT_BACKBONES",
    "backbone_for_weights",
    "PretrainedWeightsError",
    "PretrainedWeightsReport",
    "adapt_input_channels",
    "detect_layout",
    "load_backbone_weights",
    "state_dict_of",
]

logger = logging.getLogger(__name__)

_SHOWN = 12
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ENTRIES = ("state_dict", "model", "network", "model_state_dict")  # MedicalNet / timm train, DeiT, medmtl


class PretrainedWeightsError(ValueError):
    """A weight file does not fit the network: the message names the file, what was found and the fix."""


@dataclass
class PretrainedWeightsReport:
    """What :func:`load_backbone_weights` did (key names as in the backbone's ``state_dict``).

    Attributes:
        source: the weight file.
        layout: the layout recognised (a key of :data:`LAYOUT_BACKBONES`).
        backbones: where the weights went, as module names in the network (``"backbone"``,
            ``"encoders.0"``, ...).
        loaded: tensors copied into each backbone.
        adapted: first-convolution keys whose input channels were adapted, with how.
        zeroed: bias keys set to zero (the file's layer has no bias).
        left_out: file keys not loaded on purpose (its classifier / output layer).
    """

    source: str
    layout: str
    backbones: list[str] = field(default_factory=list)
    loaded: int = 0
    adapted: list[str] = field(default_factory=list)
    zeroed: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        where = self.backbones[0] if len(self.backbones) == 1 else f"each of {', '.join(self.backbones)}"
        lines = [f"{self.source} ({self.layout}): loaded {self.loaded} tensors into {where}"]
        if self.adapted:
            lines.append(f"  first convolution adapted: {_short(self.adapted)}")
        if self.zeroed:
            lines.append(f"  biases the file lacks, set to zero ({len(self.zeroed)}): {_short(self.zeroed)}")
        if self.left_out:
            lines.append(f"  file's classifier left out ({len(self.left_out)}): {_short(self.left_out)}")
        return "\n".join(lines)


def _short(items: list[str], limit: int = _SHOWN) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... (+{len(items) - limit} more)"


# -- layouts ----------------------------------------------------------------------------------------
def _same(key: str, backbone: Backbone) -> str:
    return key


_DENSE_LAYER = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.")


def _densenet_key(key: str, backbone: Backbone) -> str:
    """torchvision / timm ``denselayerN.norm1`` or ``norm.1`` -> MONAI ``denselayerN.layers.norm1``."""
    return _DENSE_LAYER.sub(r"\1.layers.\2\3.", key)


def _unet_key(key: str, backbone: Backbone) -> str:
    """MONAI UNet ``model.(1.submodule.)*{0,2}.`` -> ``down.<level>.`` / ``up.<n-1-level>.``, innermost -> ``bottom.``."""
    if not key.startswith("model."):
        return key
    levels = len(backbone.down)  # type: ignore[arg-type]
    rest = key[len("model.") :]
    for level in range(levels):
        head, _, tail = rest.partition(".")
        if head == "0":
            return f"down.{level}.{tail}"
        if head == "2":
            return f"up.{levels - 1 - level}.{tail}"
        if head != "1" or not tail.startswith("submodule."):
            return key  # not this UNet's nesting: reported as not in the network
        rest = tail[len("submodule.") :]
    return f"bottom.{rest}"


@dataclass(frozen=True)
class _Layout:
    backbone: type[Backbone]
    left_out: str  # file keys that are its classifier / output layer (regex, searched)
    first_conv: str  # backbone keys of the convolutions that read the image
    rename: Callable[[str, Backbone], str] = _same


_LAYOUTS: dict[str, _Layout] = {
    "ResNet (torchvision / timm / MONAI / MedicalNet)": _Layout(
        ResNetBackbone, r"^(?:fc|conv_seg)\.", r"^conv1\.weight$"
    ),
    "DenseNet (torchvision / timm)": _Layout(
        DenseNetBackbone, r"^(?:classifier|class_layers)\.", r"^features\.conv0\.weight$", _densenet_key
    ),
    "DenseNet (MONAI)": _Layout(DenseNetBackbone, r"^(?:classifier|class_layers)\.", r"^features\.conv0\.weight$"),
    "BasicUNet (MONAI)": _Layout(BasicUNetBackbone, r"^final_conv\.", r"^conv_0\.conv_0\.conv\.weight$"),
    "UNet (MONAI)": _Layout(
        ResUNetBackbone,
        r"^model\.2\.",
        r"^down\.0\.(?:conv\.unit0\.conv|residual|conv)\.weight$",
        _unet_key,
    ),
    "SegResNet (MONAI)": _Layout(SegResNetBackbone, r"^conv_final\.2\.", r"^convInit\.conv\.weight$"),
}

_NAMES = {  # registry names (bundle --backbone) of each class, for messages
    ResNetBackbone: "resnet18 / resnet34 / resnet50 / resnet10",
    DenseNetBackbone: "densenet121 / densenet169 / densenet201",
    BasicUNetBackbone: "unet",
    ResUNetBackbone: "resunet",
    SegResNetBackbone: "segresnet",
}

LAYOUT_BACKBONES: dict[str, str] = {name: layout.backbone.__name__ for name, layout in _LAYOUTS.items()}
"""Each recognised layout and the medmtl backbone class it loads into."""


def _fits_text() -> str:
    return "; ".join(f"{name} -> {cls}" for name, cls in LAYOUT_BACKBONES.items())


def detect_layout(state: Mapping[str, Any], source: str = "the weights") -> str:
    """The layout of a state dict, from its key names (rules in the module docstring).

    Args:
        state: ``{name: tensor}``, already unwrapped (:func:`state_dict_of`).
        source: the file, for messages.

    Returns:
        A key of :data:`LAYOUT_BACKBONES`.

    Raises:
        PretrainedWeightsError: a medmtl checkpoint, a ResNet-D / deep-stem variant, or keys of no
            known layout (the message shows some of them and the layouts known).
    """
    keys = list(state)
    has = set(keys)

    def any_prefix(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if any_prefix("heads.") and any_prefix("backbone.", "encoders.", "columns."):
        raise PretrainedWeightsError(
            f"{source} is a medmtl checkpoint (keys heads.*, backbone.* / encoders.*), not a foreign state dict: "
            "load it with --pretrained_ckpt FILE (medmtl.engines.load_pretrained), which copies every weight "
            "whose name and shape match"
        )
    if "conv1.weight" in has and any_prefix("layer1."):
        if any(".downsample.2." in k for k in keys):
            raise _variant(source, "ResNet-D (average-pool shortcut, downsample.2.*)")
        return "ResNet (torchvision / timm / MONAI / MedicalNet)"
    if "conv1.0.weight" in has and any_prefix("layer1."):
        raise _variant(source, "ResNet with a deep stem (conv1.0.*, timm resnet*d / *s)")
    if "features.conv0.weight" in has and any_prefix("features.denseblock1."):
        if "features.conv1.weight" in has:
            raise _variant(source, "DenseNet with a deep stem (features.conv1.*, timm densenet*d)")
        if any(".layers." in k for k in keys if k.startswith("features.denseblock")):
            return "DenseNet (MONAI)"
        return "DenseNet (torchvision / timm)"
    if "conv_0.conv_0.conv.weight" in has and any_prefix("down_1."):
        return "BasicUNet (MONAI)"
    if any_prefix("model.0.") and any_prefix("model.1.submodule."):
        return "UNet (MONAI)"
    if "convInit.conv.weight" in has and any_prefix("down_layers."):
        return "SegResNet (MONAI)"
    raise PretrainedWeightsError(
        f"{source}: unknown weight layout (first keys: {_short(keys, 6)}); known layouts and the backbone each "
        f"loads into: {_fits_text()}. Save the state_dict of one of these networks (model.state_dict()), or "
        "train from scratch"
    )


_RESNET_DEPTHS = {(1, False): "resnet10", (2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50"}
_DENSENET_DEPTHS = {24: "densenet121", 32: "densenet169", 48: "densenet201"}


def backbone_for_weights(state: Mapping[str, Any], source: str = "the weights") -> tuple[str, int]:
    """The registry name of the backbone a state dict fits (``--backbone``) and its spatial dimensions.

    ResNet and DenseNet depths are read from the blocks the file has (ResNet: blocks in ``layer3``
    and bottleneck ``conv3``; DenseNet: layers in ``denseblock3``); the UNet-family files fit the
    backbone of the same name, whose widths must then match the file's.

    Raises:
        PretrainedWeightsError: as :func:`detect_layout`, or a ResNet / DenseNet depth medmtl lacks.
    """
    layout = _LAYOUTS[detect_layout(state, source)]
    kernels = [int(v.ndim) for v in state.values() if getattr(v, "ndim", 0) >= 4]  # (out, in, *kernel)
    if not kernels:
        raise PretrainedWeightsError(f"{source}: no convolution weights, so no 2D or 3D backbone fits it")
    dims = max(kernels) - 2
    if layout.backbone is ResNetBackbone:
        blocks = {k.split(".")[1] for k in state if k.startswith("layer3.")}
        bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
        name = _RESNET_DEPTHS.get((len(blocks), bottleneck))
    elif layout.backbone is DenseNetBackbone:
        layers = {k.split(".")[2] for k in state if k.startswith("features.denseblock3.")}
        name = _DENSENET_DEPTHS.get(len(layers))
    else:
        name = {BasicUNetBackbone: "unet", ResUNetBackbone: "resunet", SegResNetBackbone: "segresnet"}[layout.backbone]
    if name is None:
        raise PretrainedWeightsError(
            f"{source}: a {layout.backbone.__name__} of a depth medmtl has no preset for; known: "
            f"{sorted(_RESNET_DEPTHS.values()) + sorted(_DENSENET_DEPTHS.values())}"
        )
    return name, dims


def _variant(source: str, what: str) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"{source} is a {what}: MONAI, and so medmtl, has no such backbone. Fetch the plain variant's weights "
        f"(torchvision resnet18/34/50, densenet121; timm resnet18.a1_in1k ...). Known layouts: {_fits_text()}"
    )


def state_dict_of(checkpoint: Any, source: str = "the weights") -> tuple[dict[str, torch.Tensor], str | None]:
    """The ``{name: tensor}`` mapping in what a weight file holds, without a DDP ``module.`` prefix.

    Args:
        checkpoint: what ``torch.load`` (or ``safetensors``) returned.
        source: the file, for messages.

    Returns:
        ``(state, entry)``: the state dict and the entry it came from (``None`` when the file is one).

    Raises:
        PretrainedWeightsError: when no state dict is found (the message says what the file holds).
    """

    def tensors(obj: Any) -> bool:
        return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())

    entry: str | None = None
    state: Any = checkpoint
    if not tensors(checkpoint):
        found = [k for k in _ENTRIES if isinstance(checkpoint, Mapping) and tensors(checkpoint.get(k))]
        if not found:
            held = sorted(map(str, checkpoint))[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise PretrainedWeightsError(
                f"{source} is not a state dict (it holds {held}): expected {{name: tensor}} as saved by "
                "torch.save(model.state_dict(), FILE), or a checkpoint with one of the entries "
                f"{list(_ENTRIES)} (MedicalNet, timm training checkpoints)"
            )
        entry = found[0]
        state = checkpoint[entry]
    names = list(state)
    if all(k.startswith("module.") for k in names):  # saved from DDP / DataParallel (MedicalNet files)
        return {k[len("module.") :]: v for k, v in state.items()}, entry
    return dict(state), entry


# -- first convolution ------------------------------------------------------------------------------
def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A convolution weight ``(out, c, *kernel)`` made to read ``in_channels`` channels.

    ``in_channels == 1`` sums over the ``c`` channels (a grey image gets the response the file's
    network gave to it repeated on every channel); otherwise channel ``i`` takes the file's channel
    ``i % c`` scaled by ``c / in_channels`` (timm's ``adapt_input_conv`` convention): the activation
    scale is kept, and the response is exactly kept when ``in_channels`` is a multiple of ``c``.

    Args:
        weight: the file's first-convolution weight.
        in_channels: the network's input channels.

    Returns:
        ``(out, in_channels, *kernel)``, in the weight's dtype.

    Example::

        adapt_input_channels(torch.ones(8, 3, 7, 7), 1)  # every value 3.0
    """
    source = int(weight.shape[1])
    if in_channels == source:
        return weight
    work = weight.float()
    if in_channels == 1:
        adapted = work.sum(dim=1, keepdim=True)
    else:
        index = torch.arange(in_channels) % source
        adapted = work[:, index] * (source / in_channels)
    return adapted.to(weight.dtype)


def _adaptation(source: int, target: int) -> str:
    return f"{source} -> {target} channels ({'summed' if target == 1 else f'repeated, x{source}/{target}'})"


# -- loading ----------------------------------------------------------------------------------------
@dataclass
class _Plan:
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)
    zeroed: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    shape: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dims: tuple[int, int] | None = None  # (file, network) kernel dims of the first convolution when they differ


def _only_inputs_differ(theirs: torch.Tensor, mine: torch.Tensor) -> bool:
    """Same convolution but for the input channels (dim 1)."""
    return theirs.dim() == mine.dim() and theirs.shape[:1] == mine.shape[:1] and theirs.shape[2:] == mine.shape[2:]


def _plan(layout: _Layout, backbone: Backbone, state: Mapping[str, torch.Tensor]) -> _Plan:
    own = backbone.state_dict()
    plan = _Plan()
    left_out = re.compile(layout.left_out)
    first_conv = re.compile(layout.first_conv)
    other_shape: set[str] = set()
    for key, tensor in state.items():
        if left_out.search(key):
            plan.left_out.append(key)
            continue
        name = layout.rename(key, backbone)
        shown = name if name == key else f"{key} (as {name})"
        if name not in own:
            plan.unexpected.append(shown)
            continue
        mine = own[name]
        if tuple(tensor.shape) == tuple(mine.shape):
            plan.state[name] = tensor
            continue
        reads_image = first_conv.search(name) is not None
        if reads_image and _only_inputs_differ(tensor, mine):
            plan.state[name] = adapt_input_channels(tensor, int(mine.shape[1]))
            plan.adapted.append(f"{name} {_adaptation(int(tensor.shape[1]), int(mine.shape[1]))}")
            continue
        if reads_image and tensor.dim() != mine.dim():
            plan.dims = (tensor.dim() - 2, mine.dim() - 2)
        other_shape.add(name)
        plan.shape.append(f"{shown} {list(tensor.shape)} in the file vs {list(mine.shape)}")
    modules = dict(backbone.named_modules())
    for name, mine in own.items():
        if name in plan.state or name in other_shape or name.endswith("num_batches_tracked"):
            continue
        owner, _, leaf = name.rpartition(".")
        if leaf == "bias" and f"{owner}.weight" in other_shape:
            continue  # its layer is already listed under "shape differs"
        if leaf == "bias" and f"{owner}.weight" in plan.state and isinstance(modules.get(owner), _CONVS):
            plan.state[name] = torch.zeros_like(mine)
            plan.zeroed.append(name)
            continue
        plan.missing.append(name)
    return plan


def _fix(layout_name: str, backbone: Backbone, plan: _Plan) -> str:
    kind = type(backbone).__name__
    if plan.dims is not None:
        return (
            f"the file holds {plan.dims[0]}D weights and the backbone is {plan.dims[1]}D: use a {plan.dims[1]}D "
            f"file (MedicalNet for 3D ResNets) or a {plan.dims[0]}D backbone (spatial_dims {plan.dims[0]})"
        )
    if plan.missing and not plan.shape and all(".downsample." in k for k in plan.missing):
        return (
            "the file's ResNet has parameter-free shortcuts (shortcut_type 'A', as MedicalNet resnet18/34): build "
            "the backbone with shortcut_type 'A' (bundle: --backbone_presets::<backbone>::shortcut_type A)"
        )
    return (
        f"the file is another size or variant of {layout_name} than this {kind} (depth, widths, block type, "
        "normalisation): choose the backbone the file was saved from (e.g. --backbone resnet34, or its "
        "sizes in backbone_presets), or fetch the file matching the backbone"
    )


def load_backbone_weights(
    network: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str = "the weights",
    strict: bool = True,
) -> PretrainedWeightsReport:
    """Copy a foreign state dict into every medmtl backbone of ``network``; heads are left alone.

    Args:
        network: a medmtl network or backbone (not wrapped in DDP: unwrap it first).
        state: ``{name: tensor}`` (:func:`state_dict_of` unwraps what a file holds).
        source: the file, for messages and the report.
        strict: raise when any backbone tensor would not load, or any file tensor (its classifier
            aside) has no place; ``False`` loads what fits and logs the rest as a warning.

    Returns:
        A :class:`PretrainedWeightsReport` (also logged).

    Raises:
        PretrainedWeightsError: an unknown layout, a network without a backbone the layout fits
            (naming the layout and the backbones it fits), or, with ``strict``, every key that does
            not fit (up to 12 per kind, then a count) with the fix.

    Example::

        net = MultiTaskClassifier(tasks, backbone="resnet18")
        state, _ = state_dict_of(torch.load("resnet18-f37072fd.pth", weights_only=True))
        load_backbone_weights(net, state, "resnet18-f37072fd.pth")  # conv1 summed to 1 channel, fc left out
    """
    layout_name = detect_layout(state, source)
    layout = _LAYOUTS[layout_name]
    fitting = [
        (name or type(m).__name__, m)
        for name, m in prefixed_backbones("", network).items()
        if isinstance(m, layout.backbone)
    ]
    if not fitting:
        held = (
            sorted({type(m).__name__ for _, m in prefixed_backbones("", network).items()})
            or f"no medmtl backbone ({type(network).__name__})"
        )
        raise PretrainedWeightsError(
            f"{source} holds {layout_name} weights, which load into a {layout.backbone.__name__}; the network has "
            f"{held}. Choose that backbone (--backbone {_NAMES[layout.backbone]}), or a file for this one. "
            f"Layouts and backbones: {_fits_text()}"
        )
    plans = [(name, backbone, _plan(layout, backbone, state)) for name, backbone in fitting]
    problems: dict[str, dict[str, None]] = {"shape": {}, "unexpected": {}, "missing": {}}
    for _, _, plan in plans:
        for kind in problems:
            problems[kind].update(dict.fromkeys(getattr(plan, kind)))
    if any(problems.values()):
        name, backbone, plan = next(p for p in plans if p[2].shape or p[2].unexpected or p[2].missing)
        sections = [
            ("shape differs", list(problems["shape"])),
            ("in the file, not in the network", list(problems["unexpected"])),
            ("in the network, not in the file", list(problems["missing"])),
        ]
        lines = [f"  {title} ({len(keys)}): {_short(keys)}" for title, keys in sections if keys]
        message = (
            f"{source} ({layout_name}) does not fit {type(backbone).__name__} '{name}':\n"
            + "\n".join(lines)
            + f"\nFix: {_fix(layout_name, backbone, plan)}"
        )
        if strict:
            raise PretrainedWeightsError(message)
        logger.warning("%s\nloading what fits", message)
    for _, backbone, plan in plans:
        merged = {**backbone.state_dict(), **plan.state}
        backbone.load_state_dict(merged, strict=True)
    first = plans[0][2]
    report = PretrainedWeightsReport(
        source=source,
        layout=layout_name,
        backbones=[name for name, _, _ in plans],
        loaded=len(first.state) - len(first.zeroed),
        adapted=first.adapted,
        zeroed=first.zeroed,
        left_out=first.left_out,
    )
    logger.info("%s", report)
    return report
