"""Networks list their backbones by state-dict prefix; layouts and exports read that list, plain modules list none."""

from __future__ import annotations

import pytest
import torch

from medmtl.networks import (
    CrossStitchNet,
    ExpertRouter,
    FoldEnsemble,
    MultiPlaneNet,
    MultiTaskNet,
    SaliencyBridgeNet,
    TaskOutput,
    holds_backbones,
    network_backbones,
)
from medmtl.networks.layouts import RESUNET_LAYOUT, layout_change_from_state, network_layouts
from medmtl.networks.zoo import ZooNetwork

TASKS = [
    {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
    {"name": "malignant", "kind": "binary"},
]
UNET = {"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)}
RESUNET = {"spatial_dims": 2, "channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1}


def _net(backbone: str = "unet", kwargs: dict = UNET) -> MultiTaskNet:
    return MultiTaskNet(backbone, TASKS, backbone_kwargs=kwargs)


def _networks() -> dict[str, tuple[torch.nn.Module, list[str]]]:
    """Each network kind with the prefixes its backbones must be listed under."""
    router_tasks = [{"name": "part", "kind": "multiclass", "classes": ["a", "b"]}]
    router = MultiTaskNet("unet", router_tasks, backbone_kwargs=UNET)
    return {
        "hard sharing": (_net(), ["backbone"]),
        "saliency": (SaliencyBridgeNet("unet", TASKS, backbone_kwargs=UNET), ["backbone"]),
        "cross-stitch": (CrossStitchNet("unet", TASKS, backbone_kwargs=UNET), ["columns.0", "columns.1"]),
        "multi-plane": (
            MultiPlaneNet(
                ["ax", "cor"], TASKS[1:], encoder="resnet10", encoder_kwargs={"block_inplanes": (4, 4, 8, 8)}
            ),
            ["encoders.0", "encoders.1"],
        ),
        "fold ensemble": (FoldEnsemble([_net(), _net()], TASKS), ["members.0.backbone", "members.1.backbone"]),
        "router": (
            ExpertRouter(router, [_net(), _net()], "part"),
            ["router.backbone", "experts.0.backbone", "experts.1.backbone"],
        ),
        "task output": (TaskOutput(_net(), "lesion"), ["network.backbone"]),
        "zoo": (ZooNetwork(_net(), "lesion"), ["backbone"]),  # its state dict keeps the network's names
    }


def test_every_network_lists_its_backbones_under_their_state_dict_prefix() -> None:
    for kind, (network, prefixes) in _networks().items():
        listed = network_backbones(network)
        assert list(listed) == prefixes, kind
        state = set(network.state_dict())
        for prefix, backbone in listed.items():
            keys = {f"{prefix}.{k}" for k in backbone.state_dict()}
            assert keys and keys <= state, kind  # checkpoint keys of that backbone start with its prefix
            assert isinstance(backbone.size_divisor, int)


def test_a_plain_module_lists_none_with_a_clear_error() -> None:
    plain = torch.nn.Conv2d(1, 2, 3)
    assert not holds_backbones(plain)
    with pytest.raises(TypeError, match="Conv2d is not a medmtl network: it does not list its backbones"):
        network_backbones(plain)
    assert network_layouts(plain) == {} and layout_change_from_state(plain, ["weight"]) is None
    router = ExpertRouter(_net(), [plain, torch.nn.Conv2d(1, 2, 3)], "malignant", classes=["no", "yes"])
    assert list(network_backbones(router)) == ["router.backbone"]  # custom experts hold none medmtl knows


def test_layouts_are_found_through_wrappers_at_their_prefix() -> None:
    ensemble = FoldEnsemble([_net("resunet", RESUNET), _net("resunet", RESUNET)], TASKS)
    assert network_layouts(ensemble) == {"resunet": RESUNET_LAYOUT}
    assert network_layouts(FoldEnsemble([_net(), _net()], TASKS)) == {}
    old = dict(ensemble.state_dict())  # a layout-1 checkpoint of member 1: one up-layer more
    old["members.1.backbone.up.1.0.conv.weight"] = torch.zeros(1)
    assert "parameter layout 1" in (layout_change_from_state(ensemble, old) or "")
    zoo = ZooNetwork(_net("resunet", RESUNET), "lesion")
    assert "parameter layout 1" in (layout_change_from_state(zoo, [*zoo.state_dict(), "backbone.up.1.0.w"]) or "")
