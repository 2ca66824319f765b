"""Parameter layouts of backbones that changed: recorded with every run, older ones refused by name.

Why: a checkpoint stores parameters by name and shape. When a backbone's layout changes, weights
saved before no longer fit, and the generic refusals (the run record's network fingerprint, the
missing / unexpected keys of a state dict) say *that* they do not fit, not *why* or what to do.
Every run records the layout version of its backbones (:func:`network_layouts`, in the run
record's ``network`` entry), and a checkpoint of an older layout is refused with a message that
names the change and the medmtl version (:func:`layout_change_from_record` for run records,
:func:`layout_change_from_state` for state dicts, e.g. runs older than run records).

Layouts:

- ``resunet`` (:class:`~medmtl.networks.backbones.ResUNetBackbone`): **1** (medmtl 0.1.0 until
  issue 23): MONAI UNet's top up-layer in the backbone (``up.<len(strides) - 1>``) with
  ``channels[0]`` outputs, shared by 1x1 segmentation heads. **2**: that layer is each segmentation
  head, with the task's classes as outputs (:class:`~medmtl.networks.heads.UNetUpHead`): the
  network costs what MONAI's ``UNet`` costs. The weights of layout 1 cannot be mapped onto layout 2
  (a layer of another width, and no 1x1 heads), so such runs are retrained.

  ``head_features`` (a constructor argument, default 0) widens each segmentation head of layout 2
  (that many channels at full resolution, then a 1x1 convolution); it is not a layout: the run records
  it with the other backbone arguments and later steps build the same heads from the record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from medmtl.networks.backbone_holders import holds_backbones, network_backbones
from medmtl.networks.backbones import ResUNetBackbone

__all__ = ["RESUNET_LAYOUT", "network_layouts", "layout_change_from_record", "layout_change_from_state"]

RESUNET_LAYOUT = 2
"""Current parameter layout of :class:`~medmtl.networks.backbones.ResUNetBackbone` (see the module docstring)."""


def _resunets(network: nn.Module) -> list[tuple[str, ResUNetBackbone]]:
    """The ResUNet backbones ``network`` lists, by state-dict prefix.

    A module that lists none (a torch / MONAI network, or another module of a checkpoint, e.g. a
    loss) holds no medmtl backbone, hence no layout: these reach the run record and the checkpoint
    checks too.
    """
    if not holds_backbones(network):
        return []
    return [(name, b) for name, b in network_backbones(network).items() if isinstance(b, ResUNetBackbone)]


def network_layouts(network: nn.Module) -> dict[str, int]:
    """``{"resunet": RESUNET_LAYOUT}`` when ``network`` holds a ResUNet backbone, else ``{}``: what a run records."""
    return {"resunet": RESUNET_LAYOUT} if _resunets(network) else {}


def _message(trained_with: str) -> str:
    from medmtl import __version__

    return (
        f"it was trained with {trained_with}, whose 'resunet' backbone had parameter layout 1 (MONAI UNet's top "
        "up-layer inside the backbone with channels[0] outputs, shared by 1x1 segmentation heads); medmtl "
        f"{__version__} builds resunet layout {RESUNET_LAYOUT} (that layer is each segmentation head, with the "
        "task's classes as outputs, so the network costs what MONAI's UNet costs), and layout-1 weights cannot be "
        "mapped onto it. Retrain the run with this medmtl (the same command, a new --output_dir), or evaluate and "
        "predict it with the medmtl it was trained with"
    )


def layout_change_from_record(
    recorded: Mapping[str, Any], network: nn.Module, versions: Mapping[str, Any]
) -> str | None:
    """Why a run record's network differs from ``network`` when a backbone layout changed, else ``None``.

    Args:
        recorded: the record's ``network`` entry (``layouts`` is missing in runs recorded before it).
        network: the network built for the run now.
        versions: the record's ``versions`` (for the medmtl version the run was trained with).
    """
    built = network_layouts(network)
    before = dict(recorded.get("layouts") or {})
    if "resunet" in built and int(before.get("resunet", 1)) < built["resunet"]:
        return _message(f"medmtl {versions.get('medmtl', 'unknown')}")
    return None


def layout_change_from_state(network: nn.Module, keys: Iterable[str]) -> str | None:
    """Why a state dict (its ``keys``, without a DDP prefix) does not fit ``network``, when it is an older layout.

    A layout-1 ResUNet of the same depth holds one up-layer more than layout 2:
    ``<backbone>.up.<len(up)>.*`` with the same ``down.*`` levels.
    """
    keys = list(keys)
    for name, backbone in _resunets(network):
        prefix = f"{name}." if name else ""
        levels = len(backbone.down)

        def held(part: str, prefix: str = prefix) -> bool:
            return any(k.startswith(prefix + part) for k in keys)

        same_depth = held(f"down.{levels - 1}.") and not held(f"down.{levels}.")
        if same_depth and held(f"up.{len(backbone.up)}."):
            return _message("a medmtl before resunet layout 2 (0.1.0 until issue 23)")
    return None
