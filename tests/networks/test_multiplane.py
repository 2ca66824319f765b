"""MultiPlaneNet (MRNet): variable slice counts per view, shared/separate encoders, input checks, training."""

from __future__ import annotations

import pytest
import torch

from medmtl.networks import DenseNetBackbone, MultiPlaneNet

VIEWS = ["sagittal", "coronal", "axial"]
THREE_BINARY = [{"name": name, "kind": "binary"} for name in ("abnormal", "acl", "meniscus")]
TINY_RESNET = {"block_inplanes": (4, 4, 8, 8)}


def stacks(batch: int = 2) -> dict[str, torch.Tensor]:
    return {
        "sagittal": torch.randn(batch, 5, 33, 33),
        "coronal": torch.randn(batch, 1, 7, 33, 33),  # (B, 1, S, H, W) is accepted too
        "axial": torch.randn(batch, 3, 37, 35),
    }


@pytest.mark.parametrize("share", [False, True])
def test_three_binary_tasks_with_variable_slices(share):
    net = MultiPlaneNet(VIEWS, THREE_BINARY, encoder="resnet10", encoder_kwargs=TINY_RESNET, share_encoder=share)
    with torch.no_grad():
        out = net.eval()(stacks())
    assert {k: tuple(v.shape) for k, v in out.items()} == {"abnormal": (2, 1), "acl": (2, 1), "meniscus": (2, 1)}
    assert len(net.encoders) == (1 if share else 3)
    assert net.heads["acl"].fc.in_features == 3 * net.feature_channels == 3 * 8


def test_one_multilabel_task_on_a_densenet_and_parameter_sharing():
    tasks = [{"name": "findings", "kind": "multilabel", "classes": ["abnormal", "acl", "meniscus"]}]
    encoder = DenseNetBackbone(spatial_dims=2, init_features=4, growth_rate=4, block_config=(1, 1))
    separate = MultiPlaneNet(VIEWS, tasks, encoder=encoder)
    shared = MultiPlaneNet(VIEWS, tasks, encoder=encoder, share_encoder=True)
    n_encoder = sum(p.numel() for p in encoder.parameters())
    n_head = sum(p.numel() for p in shared.heads.parameters())
    assert sum(p.numel() for p in shared.parameters()) == n_encoder + n_head
    assert sum(p.numel() for p in separate.parameters()) == 3 * n_encoder + n_head
    assert not torch.equal(separate.encoders[0].features.conv0.weight, separate.encoders[1].features.conv0.weight)
    with torch.no_grad():
        assert separate.eval()(stacks(1))["findings"].shape == (1, 3)
    assert len(separate.shared_parameters()) == len(list(separate.encoders.parameters()))


def test_slice_order_and_count_do_not_matter_for_max_pooling():
    net = MultiPlaneNet(["only"], THREE_BINARY[:1], encoder="resnet10", encoder_kwargs=TINY_RESNET).eval()
    x = torch.randn(1, 4, 33, 33)
    with torch.no_grad():
        a = net({"only": x})["abnormal"]
        b = net({"only": torch.cat([x.flip(1), x[:, :2]], dim=1)})["abnormal"]  # reversed + repeated slices
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_training_reduces_every_task_loss(trainer, targets_for):
    net = MultiPlaneNet(VIEWS, THREE_BINARY, encoder="resnet10", encoder_kwargs=TINY_RESNET)
    first, last = trainer(net, stacks(2), targets_for(THREE_BINARY, 2, ()), THREE_BINARY, steps=6)
    assert all(last[t] < first[t] for t in first), (first, last)


def test_input_and_configuration_errors():
    net = MultiPlaneNet(VIEWS, THREE_BINARY, encoder="resnet10", encoder_kwargs=TINY_RESNET)
    x = stacks()
    del x["axial"]
    with pytest.raises(KeyError, match="no view 'axial'"):
        net(x)
    with pytest.raises(ValueError, match="must be"):
        net({**stacks(), "axial": torch.randn(2, 33, 33)})
    with pytest.raises(ValueError, match="unique"):
        MultiPlaneNet(["a", "a"], THREE_BINARY)
    with pytest.raises(ValueError, match="image-level tasks only"):
        MultiPlaneNet(VIEWS, [{"name": "mask", "kind": "segmentation", "classes": ["bg", "fg"]}])
    with pytest.raises(ValueError, match="fixes spatial_dims"):
        MultiPlaneNet(VIEWS, THREE_BINARY, encoder="resnet10", encoder_kwargs={"spatial_dims": 3})
