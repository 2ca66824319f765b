"""Deep supervision (nnU-Net): coarser segmentation logits in training, scored by the multi-task loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmtl.data.task_keys import deep_supervision_key, reserved_name_error
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskNet, build_multitask_network

from .conftest import make_targets

RESUNET = {"channels": (4, 8, 16, 32), "strides": (2, 2, 2), "num_res_units": 1}
SHAPES = {2: (33, 37), 3: (17, 19, 21)}


def _net(tasks, dims: int = 2, levels: int = 2, **backbone) -> MultiTaskNet:
    torch.manual_seed(0)
    kwargs = {"spatial_dims": dims, "in_channels": 1, **RESUNET, **backbone}
    return MultiTaskNet("resunet", tasks, backbone_kwargs=kwargs, deep_supervision=levels)


@pytest.mark.parametrize("dims", [2, 3])
def test_training_adds_coarser_logits_and_evaluation_does_not(tasks3, dims):
    net = _net(tasks3, dims).train()
    shape = SHAPES[dims]
    out = net(torch.randn(2, 1, *shape))
    # resunet 4..32: the dense features at 1/2 (the heads upsample them), the next up-layer at 1/4
    assert out["lesion"].shape == (2, 2, *shape)
    assert out[deep_supervision_key("lesion", 1)].shape == (2, 2, *[-(-s // 2) for s in shape])
    assert out[deep_supervision_key("lesion", 2)].shape == (2, 2, *[-(-s // 4) for s in shape])
    assert sorted(out) == sorted(
        ["lesion", "malignant", "diagnosis", "deep_supervision_1_lesion", "deep_supervision_2_lesion"]
    )
    with torch.no_grad():
        evaluated = net.eval()(torch.randn(2, 1, *shape))
    assert list(evaluated) == ["lesion", "malignant", "diagnosis"]


def test_basic_unet_supervises_its_upcat_outputs(tasks3):
    torch.manual_seed(0)
    features = (4, 4, 8, 16, 32, 4)
    net = MultiTaskNet("unet", tasks3, backbone_kwargs={"spatial_dims": 3, "features": features}, deep_supervision=3)
    shape = (33, 34, 37)
    out = net.train()(torch.randn(1, 1, *shape))
    # BasicUNet max-pools without padding: each level has floor(size / stride) voxels
    for level, stride in ((1, 2), (2, 4), (3, 8)):
        assert out[deep_supervision_key("lesion", level)].shape == (1, 2, *[s // stride for s in shape])
    assert [head.in_channels for head in net.deep_heads["lesion"]] == [4, 8, 16]


def test_the_task_logits_are_those_of_the_network_without_it(tasks3):
    x = torch.randn(2, 1, *SHAPES[2])
    plain, supervised = _net(tasks3, levels=0).eval(), _net(tasks3, levels=2).eval()
    missing, unexpected = supervised.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == sorted(
        f"deep_heads.lesion.{level}.{p}" for level in (0, 1) for p in ("weight", "bias")
    )
    assert not any(k.startswith("deep_heads") for k in plain.state_dict())  # checkpoints of earlier runs still load
    with torch.no_grad():
        for name, logits in plain(x).items():
            torch.testing.assert_close(supervised(x)[name], logits)
    supervised.train()
    torch.testing.assert_close(supervised(x)["lesion"], plain.train()(x)["lesion"])


def test_the_extra_heads_are_the_tasks_own_parameters(tasks3):
    net = _net(tasks3)
    lesion = {id(p) for p in net.task_specific_parameters("lesion")}
    assert {id(p) for p in net.deep_heads["lesion"].parameters()} <= lesion
    assert not lesion & {id(p) for p in net.shared_parameters()}
    everything = {id(p) for p in net.shared_parameters()} | {id(p) for p in net.task_specific_parameters()}
    assert everything == {id(p) for p in net.parameters()}


def test_torchscript_keeps_both_modes(tasks3):
    scripted = torch.jit.script(_net(tasks3))
    x = torch.randn(1, 1, 32, 32)
    assert deep_supervision_key("lesion", 2) in scripted.train()(x)
    assert list(scripted.eval()(x)) == ["lesion", "malignant", "diagnosis"]


def test_clear_errors_for_levels_the_network_cannot_give(tasks3):
    with pytest.raises(ValueError, match=r"ResUNetBackbone has 2 decoder level\(s\).*0\.\.2"):
        _net(tasks3, levels=3)
    with pytest.raises(ValueError, match="SegResNetBackbone has 0 .*resunet and unet backbones support it"):
        MultiTaskNet("segresnet", tasks3, backbone_kwargs={"spatial_dims": 2, "init_filters": 8}, deep_supervision=1)
    with pytest.raises(ValueError, match="no segmentation task"):
        _net([t for t in tasks3 if t["kind"] != "segmentation"])
    with pytest.raises(ValueError, match="number of decoder levels"):
        _net(tasks3, levels=-1)
    kwargs = {"backbone_kwargs": {"spatial_dims": 2, **RESUNET}, "deep_supervision": 1}
    with pytest.raises(ValueError, match="deep_supervision needs sharing='hard'"):
        build_multitask_network("cross_stitch", "resunet", tasks3, **kwargs)
    assert isinstance(build_multitask_network("hard", "resunet", tasks3, **kwargs), MultiTaskNet)
    assert "reserved" in reserved_name_error("deep_supervision_1_lesion")


def test_the_loss_adds_each_level_with_nnunet_weights_on_the_labelled_samples(tasks3):
    net = _net(tasks3).train()
    shape = (32, 36)
    x = torch.randn(3, 1, *shape)
    targets = make_targets(tasks3, 3, (1, *shape))
    targets["lesion_present"] = torch.tensor([True, False, True])
    loss = MultiTaskLoss(tasks3, weighting="fixed")
    out = net(x)
    losses, _ = loss.compute_task_losses(out, targets)

    seg_loss = loss.task_losses["lesion"]
    labelled = torch.tensor([0, 2])
    target = targets["lesion"].float()
    by_level = []
    for logits in (out["lesion"], out[deep_supervision_key("lesion", 1)], out[deep_supervision_key("lesion", 2)]):
        resized = F.interpolate(target, size=logits.shape[2:], mode="nearest-exact")
        by_level.append(seg_loss(logits[labelled], resized[labelled]))
    expected = (by_level[0] + 0.5 * by_level[1] + 0.25 * by_level[2]) / 1.75
    torch.testing.assert_close(losses["lesion"], expected)
    assert not torch.allclose(losses["lesion"], by_level[0])  # the coarser levels count
    plain = {k: v for k, v in out.items() if not k.startswith("deep_supervision_")}
    torch.testing.assert_close(losses["diagnosis"], loss.compute_task_losses(plain, targets)[0]["diagnosis"])

    total = loss(out, targets)
    total.backward()
    assert net.deep_heads["lesion"][1].weight.grad.abs().sum() > 0
