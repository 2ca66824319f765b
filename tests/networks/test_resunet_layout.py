"""ResUNet layout 2: MONAI's UNet (parameters, FLOPs, logits) plus heads; layout-1 checkpoints refused by name."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet
from torch.utils.flop_counter import FlopCounterMode

from medmtl.engines import load_pretrained_weights
from medmtl.engines.checkpoint_io import CheckpointError, check_state_dict_fits
from medmtl.engines.run_config import RunConfigExit, RunRecord, build_run_config, network_fingerprint
from medmtl.networks import MultiTaskNet, SegmentationHead
from medmtl.networks.heads import UNetUpHead
from medmtl.networks.layouts import RESUNET_LAYOUT

LESION = {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion", "cyst"]}
DIAGNOSIS = {"name": "diagnosis", "kind": "multiclass", "classes": ["benign", "malignant", "normal"]}
# (spatial_dims, channels, num_res_units): 2D with the usual 2 residual units, 3D with 1, plain convolutions
CASES = [(2, (4, 8, 16), 2), (3, (4, 8, 16, 32), 1), (2, (4, 8), 0)]


def _pair(dims: int, channels: tuple[int, ...], units: int, tasks: list[dict]) -> tuple[MultiTaskNet, UNet]:
    kwargs = {"channels": channels, "strides": (2,) * (len(channels) - 1), "num_res_units": units}
    torch.manual_seed(0)
    net = MultiTaskNet("resunet", tasks, backbone_kwargs={"spatial_dims": dims, **kwargs})
    return net, UNet(dims, 1, len(LESION["classes"]), **kwargs)


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("dims", "channels", "units"), CASES)
def test_one_segmentation_task_is_monais_unet(tmp_path, dims, channels, units) -> None:
    net, unet = _pair(dims, channels, units, [LESION])
    assert isinstance(net.heads["lesion"], UNetUpHead)
    assert _params(net) == _params(unet)
    state = unet.state_dict()
    torch.save(state, tmp_path / "unet.pt")
    load_pretrained_weights(net, tmp_path / "unet.pt")  # encoder and decoder, MONAI names -> medmtl's
    net.heads["lesion"].up.load_state_dict(
        {k[len("model.2.") :]: v for k, v in state.items() if k.startswith("model.2.")}
    )
    x = torch.randn(2, 1, *([16] * dims))
    net.eval()
    unet.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x)["lesion"], unet(x), rtol=0, atol=0)
        assert _flops(lambda: net(x)) == _flops(lambda: unet(x))


def _step_flops(fn, x: torch.Tensor, mode: str) -> int:
    """FLOPs of ``fn(x)`` (a dict or a tensor of logits): forward in no_grad, or forward + backward."""

    def outputs() -> list[torch.Tensor]:
        out = fn(x)
        return list(out.values()) if isinstance(out, dict) else [out]

    if mode == "inference":
        with torch.no_grad():
            return _flops(outputs)
    return _flops(lambda: sum(o.sum() for o in outputs()).backward())


@pytest.mark.parametrize(("dims", "channels", "units"), CASES[:2])
@pytest.mark.parametrize("mode", ["inference", "training"])
def test_with_a_classification_head_it_costs_what_monais_unet_costs(dims, channels, units, mode) -> None:
    net, unet = _pair(dims, channels, units, [LESION, DIAGNOSIS])
    x = torch.randn(2, 1, *([32] * dims))
    bottleneck = net.backbone.encode_features(x)[-1].detach().requires_grad_(True)  # as in the network: grads flow
    head = net.heads["diagnosis"]
    assert _params(net) == _params(unet) + _params(head)
    ours = _step_flops(net, x, mode)
    monai = _step_flops(unet, x, mode)
    assert ours == monai + _step_flops(lambda _: head(bottleneck), x, mode)  # the UNet's layers + the linear layer
    assert ours <= 1.05 * monai  # issue 23's goal: equal within 5 %


def test_every_segmentation_task_gets_the_top_layer_of_its_own_classes() -> None:
    second = {"name": "organ", "kind": "segmentation", "classes": ["background", "organ"]}
    net, _ = _pair(2, (4, 8, 16), 1, [LESION, second, DIAGNOSIS])
    x = torch.randn(2, 1, 33, 37)  # padded to 36 x 40 inside, cropped back
    out = net.eval()(x)
    assert out["lesion"].shape == (2, 3, 33, 37) and out["organ"].shape == (2, 2, 33, 37)
    assert [net.heads[t].up[0].conv.out_channels for t in ("lesion", "organ")] == [3, 2]
    assert net.heads["lesion"].up[0].conv.in_channels == net.backbone.dense_channels == 8  # cat(skip, up) at 1/2


def test_head_features_keep_that_many_channels_at_full_resolution_per_segmentation_task() -> None:
    second = {"name": "organ", "kind": "segmentation", "classes": ["background", "organ"]}
    kwargs = {"spatial_dims": 2, "channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1, "head_features": 4}
    torch.manual_seed(0)
    net = MultiTaskNet("resunet", [LESION, second, DIAGNOSIS], backbone_kwargs=kwargs)
    x = torch.randn(2, 1, 33, 37)
    out = net.eval()(x)
    assert out["lesion"].shape == (2, 3, 33, 37) and out["organ"].shape == (2, 2, 33, 37)
    for task, classes in (("lesion", 3), ("organ", 2)):
        head = net.heads[task]
        assert head.up[0].conv.out_channels == 4 and head.up[0].adn is not None  # normalised and activated
        assert head.up[1].conv.unit0.adn is not None  # MONAI's inner up-layer: no bare last convolution
        assert (head.out.in_channels, head.out.out_channels, head.out.kernel_size) == (4, classes, (1, 1))
    # the backbone and the classification head are the default layout's, parameter for parameter
    default, _ = _pair(2, (4, 8, 16), 1, [LESION, second, DIAGNOSIS])
    wide_keys = set(net.state_dict())
    assert {
        k for k in default.state_dict() if not k.startswith("heads.lesion") and not k.startswith("heads.organ")
    } <= wide_keys
    assert {k for k in wide_keys if k.startswith("heads.lesion.out.")} == {
        "heads.lesion.out.weight",
        "heads.lesion.out.bias",
    }
    # gradients reach the backbone through the wide head
    net.train()(x)["lesion"].sum().backward()
    assert net.backbone.down[0].conv.unit0.conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="head_features"):
        MultiTaskNet("resunet", [LESION], backbone_kwargs={**kwargs, "head_features": -1})


# -- layout 1 ---------------------------------------------------------------------------------------
def _layout_1(tasks: list[dict]) -> MultiTaskNet:
    """The same network in layout 1: MONAI's top up-layer (channels[0] outputs) in the backbone, 1x1 heads."""
    net, _ = _pair(2, (4, 8, 16), 1, tasks)
    c0 = net.backbone.stage_channels[0]
    net.backbone.up.append(net.backbone.dense_head(c0).up)  # up.1: MONAI's _get_up_layer(8, 4, 2, is_top=True)
    net.heads["lesion"] = SegmentationHead(2, c0, len(LESION["classes"]))
    return net


