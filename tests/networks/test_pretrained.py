"""Pretrained encoders from foreign weight files: torchvision, timm, MONAI and MedicalNet layouts.

The weight files are written here. torchvision and timm are not dependencies, so their layouts are
built from MONAI networks whose parameter names are the same (ResNet), or renamed to theirs
(DenseNet ``denselayerN.norm1``), with the canonical names asserted; every tensor is random, so
equal values mean the file's values arrived.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet, DenseNet, ResNet, SegResNet, UNet
from torch import nn

from medmtl.bundle_layers import bundle_dir
from medmtl.engines import CheckpointError, encoder_norm_layers, freeze_encoder, load_pretrained_weights
from medmtl.networks import (
    MultiPlaneNet,
    MultiTaskClassifier,
    MultiTaskNet,
    PretrainedWeightsError,
    adapt_input_channels,
)

BINARY = [{"name": "abnormal", "kind": "binary"}]
SEGMENT = [{"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]}, *BINARY]
RESNET = {"block": "basic", "layers": (1, 1, 1, 1), "block_inplanes": (8, 16, 16, 16)}
DENSENET = {"init_features": 8, "growth_rate": 4, "block_config": (2, 2)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Every float tensor random (running statistics included), so equal values prove a copy."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.rand(v.shape, generator=g) + 0.5 if "running_var" in k else torch.randn(v.shape, generator=g))
        if v.is_floating_point()
        else v
        for k, v in state.items()
    }


def _torchvision_resnet(in_channels: int = 3, spatial_dims: int = 2, **kwargs) -> dict[str, torch.Tensor]:
    """torchvision ``resnet*().state_dict()`` names: bias-free shortcut convolutions, ``fc`` classifier."""
    arch = {**RESNET, **kwargs}
    net = ResNet(
        arch["block"],
        list(arch["layers"]),
        list(arch["block_inplanes"]),
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        bias_downsample=False,
        shortcut_type=arch.get("shortcut_type", "B"),
        num_classes=1000,
    )
    state = _random(net.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.bn2.num_batches_tracked", "fc.weight"} <= set(state)
    assert "conv1.bias" not in state and "layer2.0.downsample.0.bias" not in state
    assert ("layer2.0.downsample.0.weight" in state) == (arch.get("shortcut_type", "B") == "B")
    return state


def _torchvision_densenet(old_names: bool = False) -> dict[str, torch.Tensor]:
    """torchvision ``densenet121().state_dict()`` names (``norm1``; the download files' older ``norm.1``)."""
    monai = DenseNet(spatial_dims=2, in_channels=3, out_channels=1000, **DENSENET).state_dict()
    state = {}
    for key, value in _random(monai).items():
        key = key.replace(".layers.", ".").replace("class_layers.out.", "classifier.")
        if old_names:
            key = key.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2.")
        state[key] = value
    layer = "features.denseblock1.denselayer1"
    assert (f"{layer}.norm.1.weight" if old_names else f"{layer}.norm1.weight") in state
    assert {"features.conv0.weight", "features.transition1.conv.weight", "features.norm5.running_mean"} <= set(state)
    return state


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _classifier(backbone: str, kwargs: dict, in_channels: int = 1, spatial_dims: int = 2) -> MultiTaskClassifier:
    torch.manual_seed(1)
    return MultiTaskClassifier(
        BINARY, backbone=backbone, spatial_dims=spatial_dims, in_channels=in_channels, backbone_kwargs=kwargs
    )


def _assert_loaded(backbone: nn.Module, expected: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> int:
    own = backbone.state_dict()
    for key, value in expected.items():
        if not key.startswith(skip):
            assert torch.equal(own[key], value.to(own[key].dtype)), key
    return len(expected)


# -- torchvision / timm / MedicalNet ResNets --------------------------------------------------------
def test_torchvision_resnet_into_a_grey_classifier(tmp_path) -> None:
    state = _torchvision_resnet()
    path = _save(tmp_path / "resnet18-f37072fd.pth", state)
    net = _classifier("resnet", RESNET)
    heads = {k: v.clone() for k, v in net.heads.state_dict().items()}

    report = load_pretrained_weights(net, path)

    own = net.backbone.state_dict()
    torch.testing.assert_close(own["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    _assert_loaded(net.backbone, {k: v for k, v in state.items() if k not in ("conv1.weight", "fc.weight", "fc.bias")})
    for key in ("layer2.0.downsample.0.bias", "layer4.0.downsample.0.bias"):
        assert torch.count_nonzero(own[key]) == 0  # the file's shortcut has no bias: zero is the same function
    assert all(torch.equal(v, heads[k]) for k, v in net.heads.state_dict().items())
    assert report.layout.startswith("ResNet") and report.backbones == ["backbone"]
    assert report.loaded == len(state) - 2 and report.left_out == ["fc.weight", "fc.bias"]
    assert report.zeroed == ["layer2.0.downsample.0.bias", "layer3.0.downsample.0.bias", "layer4.0.downsample.0.bias"]
    assert "3 -> 1 channels (summed)" in str(report)


def test_first_convolution_adaptation_values() -> None:
    weight = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(adapt_input_channels(weight, 1), weight[:, :1] + weight[:, 1:2] + weight[:, 2:])
    four = adapt_input_channels(weight, 4)  # channels 0, 1, 2, 0, each x 3/4
    torch.testing.assert_close(four, torch.cat([weight, weight[:, :1]], dim=1) * 0.75)
    torch.testing.assert_close(adapt_input_channels(weight[:, :1], 3), weight[:, :1].repeat(1, 3, 1, 1) / 3)
    assert adapt_input_channels(weight, 3) is weight
    # an image equal on every channel gets the response the file's network gave it
    image = torch.randn(1, 1, 9, 9)
    reference = torch.conv2d(image.repeat(1, 3, 1, 1), weight)
    torch.testing.assert_close(torch.conv2d(image, adapt_input_channels(weight, 1)), reference)
    six = adapt_input_channels(weight, 6)  # a multiple of the file's channels: exactly the same response
    torch.testing.assert_close(torch.conv2d(image.repeat(1, 6, 1, 1), six), reference)


def test_timm_training_checkpoint_into_two_channels(tmp_path) -> None:
    state = _torchvision_resnet()  # timm's resnet18 has torchvision's names
    checkpoint = {"epoch": 7, "arch": "resnet18", "metric": 71.2, "state_dict": state, "state_dict_ema": state}
    net = _classifier("resnet", RESNET, in_channels=2)
    report = load_pretrained_weights(net, _save(tmp_path / "model_best.pth.tar", checkpoint))
    conv1 = net.backbone.conv1.weight.detach()
    torch.testing.assert_close(conv1, state["conv1.weight"][:, :2] * 1.5)
    assert "3 -> 2 channels (repeated, x3/2)" in report.adapted[0]


def test_medicalnet_3d_resnet(tmp_path) -> None:
    state = _torchvision_resnet(in_channels=1, spatial_dims=3)
    del state["fc.weight"], state["fc.bias"]  # MedicalNet files have no classifier
    path = _save(tmp_path / "resnet_10_23dataset.pth", {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    net = _classifier("resnet", RESNET, spatial_dims=3)
    report = load_pretrained_weights(net, path)
    _assert_loaded(net.backbone, state)
    assert not report.adapted and report.loaded == len(state)


@pytest.mark.parametrize("share_encoder", [False, True])
def test_every_view_encoder_of_multiplane_net(tmp_path, share_encoder) -> None:
    state = _torchvision_resnet()
    path = _save(tmp_path / "resnet.pt", state)
    torch.manual_seed(0)
    net = MultiPlaneNet(["axial", "coronal", "sagittal"], BINARY, "resnet", RESNET, share_encoder=share_encoder)
    heads = {k: v.clone() for k, v in net.heads.state_dict().items()}
    report = load_pretrained_weights(net, path)
    assert report.backbones == (["encoders.0"] if share_encoder else ["encoders.0", "encoders.1", "encoders.2"])
    for encoder in net.encoders:
        torch.testing.assert_close(encoder.conv1.weight.detach(), state["conv1.weight"].sum(dim=1, keepdim=True))
        _assert_loaded(encoder, {k: v for k, v in state.items() if not k.startswith(("conv1.", "fc."))})
    assert all(torch.equal(v, heads[k]) for k, v in net.heads.state_dict().items())


# -- DenseNet and the MONAI segmentation networks ----------------------------------------------------
@pytest.mark.parametrize("old_names", [False, True], ids=["torchvision", "torchvision-download"])
def test_torchvision_densenet(tmp_path, old_names) -> None:
    state = _torchvision_densenet(old_names)
    net = _classifier("densenet", DENSENET)
    report = load_pretrained_weights(net, _save(tmp_path / "densenet121.pth", state))
    own = net.backbone.state_dict()
    layer = "features.denseblock1.denselayer1"
    source = f"{layer}.norm.1.weight" if old_names else f"{layer}.norm1.weight"
    assert torch.equal(own[f"{layer}.layers.norm1.weight"], state[source])
    assert torch.equal(own["features.norm5.running_var"], state["features.norm5.running_var"])
    assert report.layout == "DenseNet (torchvision / timm)" and report.left_out == [
        "classifier.weight",
        "classifier.bias",
    ]
    assert report.loaded == len(state) - 2 == len(own)


def _monai(name: str) -> tuple[nn.Module, str, dict, tuple[str, ...]]:
    """A MONAI network saved by a MONAI user, the medmtl backbone for it, and the file keys not loaded."""
    if name == "unet":
        net = UNet(2, 3, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=2)
        return net, "resunet", {"spatial_dims": 2, "channels": (4, 8, 16), "strides": (2, 2)}, ("model.2.",)
    if name == "basicunet":
        net = BasicUNet(2, 3, 3, features=(4, 4, 8, 8, 16, 4))
        return net, "unet", {"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)}, ("final_conv.",)
    if name == "segresnet":
        net = SegResNet(2, init_filters=8, in_channels=3, out_channels=3, blocks_down=(1, 2), blocks_up=(1,))
        return net, "segresnet", {"spatial_dims": 2, "blocks_down": (1, 2), "blocks_up": (1,)}, ("conv_final.2.",)
    net = DenseNet(spatial_dims=2, in_channels=3, out_channels=7, **DENSENET)
    return net, "densenet", DENSENET, ("class_layers.",)


@pytest.mark.parametrize("name", ["unet", "basicunet", "segresnet", "densenet"])
def test_monai_networks(tmp_path, name) -> None:
    monai_net, backbone, kwargs, left_out = _monai(name)
    state = _random(monai_net.state_dict())
    torch.manual_seed(0)
    tasks = BINARY if backbone == "densenet" else SEGMENT
    net = MultiTaskNet(backbone, tasks, backbone_kwargs=kwargs)
    heads = {k: v.clone() for k, v in net.heads.state_dict().items()}

    report = load_pretrained_weights(net, _save(tmp_path / "model.pt", state))

    own = net.backbone.state_dict()
    first = next(k for k in own if own[k].dim() >= 4)
    assert report.adapted[0] == f"{first} 3 -> 1 channels (summed)"
    assert len(report.adapted) == (2 if name == "unet" else 1)  # the UNet's first residual reads the image too
    if name == "unet":  # nested MONAI names -> down / bottom / up; the top up-layer outputs the file's classes
        assert torch.equal(own["bottom.residual.weight"], state["model.1.submodule.1.submodule.residual.weight"])
        assert torch.equal(own["up.0.0.conv.weight"], state["model.1.submodule.2.0.conv.weight"])
        assert torch.equal(own["down.1.conv.unit0.conv.weight"], state["model.1.submodule.0.conv.unit0.conv.weight"])
        assert len(net.backbone.up) == 1  # MONAI's top up-layer (model.2) is the segmentation head's, left out
        assert report.loaded == len([k for k in state if not k.startswith("model.2.")]) == len(own)
        torch.testing.assert_close(own["down.0.residual.weight"], state["model.0.residual.weight"].sum(1, keepdim=True))
    else:
        _assert_loaded(net.backbone, {k: v for k, v in state.items() if k != first}, skip=left_out)
    assert report.left_out and all(k.startswith(left_out) for k in report.left_out)
    assert all(torch.equal(v, heads[k]) for k, v in net.heads.state_dict().items())


# -- errors -----------------------------------------------------------------------------------------
def test_shape_and_key_mismatches_are_one_error_with_the_fix(tmp_path) -> None:
    wider = _save(tmp_path / "wide.pt", _torchvision_resnet(block_inplanes=(8, 16, 32, 32)))
    net = _classifier("resnet", RESNET)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(PretrainedWeightsError) as info:
        load_pretrained_weights(net, wider)
    message = str(info.value)
    assert message.startswith(f"{wider} (ResNet")
    assert "shape differs (30): layer3.0.conv1.weight [32, 16, 3, 3] in the file vs [16, 16, 3, 3]" in message
    assert "(+18 more)" in message and "Fix: " in message and "--backbone resnet34" in message
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing half-loaded

    deeper = _save(tmp_path / "deep.pt", _torchvision_resnet(layers=(2, 1, 1, 1)))
    with pytest.raises(
        PretrainedWeightsError, match=r"in the file, not in the network \(12\): layer1\.1\.conv1\.weight"
    ):
        load_pretrained_weights(net, deeper)
    shallower = _save(tmp_path / "shallow.pt", _torchvision_resnet())
    with pytest.raises(
        PretrainedWeightsError, match=r"in the network, not in the file \(10\): layer1\.1\.conv1\.weight"
    ):
        load_pretrained_weights(_classifier("resnet", {**RESNET, "layers": (2, 1, 1, 1)}), shallower)


def test_non_strict_loads_what_fits(tmp_path, caplog) -> None:
    deeper = _save(tmp_path / "deep.pt", _torchvision_resnet(layers=(2, 1, 1, 1)))
    net = _classifier("resnet", RESNET)
    with caplog.at_level(logging.WARNING, logger="medmtl.networks.pretrained"):
        report = load_pretrained_weights(net, deeper, strict=False)
    assert "in the file, not in the network (12)" in caplog.text
    assert torch.equal(net.backbone.layer4[0].conv2.weight, torch.load(deeper)["layer4.0.conv2.weight"])
    assert report.loaded == len(net.backbone.state_dict()) - 3  # all but the three zeroed shortcut biases


def test_layout_errors_name_the_file_and_the_backbones(tmp_path) -> None:
    resnet = _save(tmp_path / "resnet.pt", _torchvision_resnet())
    net = _classifier("resnet", RESNET)
    unknown = _save(tmp_path / "vit.pt", {"patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)})
    with pytest.raises(PretrainedWeightsError, match=r"vit\.pt: unknown weight layout \(first keys: patch_embed") as e:
        load_pretrained_weights(net, unknown)
    assert "UNet (MONAI) -> ResUNetBackbone" in str(e.value)

    meshnet = MultiTaskNet("meshnet", SEGMENT, backbone_kwargs={"spatial_dims": 2, "channels": 4})
    with pytest.raises(PretrainedWeightsError) as e:
        load_pretrained_weights(meshnet, resnet)
    assert "holds ResNet" in str(
        e.value
    ) and "which load into a ResNetBackbone; the network has ['MeshNetBackbone']" in (str(e.value))
    assert "--backbone resnet18" in str(e.value) and str(resnet) in str(e.value)

    with pytest.raises(PretrainedWeightsError, match=r"is not a state dict \(it holds \['epoch', 'note'\]\)"):
        load_pretrained_weights(net, _save(tmp_path / "meta.pt", {"epoch": 3, "note": "no weights"}))
    medmtl_ckpt = _save(tmp_path / "best.pt", {"network": _classifier("resnet", RESNET).state_dict()})
    with pytest.raises(PretrainedWeightsError, match="is a medmtl checkpoint.*--pretrained_ckpt"):
        load_pretrained_weights(net, medmtl_ckpt)
    deep_stem = {"conv1.0.weight": torch.zeros(4, 3, 3, 3), "layer1.0.conv1.weight": torch.zeros(4, 4, 3, 3)}
    with pytest.raises(PretrainedWeightsError, match="deep stem"):
        load_pretrained_weights(net, _save(tmp_path / "resnet18d.pt", deep_stem))
    with pytest.raises(CheckpointError, match="module.pt"):  # a pickled module: refused, never executed
        load_pretrained_weights(net, _save(tmp_path / "module.pt", nn.Linear(2, 2)))
    with pytest.raises(FileNotFoundError, match="fetch it on a connected machine"):
        load_pretrained_weights(net, tmp_path / "missing.pt")
    with pytest.raises(SystemExit, match="PretrainedWeightsError: .*unknown weight layout"):
        load_pretrained_weights(net, unknown, exit_on_error=True)


def test_3d_network_and_shortcut_hints(tmp_path) -> None:
    net3d = _classifier("resnet", RESNET, spatial_dims=3)
    with pytest.raises(PretrainedWeightsError, match="the file holds 2D weights and the backbone is 3D"):
        load_pretrained_weights(net3d, _save(tmp_path / "resnet2d.pt", _torchvision_resnet()))
    shortcut_a = _torchvision_resnet(in_channels=1, spatial_dims=3, shortcut_type="A")  # MedicalNet resnet18/34
    with pytest.raises(PretrainedWeightsError, match="shortcut_type 'A'"):
        load_pretrained_weights(net3d, _save(tmp_path / "resnet_18.pth", {"state_dict": shortcut_a}))
    net_a = _classifier("resnet", {**RESNET, "shortcut_type": "A"}, spatial_dims=3)
    assert load_pretrained_weights(net_a, tmp_path / "resnet_18.pth").loaded == len(shortcut_a) - 2


def test_safetensors_files(tmp_path) -> None:
    state = _torchvision_resnet()
    path = tmp_path / "model.safetensors"
    try:
        from safetensors.torch import save_file
    except ImportError:
        path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        with pytest.raises(PretrainedWeightsError, match="pip install safetensors, or convert it"):
            load_pretrained_weights(_classifier("resnet", RESNET), path)
        return
    save_file(state, path)
    assert load_pretrained_weights(_classifier("resnet", RESNET), path).loaded == len(state) - 2


# -- bundle config and the linear probe -------------------------------------------------------------
def test_bundle_config_loads_and_records_the_file(tmp_path) -> None:
    config = json.loads((bundle_dir("demo").parent / "common" / "configs" / "train.json").read_text())
    assert config["pretrained_weights"] is None
    assert config["mlflow_params"]["pretrained_weights"] == "@pretrained_weights"
    (line,) = [x for x in config["initialize"] if "@pretrained_weights" in x]
    path = _save(tmp_path / "densenet121.pth", _torchvision_densenet())
    parser = ConfigParser(
        {
            "imports": ["$import medmtl", "$import medmtl.engines"],
            "network_def": {
                "_target_": "medmtl.networks.MultiTaskClassifier",
                "tasks": BINARY,
                "backbone": "densenet",
                "backbone_kwargs": DENSENET,
            },
            "network": "$@network_def.to('cpu')",
            "pretrained_weights": str(path),
            "initialize": [line],
        }
    )
    (report,) = parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network")
    assert report.loaded == len(network.backbone.state_dict())
    state = torch.load(path)
    assert torch.equal(network.backbone.features.norm0.weight, state["features.norm0.weight"])
    parser["pretrained_weights"] = None
    assert parser.get_parsed_content("initialize", lazy=False) == [None]


def test_freeze_encoder_is_a_linear_probe() -> None:
    net = _classifier("resnet", RESNET)
    norms = encoder_norm_layers(net)
    assert len(norms) == 1 + 8 + 3 and all(isinstance(m, nn.BatchNorm2d) for m in norms)  # stem, blocks, shortcuts
    freeze_encoder(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    image = torch.randn(4, 1, 32, 32)
    net.train()  # what MONAI's trainer does every iteration
    loss = net(image)["abnormal"].pow(2).mean()
    loss.backward()
    optimizer.step()
    after = net.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"heads.abnormal.fc.weight", "heads.abnormal.fc.bias"}  # running statistics included
    net.train()
    train_features = net.backbone.encode_features(image)[-1]
    net.eval()
    torch.testing.assert_close(train_features, net.backbone.encode_features(image)[-1])

    freeze_encoder(net, freeze=False)
    net.train()
    net(image)
    assert not torch.equal(net.backbone.bn1.running_mean, before["backbone.bn1.running_mean"])
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize(
    ("layers", "block", "dims", "expected"),
    [
        ((2, 2, 2, 2), "basic", 2, "resnet18"),
        ((3, 4, 6, 3), "basic", 2, "resnet34"),
        ((3, 4, 6, 3), "bottleneck", 2, "resnet50"),
        ((1, 1, 1, 1), "basic", 3, "resnet10"),
    ],
)
def test_the_backbone_a_file_fits_is_read_from_its_blocks(layers, block, dims, expected) -> None:
    from medmtl.networks.pretrained import backbone_for_weights

    state = _torchvision_resnet(spatial_dims=dims, layers=layers, block=block, block_inplanes=(4, 4, 4, 4))
    assert backbone_for_weights(state, "w.pth") == (expected, dims)
    dense = DenseNet(
        spatial_dims=2, in_channels=3, out_channels=10, init_features=4, growth_rate=2, block_config=(1, 1, 24, 1)
    ).state_dict()
    assert backbone_for_weights(dense, "d.pth") == ("densenet121", 2)
