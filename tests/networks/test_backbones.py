"""Backbones: feature shapes at odd sizes in 2D/3D, stage-wise encoding, reported channels, the registry."""

from __future__ import annotations

import pytest
import torch

from medmtl.networks import (
    Backbone,
    BasicUNetBackbone,
    DenseNetBackbone,
    MeshNetBackbone,
    ResNetBackbone,
    ResUNetBackbone,
    SegResNetBackbone,
    build_backbone,
    list_backbones,
    register_backbone,
)
from medmtl.networks.registry import _BACKBONES

GROUP2 = ("group", {"num_groups": 2})

# (registry name, kwargs without spatial_dims): tiny variants of every backbone
TINY = {
    "unet": {"features": (4, 4, 8, 8, 16, 4)},
    "resunet": {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1},
    "segresnet": {"init_filters": 4, "norm": GROUP2, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
    "meshnet": {"channels": 4, "dilations": "original"},
    "resnet": {"layers": (1, 1, 1, 1), "block_inplanes": (4, 8, 8, 16)},
    "densenet": {"init_features": 4, "growth_rate": 4, "block_config": (1, 1, 1)},
}
SHAPES = {2: (33, 37), 3: (33, 35, 37)}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_features_at_odd_sizes(name, dims):
    backbone = build_backbone(name, spatial_dims=dims, in_channels=2, **TINY[name]).eval()
    assert isinstance(backbone, Backbone)
    x = torch.randn(2, 2, *SHAPES[dims])
    with torch.no_grad():
        dense, bottleneck = backbone(x)
    assert bottleneck.shape[:2] == (2, backbone.bottleneck_channels)
    assert bottleneck.dim() == dims + 2
    if backbone.dense_channels:  # at 1/dense_stride of the input (resunet: 1/2, its heads upsample)
        stride = backbone.dense_stride
        assert dense.shape == (2, backbone.dense_channels, *(-(-s // stride) for s in SHAPES[dims]))
    else:
        assert dense is bottleneck


@pytest.mark.parametrize("name", sorted(TINY))
def test_stagewise_encoding_matches_encoder_and_reported_channels(name):
    backbone = build_backbone(name, spatial_dims=2, in_channels=1, **TINY[name]).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        whole = backbone.encode_features(x)
        stages = []
        y = x
        for k in range(backbone.num_stages):
            y = backbone.encode_stage(k, y)
            stages.append(y)
    assert [s.shape[1] for s in stages] == list(backbone.stage_channels)
    assert len(backbone.stage_channels) == backbone.num_stages
    assert stages[-1].shape[1] == backbone.bottleneck_channels
    torch.testing.assert_close(whole[-1], stages[-1])
    if len(whole) > 1:  # MeshNet keeps only the last map
        for a, b in zip(whole, stages, strict=True):
            torch.testing.assert_close(a, b)


def test_reported_channels_of_named_presets():
    assert build_backbone("densenet121").bottleneck_channels == 1024
    assert build_backbone("densenet169").bottleneck_channels == 1664
    assert build_backbone("resnet18").stage_channels == (64, 64, 128, 256, 512)
    assert build_backbone("resnet50").bottleneck_channels == 2048
    unet = BasicUNetBackbone(spatial_dims=3, features=(8, 8, 16, 32, 64, 12))
    assert (unet.dense_channels, unet.bottleneck_channels, unet.size_divisor) == (12, 64, 1)
    assert not hasattr(unet, "final_conv")  # MONAI's 1x1 output conv is replaced by the heads
    res = ResUNetBackbone(spatial_dims=3, channels=(4, 8, 16, 32), strides=(2, 2, 2))
    assert (res.dense_channels, res.bottleneck_channels, res.size_divisor, res.dense_stride) == (8, 32, 8, 2)
    assert ResUNetBackbone(spatial_dims=2, channels=(4, 8), strides=(3,)).dense_channels == 12  # skip + bottom
    seg = SegResNetBackbone(spatial_dims=2, init_filters=8, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
    assert (seg.dense_channels, seg.bottleneck_channels, seg.size_divisor) == (8, 64, 8)
    assert unet.dense_stride == seg.dense_stride == MeshNetBackbone(channels=7).dense_stride == 1  # full resolution
    assert ResNetBackbone(layers=(1, 1, 1, 1), block_inplanes=(4, 8, 16, 32)).dense_channels == 0
    assert DenseNetBackbone(init_features=4, growth_rate=4, block_config=(1, 1)).dense_channels == 0
    assert MeshNetBackbone(channels=7).dense_channels == 7


def test_registry_lists_all_backbones_and_rejects_duplicates():
    assert {"unet", "resunet", "segresnet", "meshnet", "resnet18", "densenet121"} <= set(list_backbones())
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("unet")(BasicUNetBackbone)
    try:
        register_backbone("tiny_test_unet")(lambda **kw: BasicUNetBackbone(features=(4, 4, 8, 8, 16, 4), **kw))
        assert build_backbone("tiny_test_unet", spatial_dims=2).dense_channels == 4
    finally:
        _BACKBONES.pop("tiny_test_unet", None)


def test_registry_errors_are_helpful():
    with pytest.raises(ValueError, match="unet"):
        build_backbone("unett")
    with pytest.raises(ValueError, match="fixes layers"):
        build_backbone("resnet18", layers=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="6 ints"):
        BasicUNetBackbone(features=(4, 8))
    with pytest.raises(ValueError, match="blocks_up"):
        SegResNetBackbone(blocks_down=(1, 1, 1), blocks_up=(1,))
    with pytest.raises(ValueError, match="strides"):
        ResUNetBackbone(channels=(4, 8, 16), strides=(2,))
