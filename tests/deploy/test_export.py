"""``medmtl export``: every bundle's network to ONNX and torch.export matches PyTorch; refusals leave nothing.

The networks are built from each bundle's own merged config (``network_def``) at a small width and
size with random weights; the export checks parity itself (second spatial size when dynamic) and the
test checks it again through :func:`load_exported`, independently, on a fresh input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from medmtl.bundle_layers import config_layers
from medmtl.cli import main
from medmtl.deploy import (
    ExportedInputError,
    ExportError,
    InputLayout,
    capture_program,
    export_network,
    input_layout,
    load_exported,
    read_export_metadata,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
TINY_UNET = {"backbone_presets::unet::features": [4, 4, 8, 8, 16, 4]}
# bundle: overrides for a small network (the bundle's own network definition, smaller width / input).
# demo, ultrasound_mtl and chest_xray_mtl build the same 2D U-Net with hard sharing and differ only in
# their heads (one conv / linear layer per task): ultrasound_mtl stands for the three here (the capture
# costs 10-20 s of CPU per network), and demo's trained run is exported in test_demo_bundle.
BUNDLES = {
    "ultrasound_mtl": {"spatial_size": [32, 32], **TINY_UNET},
    "radiograph_mtl": {"spatial_size": [32, 32]},
    "knee_mri_mtl": {"spatial_size": [4, 32, 32]},
    "brain_mri_mtl": {"spatial_size": [32, 32, 32], **TINY_UNET},
}


def bundle_network(bundle: str, tmp_path: Path) -> tuple[torch.nn.Module, list, list[str], list[int]]:
    """The bundle's ``network_def`` with small settings and random weights, its tasks, input keys and size."""
    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in config_layers(bundle, "train")]))
    parser["data_spec"] = str(REPO / parser["data_spec"])
    parser["output_dir"] = str(tmp_path / "run")  # no run there: the config's own settings
    for key, value in BUNDLES[bundle].items():
        parser[key] = value
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    spatial = parser.get_parsed_content("settings")["spatial_size"]
    return network, list(parser.get_parsed_content("tasks")), list(parser.get_parsed_content("input_keys")), spatial


def _inputs(layout: InputLayout, spatial: list[int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((1, layout.channels, *spatial)).astype(np.float32) for n in layout.names}


@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_every_bundle_network_exports_with_parity(bundle: str, tmp_path) -> None:
    """ONNX and torch.export from one capture of the network (the capture is most of the time)."""
    network, tasks, keys, spatial = bundle_network(bundle, tmp_path)
    layout = input_layout(network, tasks, keys, spatial)
    assert layout.dynamic_spatial == any(t.is_dense for t in tasks)
    program = capture_program(network, layout, [t.name for t in tasks])
    size = [s + layout.multiple for s in spatial] if layout.dynamic_spatial else spatial
    x = _inputs(layout, size, seed=7)
    with torch.no_grad():
        expected = network(
            {k: torch.from_numpy(v) for k, v in x.items()} if len(keys) > 1 else torch.from_numpy(x[keys[0]])
        )
    for export_format, path in (("onnx", tmp_path / "model.onnx"), ("torch-export", tmp_path / "model.pt2")):
        report = export_network(network, tasks, layout, export_format, path, program=program)
        assert max(report.max_abs_difference.values()) <= 1e-4
        model = load_exported(path)
        assert model.export_format == export_format
        assert [t.name for t in model.tasks] == [t.name for t in tasks]
        got = model(x if len(keys) > 1 else x[keys[0]])
        for task in tasks:
            assert got[task.name].shape == tuple(expected[task.name].shape)
            np.testing.assert_allclose(got[task.name], expected[task.name].numpy(), atol=1e-4, rtol=0)
        meta = read_export_metadata(path)
        assert meta["outputs"] == [t.name for t in tasks] and meta["input"]["names"] == keys


def _tiny() -> tuple[torch.nn.Module, list[dict], InputLayout]:
    from medmtl.networks import MultiTaskNet

    tasks = [
        {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
        {"name": "malignant", "kind": "binary"},
    ]
    net = MultiTaskNet("unet", tasks, backbone_kwargs={"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)}).eval()
    return net, tasks, input_layout(net, tasks, ["image"], [32, 32])


def test_torchscript_export_and_input_checks(tmp_path) -> None:
    net, tasks, layout = _tiny()
    path = tmp_path / "model.ts"
    report = export_network(net, tasks, layout, "torchscript", path)
    assert report.checked_sizes == ((32, 32), (48, 48))
    model = load_exported(path)
    x = np.random.default_rng(0).standard_normal((2, 1, 64, 48)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x))
    np.testing.assert_allclose(model(x)["lesion"], expected["lesion"].numpy(), atol=1e-5)
    with pytest.raises(ExportedInputError, match=r"must have 1 channel\(s\) like \(B, 1, 32, 32\), got shape \[2, 3"):
        model(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ExportedInputError, match=r"must have 4 dims .* got shape \[1, 32, 32\]"):
        model(np.zeros((1, 32, 32), np.float32))
    with pytest.raises(ExportedInputError, match="multiples of 16"):
        model(np.zeros((1, 1, 40, 32), np.float32))


class _Noisy(torch.nn.Module):
    """Its output changes at every call: no exported file can match it."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.in_channels, self.spatial_dims = net, 1, 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x)
        noisy: dict[str, torch.Tensor] = {}
        for key, value in out.items():
            noisy[key] = value + torch.rand_like(value)
        return noisy


def test_refusals_leave_nothing_behind(tmp_path) -> None:
    net, tasks, layout = _tiny()
    with pytest.raises(ExportError, match="differs from PyTorch by more than 0.0001"):
        export_network(_Noisy(net), tasks, layout, "torchscript", tmp_path / "noisy.ts")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
    existing = tmp_path / "model.pt2"
    existing.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="exists; pass --overwrite"):
        export_network(net, tasks, layout, "torch-export", existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_network(net, tasks, layout, "tflite", tmp_path / "m.tflite")


def test_cli_refuses_a_run_without_its_record(tmp_path, capsys) -> None:
    net, _, _ = _tiny()
    run = tmp_path / "old_run"
    (run / "models").mkdir(parents=True)
    torch.save({"network": net.state_dict(), "epoch": 1}, run / "models" / "best.pt")  # as before runs recorded
    assert main(["export", str(run), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert f"{run}: no record of the run's configuration (run_config.json" in err and "medmtl run BUNDLE train" in err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(SystemExit) as stop:
        main(["export", str(run), "--format", "tflite", "-o", str(tmp_path / "m")])
    assert stop.value.code == 2


def test_metadata_of_a_file_not_from_medmtl_is_refused(tmp_path) -> None:
    other = tmp_path / "other.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), str(other))
    with pytest.raises(ValueError, match="not a model exported by medmtl"):
        read_export_metadata(other)
