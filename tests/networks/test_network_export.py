"""TorchScript export: script (and trace with strict=False) -> file -> reload gives the same outputs;
``monai.bundle.ckpt_export`` works on a bundle config naming a medmtl network."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ckpt_export

from medmtl.networks import (
    CrossStitchNet,
    MeshNetBackbone,
    MultiPlaneNet,
    MultiTaskClassifier,
    MultiTaskNet,
    SaliencyBridgeNet,
    SegResNetBackbone,
)

UNET2D = {"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)}
SEG_BIN = [
    {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
    {"name": "malignant", "kind": "binary"},
]
CLS = [{"name": "abnormal", "kind": "binary"}, {"name": "part", "kind": "multiclass", "classes": ["a", "b", "c"]}]


def build(kind: str):
    """A tiny network of each kind and an input for it."""
    if kind == "unet2d":
        return MultiTaskNet("unet", SEG_BIN, backbone_kwargs=UNET2D), torch.randn(2, 1, 33, 37)
    if kind == "segresnet3d":
        backbone = SegResNetBackbone(spatial_dims=3, init_filters=2, norm="batch", blocks_down=(1, 1), blocks_up=(1,))
        return MultiTaskNet(backbone, SEG_BIN), torch.randn(1, 1, 9, 11, 13)
    if kind == "meshnet3d":
        return MultiTaskNet(MeshNetBackbone(channels=3, dilations="original"), SEG_BIN), torch.randn(1, 1, 9, 11, 13)
    if kind == "saliency":
        net = SaliencyBridgeNet("unet", SEG_BIN, backbone_kwargs=UNET2D, return_saliency=True)
        return net, torch.randn(2, 1, 33, 37)
    if kind == "cross_stitch":
        kwargs = {"spatial_dims": 2, "channels": (4, 8, 16), "strides": (2, 2)}
        return CrossStitchNet("resunet", SEG_BIN, backbone_kwargs=kwargs), torch.randn(2, 1, 33, 37)
    if kind == "classifier":
        kwargs = {"init_features": 4, "growth_rate": 4, "block_config": (1, 1)}
        return MultiTaskClassifier(CLS, backbone="densenet", backbone_kwargs=kwargs), torch.randn(2, 1, 33, 37)
    if kind == "multiplane":
        net = MultiPlaneNet(["sag", "cor"], CLS, encoder="resnet10", encoder_kwargs={"block_inplanes": (4, 4, 8, 8)})
        return net, {"sag": torch.randn(1, 3, 33, 33), "cor": torch.randn(1, 5, 33, 33)}
    raise ValueError(kind)


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kind", ["unet2d", "segresnet3d", "meshnet3d", "saliency", "cross_stitch", "classifier", "multiplane"]
)
def test_script_save_load_same_outputs(kind, tmp_path):
    net, x = build(kind)
    net.eval()
    path = tmp_path / f"{kind}.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        expected, got = net(x), loaded(x)
    assert_same(expected, got)
    if kind == "saliency":
        with torch.no_grad():
            torch.testing.assert_close(loaded.saliency(x), expected["saliency"], rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_trace_strict_false_save_load_same_outputs(tmp_path):
    net, x = build("unet2d")
    net.eval()
    path = tmp_path / "traced.ts"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(net, x, strict=False, check_trace=False), str(path))
        assert_same(net(x), torch.jit.load(str(path))(x))


def test_monai_bundle_ckpt_export(tmp_path):
    config = {
        "network_def": {
            "_target_": "medmtl.networks.MultiTaskNet",
            "backbone": {"_target_": "medmtl.networks.BasicUNetBackbone", **UNET2D},
            "tasks": SEG_BIN,
        }
    }
    config_file = tmp_path / "inference.json"
    config_file.write_text(json.dumps(config))
    net, x = build("unet2d")
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        config_file=str(config_file),
    )
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        assert_same(net.eval()(x), loaded(x))
