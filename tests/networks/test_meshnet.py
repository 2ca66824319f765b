"""MeshNet: exact parameter counts, layer arrangement, dilation schedules, checkpointing, 2D/3D."""

from __future__ import annotations

import pytest
import torch

import medmtl.networks.meshnet as meshnet_module
from medmtl.networks import DILATION_SCHEDULES, MeshNet, MeshNetBackbone, MultiTaskNet


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("channels, expected", [(5, 5_682), (16, 56_194), (26, 147_474)])
def test_revisited_parameter_counts_are_exact(channels, expected):
    assert n_params(MeshNet(spatial_dims=3, in_channels=1, out_channels=2, channels=channels)) == expected
    # the same network as a multi-task backbone with one 2-class segmentation head
    seg = [{"name": "tissue", "kind": "segmentation", "classes": ["background", "brain"]}]
    assert n_params(MultiTaskNet(MeshNetBackbone(channels=channels, dilations="revisited"), seg)) == expected


def test_layer_arrangement_conv_bn_relu_dropout():
    backbone = MeshNetBackbone(spatial_dims=3, channels=5, dilations="brainchop", dropout=0.25)
    assert backbone.dilations == (1, 2, 4, 8, 16, 8, 4, 2, 1)
    for layer, d in zip(backbone.layers, DILATION_SCHEDULES["brainchop"], strict=True):
        conv, adn = layer.conv, layer.adn
        assert conv.dilation == (d, d, d) and conv.padding == (d, d, d) and conv.bias is not None
        assert [type(m).__name__ for m in adn] == ["BatchNorm3d", "ReLU", "Dropout"]
        assert adn.D.p == 0.25
    assert len(MeshNetBackbone(dilations="original").layers) == 7
    assert MeshNetBackbone(dilations=[1, 3]).dilations == (1, 3)
    with pytest.raises(ValueError):
        MeshNetBackbone(dilations="unknown")
    with pytest.raises(ValueError):
        MeshNetBackbone(dilations=[1, 0])


@pytest.mark.parametrize("dims, shape", [(3, (1, 1, 17, 19, 21)), (2, (2, 1, 33, 37))])
def test_full_resolution_output(dims, shape):
    net = MeshNet(spatial_dims=dims, in_channels=1, out_channels=3, channels=4).eval()
    with torch.no_grad():
        assert net(torch.randn(*shape)).shape == (shape[0], 3, *shape[2:])


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    calls = []
    real = meshnet_module.checkpoint
    monkeypatch.setattr(meshnet_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 1, 11, 13, 15)
    plain = MeshNet(channels=4, dilations="original")
    ckpt = MeshNet(channels=4, dilations="original", gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    for net in (plain, ckpt):
        net.train()
        net(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert len(calls) == 7  # one checkpointed call per layer, only for the checkpointing network
