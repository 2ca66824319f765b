"""Every network builds from a plain-dict bundle config (``_target_`` + keyword arguments) via ConfigParser."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from medmtl.networks import (
    CrossStitchNet,
    MeshNet,
    MultiPlaneNet,
    MultiTaskClassifier,
    MultiTaskNet,
    ResUNetBackbone,
    SaliencyBridgeNet,
)

TASKS = [
    {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
    {"name": "malignant", "kind": "binary"},
    {"name": "diagnosis", "kind": "multiclass", "classes": ["benign", "malignant", "normal"]},
]
UNET = {
    "_target_": "medmtl.networks.BasicUNetBackbone",
    "spatial_dims": 2,
    "in_channels": 1,
    "features": [4, 4, 8, 8, 16, 4],
    "act": ["LeakyReLU", {"negative_slope": 0.1}],  # JSON has no tuples: MONAI accepts ("name", {kwargs}) lists
    "norm": ["instance", {"affine": True}],
}


def parse(network: dict, **extra):
    parser = ConfigParser({"tasks": TASKS, "network_def": network, **extra})
    return parser, parser.get_parsed_content("network_def")


CONFIGS = {
    "nested_target": ({"_target_": "medmtl.networks.MultiTaskNet", "backbone": UNET, "tasks": "@tasks"}, MultiTaskNet),
    "registry_name": (
        {
            "_target_": "medmtl.networks.MultiTaskNet",
            "backbone": "resunet",
            "backbone_kwargs": {"spatial_dims": 2, "channels": [4, 8, 16], "strides": [2, 2], "act": "relu"},
            "tasks": "@tasks",
        },
        MultiTaskNet,
    ),
    "build_backbone": (
        {
            "_target_": "medmtl.networks.MultiTaskNet",
            "backbone": {
                "_target_": "medmtl.networks.build_backbone",
                "name": "meshnet",
                "spatial_dims": 2,
                "channels": 3,
            },
            "tasks": "@tasks",
        },
        MultiTaskNet,
    ),
    "saliency": (
        {
            "_target_": "medmtl.networks.SaliencyBridgeNet",
            "backbone": UNET,
            "tasks": "@tasks",
            "saliency_task": "diagnosis",
            "return_saliency": True,
        },
        SaliencyBridgeNet,
    ),
    "cross_stitch": (
        {
            "_target_": "medmtl.networks.CrossStitchNet",
            "backbone": "meshnet",
            "backbone_kwargs": {"spatial_dims": 2, "channels": 3, "dilations": [1, 2, 1]},
            "tasks": "@tasks",
            "groups": [["lesion"], ["malignant", "diagnosis"]],
        },
        CrossStitchNet,
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dense_networks_build_from_config(name):
    config, cls = CONFIGS[name]
    _, net = parse(config)
    assert type(net) is cls
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 1, 33, 37))
    assert (
        out["lesion"].shape == (1, 2, 33, 37) and out["malignant"].shape == (1, 1) and out["diagnosis"].shape == (1, 3)
    )
    if name == "registry_name":
        assert isinstance(net.backbone, ResUNetBackbone)


def test_cross_stitch_optimizer_from_config():
    parser, net = parse(
        CONFIGS["cross_stitch"][0],
        optimizer={"_target_": "torch.optim.Adam", "params": "$@network_def.param_groups(1e-3)", "lr": 1e-3},
    )
    optimizer = parser.get_parsed_content("optimizer")
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, pytest.approx(0.1)]


def test_classifiers_and_meshnet_build_from_config():
    _, classifier = parse(
        {
            "_target_": "medmtl.networks.MultiTaskClassifier",
            "tasks": "$@tasks[1:]",
            "backbone": "resnet10",
            "backbone_kwargs": {"block_inplanes": [4, 4, 8, 8]},
        }
    )
    assert isinstance(classifier, MultiTaskClassifier)
    assert classifier.eval()(torch.randn(1, 1, 33, 33))["diagnosis"].shape == (1, 3)
    _, multiplane = parse(
        {
            "_target_": "medmtl.networks.MultiPlaneNet",
            "views": ["sagittal", "coronal", "axial"],
            "tasks": [{"name": "findings", "kind": "multilabel", "classes": ["abnormal", "acl", "meniscus"]}],
            "encoder": "densenet",
            "encoder_kwargs": {"init_features": 4, "growth_rate": 4, "block_config": [1, 1]},
            "share_encoder": True,
        }
    )
    assert isinstance(multiplane, MultiPlaneNet)
    views = {v: torch.randn(1, 3, 33, 33) for v in ("sagittal", "coronal", "axial")}
    assert multiplane.eval()(views)["findings"].shape == (1, 3)
    _, meshnet = parse({"_target_": "medmtl.networks.MeshNet", "channels": 5, "dilations": "revisited"})
    assert isinstance(meshnet, MeshNet) and sum(p.numel() for p in meshnet.parameters()) == 5_682
