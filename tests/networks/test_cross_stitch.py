"""Cross-stitch: initial mixing values, mixing arithmetic, its optimizer parameter group, outputs, training."""

from __future__ import annotations

import pytest
import torch

from medmtl.networks import CrossStitchNet, CrossStitchUnit, MeshNetBackbone

UNET2D = {"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)}


def test_initial_mixing_is_0_9_same_and_0_1_other():
    unit = CrossStitchUnit(num_columns=2, channels=3)
    expected = torch.tensor([[0.9, 0.1], [0.1, 0.9]]).expand(3, 2, 2)
    torch.testing.assert_close(unit.alpha.detach(), expected)
    three = CrossStitchUnit(num_columns=3, channels=1).alpha.detach()[0]
    torch.testing.assert_close(three, torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    torch.testing.assert_close(
        CrossStitchUnit(3, 1, init_other=0.1).alpha.detach()[0, 0], torch.tensor([0.9, 0.1, 0.1])
    )
    with pytest.raises(ValueError, match="at least 2"):
        CrossStitchUnit(1, 4)


def test_mixing_is_per_channel():
    unit = CrossStitchUnit(num_columns=2, channels=2)
    with torch.no_grad():
        unit.alpha[1] = torch.tensor([[0.0, 1.0], [0.5, 0.5]])  # channel 1: swap / average
    a, b = torch.full((1, 2, 3, 3), 2.0), torch.full((1, 2, 3, 3), 4.0)
    mixed_a, mixed_b = unit([a, b])
    assert torch.allclose(mixed_a[:, 0], torch.tensor(0.9 * 2 + 0.1 * 4))
    assert torch.allclose(mixed_b[:, 0], torch.tensor(0.1 * 2 + 0.9 * 4))
    assert torch.allclose(mixed_a[:, 1], torch.tensor(4.0)) and torch.allclose(mixed_b[:, 1], torch.tensor(3.0))


def test_columns_stitches_and_param_groups(tasks3):
    net = CrossStitchNet("unet", tasks3, backbone_kwargs=UNET2D)
    assert len(net.columns) == 3 and len(net.stitches) == 5  # one column per task, one unit per encoder stage
    assert [s.alpha.shape for s in net.stitches] == [(c, 3, 3) for c in (4, 4, 8, 8, 16)]
    first, second = net.columns[0].conv_0.conv_0.conv.weight, net.columns[1].conv_0.conv_0.conv.weight
    assert not torch.equal(first, second)  # columns are initialised independently
    groups = net.param_groups(lr=1e-3)
    assert [g["name"] for g in groups] == ["networks", "cross_stitch"]
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(0.1)
    stitch_ids = {id(s.alpha) for s in net.stitches}
    assert {id(p) for p in groups[1]["params"]} == stitch_ids == {id(p) for p in net.cross_stitch_parameters()}
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in net.parameters())  # a partition: nothing twice, nothing lost
    optimizer = torch.optim.SGD(net.param_groups(lr=0.01, cross_stitch_lr_mult=10.0, weight_decay=1e-4))
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, pytest.approx(0.1)]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]
    assert {id(p) for p in net.shared_parameters()} == stitch_ids


def test_groups_and_outputs(tasks3):
    net = CrossStitchNet(
        MeshNetBackbone(spatial_dims=3, channels=3, dilations="original"),
        tasks3,
        groups=[["lesion"], ["malignant", "diagnosis"]],
    ).eval()
    assert len(net.columns) == 2 and net.column_dense == [True, False]
    with torch.no_grad():
        out = net(torch.randn(2, 1, 9, 11, 13))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "lesion": (2, 2, 9, 11, 13),
        "malignant": (2, 1),
        "diagnosis": (2, 3),
    }
    with pytest.raises(ValueError, match="groups"):
        CrossStitchNet("meshnet", tasks3, groups=[["lesion", "malignant", "diagnosis"]])
    with pytest.raises(ValueError, match="groups"):
        CrossStitchNet("meshnet", tasks3, groups=[["lesion"], ["malignant"]])


@pytest.mark.parametrize(
    "backbone, kwargs, shape",
    [
        ("resunet", {"spatial_dims": 2, "channels": (4, 8, 16), "strides": (2, 2)}, (33, 37)),
        (
            "segresnet",
            {"spatial_dims": 3, "init_filters": 2, "norm": "batch", "blocks_down": (1, 1), "blocks_up": (1,)},
            (9, 11, 13),
        ),
    ],
)
def test_output_shapes_other_backbones(backbone, kwargs, shape, tasks3):
    net = CrossStitchNet(backbone, tasks3, backbone_kwargs=kwargs).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *shape))
    assert out["lesion"].shape == (2, 2, *shape) and out["malignant"].shape == (2, 1)


def test_training_reduces_every_task_loss_and_moves_the_stitches(tasks3, trainer, targets_for):
    net = CrossStitchNet("unet", tasks3, backbone_kwargs=UNET2D, groups=[["lesion"], ["malignant", "diagnosis"]])
    before = net.stitches[0].alpha.detach().clone()
    x = torch.randn(2, 1, 33, 37)
    first, last = trainer(net, x, targets_for(tasks3, 2, (33, 37)), tasks3, steps=6, params=net.param_groups(1e-2))
    assert all(last[t] < first[t] for t in first), (first, last)
    assert not torch.equal(before, net.stitches[0].alpha.detach())
