"""``medmtl verify-bundle``: the model zoo's checks on every shipped bundle's export, and the failures it names.

Each bundle is exported without a run (``medmtl export-bundle NAME OUT``) and given random weights the
way the zoo's CI makes them (``network_def.state_dict()`` saved as ``models/model.pt``); the 3D networks
are checked on a smaller input (the override MONAI's ``verify_net_in_out`` takes), the rest at their
metadata size. A trained run's ``--run`` export is checked in tests/bundles/test_scenario_bundles.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from medmtl.bundle_layers import available_bundles, export_bundle
from medmtl.cli import main
from medmtl.deploy.verify_bundle import verify_bundle
from medmtl.networks.zoo import zoo_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"
SHAPE = "_meta_#network_data_format#inputs#image#spatial_shape"
SMALL = {"brain_mri_mtl": [32, 32, 32], "knee_mri_mtl": [4, 32, 32]}  # 3D networks: a smaller input


def _with_zoo_weights(bundle: Path) -> Path:
    """``models/model.pt`` as the zoo's CI fakes it: the state dict of the built ``network_def``."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["output_dir"] = str(bundle / "no_run")
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def _statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


@pytest.mark.parametrize("name", available_bundles())
def test_every_shipped_bundles_export_passes_the_zoo_checks(name: str, tmp_path) -> None:
    bundle = _with_zoo_weights(export_bundle(name, tmp_path / name))
    report = verify_bundle(bundle, overrides={SHAPE: SMALL[name]} if name in SMALL else None)
    expected = dict.fromkeys(("files", "version", "metadata", "weights", "shape", "export"), "pass")
    if not SCHEMA.is_file():
        expected["metadata"] = "skip"
    assert _statuses(report) == expected, report.table()
    # the zoo's network_def is one task's view; the bundle's own network still answers every task
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), "output_dir": str(tmp_path / "none")})
    tasks = [t.name for t in parser.get_parsed_content("tasks")]
    network = parser.get_parsed_content("network_def_multitask")
    assert parser.get_parsed_content("network") is network
    assert network.state_dict().keys() == torch.load(bundle / "models" / "model.pt", weights_only=True).keys()
    outputs = parser["_meta_"]["network_data_format"]["outputs"]
    assert set(outputs) == {"pred", *tasks}


def test_data_licence_states_the_terms_or_says_they_are_unknown(tmp_path) -> None:
    busi = (export_bundle("ultrasound_mtl", tmp_path / "us") / "docs" / "data_license.txt").read_text()
    assert "CC BY 4.0" in busi and "The terms above apply" in busi  # from the spec's header
    own = (export_bundle("brain_mri_mtl", tmp_path / "brain") / "docs" / "data_license.txt").read_text()
    assert "Licence of the data: unknown" in own and "Not a public dataset" in own


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    return _with_zoo_weights(export_bundle("demo", tmp_path_factory.mktemp("zoo") / "demo"))


def _broken(demo_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "demo"
    shutil.copytree(demo_bundle, copy)
    return copy


def test_a_missing_data_licence_fails_the_files_row(demo_bundle, tmp_path, capsys) -> None:
    bundle = _broken(demo_bundle, tmp_path)
    (bundle / "docs" / "data_license.txt").unlink()
    assert main(["verify-bundle", str(bundle)]) == 1
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.strip().startswith("files")]
    assert "FAIL" in row and "docs/data_license.txt" in row
    assert "fix: state the data's source and licence terms" in out
    assert "shape     PASS" in out and out.rstrip().endswith("failed: files")


def test_a_version_missing_from_the_changelog_fails_the_version_row(demo_bundle, tmp_path) -> None:
    bundle = _broken(demo_bundle, tmp_path)
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = "0.3.0"
    meta_file.write_text(json.dumps(meta))
    report = verify_bundle(bundle)
    version = report.check("version")
    assert not report.ok and [c.name for c in report.checks if c.status == "fail"] == ["version"]
    assert "0.3.0 is not in the changelog (it names 0.2.0, 0.1.0)" in version.detail and '"0.3.0"' in version.fix


def test_a_training_checkpoint_as_model_pt_fails_the_weights_row(demo_bundle, tmp_path, capsys) -> None:
    bundle = _broken(demo_bundle, tmp_path)
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    torch.save({"network": weights, "epoch": 3, "optimizer": {}}, bundle / "models" / "model.pt")
    assert main(["verify-bundle", str(bundle)]) == 1
    out = capsys.readouterr().out
    assert f"network (dict of {len(weights)}), epoch (int), optimizer (dict of 0)" in out
    assert "a training checkpoint with the weights under 'network'" in out
    report = verify_bundle(bundle)
    assert _statuses(report)["weights"] == "fail" and _statuses(report)["export"] == "skip"


def test_a_folder_that_is_not_a_bundle_is_one_message(tmp_path, capsys) -> None:
    (tmp_path / "images").mkdir()
    assert main(["verify-bundle", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{tmp_path} is not a bundle: it has no configs/ folder" in err


class _TwoTasks(nn.Module):
    """A tiny ``{task: logits}`` network with a buffer (a BatchNorm), as medmtl's networks are."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.seg = nn.Conv2d(4, 2, 1)
        self.cls = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"lesion": self.seg(h), "grade": self.cls(h.mean(dim=(2, 3)))}


def test_the_zoo_view_keeps_the_networks_keys_scripts_and_returns_one_task() -> None:
    torch.manual_seed(0)
    net, other = _TwoTasks().eval(), _TwoTasks().eval()
    view = zoo_network(other, "grade", views=["image"]).eval()
    assert list(view.state_dict()) == list(net.state_dict())  # no "network." prefix
    view.load_state_dict(net.state_dict())  # the plain state dict loads (strict)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(view(x), net(x)["grade"], rtol=0, atol=0)
        torch.testing.assert_close(torch.jit.script(view)(x), net(x)["grade"])
    prefixed = {f"network.{k}": v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    view.load_state_dict(prefixed)  # the wrapper's own names load too
    torch.testing.assert_close(other.seg.weight, net.seg.weight + 1)


def test_exporting_a_folder_without_a_run_record_is_one_message_and_writes_nothing(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    torch.save({"network": _TwoTasks().state_dict(), "epoch": 1}, run / "models" / "best.pt")
    assert main(["export-bundle", "demo", str(tmp_path / "zoo"), "--run", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no record of the run's configuration" in err and str(run) in err
    assert not (tmp_path / "zoo").exists()