def _record(network: torch.nn.Module) -> dict:
    return build_run_config(
        {"backbone": "resunet", "spatial_size": [32, 32]},
        model_settings=["backbone", "spatial_size"],
        tasks=[LESION],
        network=network,
        argv=["monai", "run"],
    )


def test_layout_1_checkpoints_are_refused_with_the_change_and_the_version(tmp_path) -> None:
    old = _layout_1([LESION])
    record = _record(old)
    record["network"].pop("layouts")  # runs recorded before layout 2 have no layouts entry
    record["versions"]["medmtl"] = "0.1.0"
    ckpt = tmp_path / "models" / "best.pt"
    ckpt.parent.mkdir()
    torch.save({"network": old.state_dict(), "run_config": record}, ckpt)
    net, _ = _pair(2, (4, 8, 16), 1, [LESION])

    run = RunRecord.for_checkpoint(ckpt, tmp_path, argv=[])
    with pytest.raises(RunConfigExit) as info:
        run.check_network(net)
    message = str(info.value)
    assert "trained with medmtl 0.1.0, whose 'resunet' backbone had parameter layout 1" in message
    assert f"builds resunet layout {RESUNET_LAYOUT}" in message and "Retrain the run" in message
    assert str(ckpt) in message and "\n" not in message

    state = torch.load(ckpt, weights_only=True)["network"]  # runs without a record: refused on the keys
    with pytest.raises(CheckpointError, match=r"best\.pt does not fit .*resunet' backbone had parameter layout 1"):
        check_state_dict_fits(net, state, ckpt)


def test_layout_2_runs_record_it_and_other_mismatches_keep_the_generic_message(tmp_path) -> None:
    net, _ = _pair(2, (4, 8, 16), 1, [LESION])
    record = _record(net)
    assert record["network"]["layouts"] == {"resunet": RESUNET_LAYOUT}
    assert "layouts" not in network_fingerprint(torch.nn.Linear(2, 2))
    torch.save({"network": net.state_dict(), "run_config": record}, tmp_path / "best.pt")
    run = RunRecord.for_checkpoint(tmp_path / "best.pt", tmp_path, argv=[])
    run.check_network(net)
    wider, _ = _pair(2, (8, 16, 32), 1, [LESION])
    with pytest.raises(RunConfigExit, match="a setting outside the run record changed") as info:
        run.check_network(wider)
    assert "parameter layout" not in str(info.value)
    with pytest.raises(CheckpointError, match="key\\(s\\) of another shape") as info:
        check_state_dict_fits(wider, net.state_dict(), tmp_path / "best.pt")
    assert "parameter layout" not in str(info.value)
