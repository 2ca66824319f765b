"""``medmtl predict -m FILE``: an exported file carries the run record, the spec and the applied choices, and
becomes a run folder whose network runs the program; old exports, exports for other tasks and options
that need the PyTorch network are refused with one line. (Predicting the demo run's ONNX file end to end,
against the run folder: tests/bundles/test_demo_bundle.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medmtl.deploy import ExportedNetwork, export_network, input_layout, read_export_metadata
from medmtl.deploy.exported_run import EXPORTED_FILE, deploy_entry, exported_run_folder
from medmtl.deploy.predict import PredictError, predict
from medmtl.deploy.run_network import record_digest
from medmtl.engines.checkpoint_io import check_state_dict_fits, load_checkpoint
from medmtl.resources import resolve_resource

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS = [
    {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
    {"name": "malignant", "kind": "binary"},
]  # demo.yaml's
SPEC = resolve_resource("data_specs/demo.yaml")


class TwoTasks(torch.nn.Module):
    """demo.yaml's two outputs from one convolution: small, and scriptable whatever the backbones do."""

    in_channels = 1
    spatial_dims = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.fc = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        seg = self.conv(x)
        return {"lesion": seg, "malignant": self.fc(seg.mean(dim=(2, 3)))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A small 2D two-task network exported to TorchScript twice: as medmtl export writes a cross-validation
    today (record, spec, its postprocessing choice) and without any of that (as older medmtl wrote files)."""
    work = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    net = TwoTasks().eval()
    layout = input_layout(net, TASKS, ["image"], [32, 32])
    cv = work / "cv"  # a medmtl cv folder: its inference applies the out-of-fold postprocessing
    cv.mkdir()
    (cv / "cv.json").write_text(json.dumps({"folds": 2}))
    choice = {
        "format": "medmtl.postprocessing",
        "tasks": ["lesion"],
        "postprocessing": {"lesion": {"op": "keep_largest"}},
    }
    (cv / "postprocessing.json").write_text(json.dumps(choice))
    record = {
        "format": "medmtl.run_config/1",
        "bundle": "demo",
        "settings": {"model": {"spatial_size": [32, 32]}, "data": {"data_spec": str(SPEC), "spec_overrides": {}}},
        "tasks": TASKS,
    }
    run = {"record_sha256": record_digest(record)}
    current = export_network(
        net,
        TASKS,
        layout,
        "torchscript",
        work / "model.ts",
        extra_metadata={"run": run, "deploy": deploy_entry(record, cv)},
    )
    old = export_network(net, TASKS, layout, "torchscript", work / "old.ts", extra_metadata={"run": run})
    inputs = work / "in"
    inputs.mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(inputs / "case1.png")
    return {"net": net, "model": current.path, "old": old.path, "record": record, "choice": choice, "inputs": inputs}


def test_the_file_becomes_a_run_folder_whose_network_runs_the_program(tiny, tmp_path) -> None:
    run = exported_run_folder(tiny["model"], tmp_path / "run")
    record = json.loads((run.folder / "run_config.json").read_text())
    spec_copy = run.folder / "spec" / "demo.yaml"
    assert record["settings"]["data"]["data_spec"] == str(spec_copy.resolve()) and run.bundle == "demo"
    assert spec_copy.read_text() == SPEC.read_text()
    assert {k: v for k, v in record.items() if k != "settings"} == {
        k: v for k, v in tiny["record"].items() if k != "settings"
    }
    assert json.loads((run.folder / "postprocessing.json").read_text()) == tiny["choice"]
    assert run.overrides()[-2:] == ["--postprocessing_path", str(run.folder / "postprocessing.json")]
    assert [t.name for t in run.tasks] == ["lesion", "malignant"]

    assert run.program == run.folder / "models" / f"{EXPORTED_FILE}.ts" and run.program.resolve() == tiny["model"]
    network = ExportedNetwork(run.program)
    assert network.state_dict() == {} and not list(network.parameters())  # the weights are inside the file
    checkpoint = load_checkpoint(run.folder / "models" / "best.pt", map_location="cpu")
    assert checkpoint == {"network": {}}
    check_state_dict_fits(network, checkpoint["network"], run.folder / "models" / "best.pt")  # the bundle's check
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tiny["net"](x)
    got = network(x)
    assert set(got) == {"lesion", "malignant"} and got["lesion"].shape == (2, 2, 32, 32)
    for task in got:
        torch.testing.assert_close(got[task], expected[task], atol=1e-5, rtol=0)


def test_old_exports_other_tasks_and_pytorch_only_options_are_refused(tiny, tmp_path) -> None:
    calls: list = []
    out = tmp_path / "out"
    with pytest.raises(
        PredictError, match=r"carries no run record .*medmtl export RUN --format torchscript -o model\.ts"
    ):
        predict(tiny["inputs"], out, tiny["old"], runner=calls.append)
    jsrt = str(resolve_resource("data_specs/jsrt.yaml"))
    with pytest.raises(PredictError) as refused:
        predict(tiny["inputs"], out, tiny["model"], data_spec=jsrt, runner=calls.append)
    assert str(refused.value).startswith(
        "model.ts was exported for the tasks [lesion (segmentation), malignant (binary)]; "
        f"--data_spec {jsrt} declares [lungs (segmentation), heart (segmentation), clavicles (segmentation), "
        "nodule (binary)]: give the spec the model was trained with"
    )
    for option, value in (("--save_saliency", "True"), ("--mc_dropout_samples", "8")):
        with pytest.raises(PredictError, match=f"{option} {value}: .* need the PyTorch network"):
            predict(tiny["inputs"], out, tiny["model"], overrides=[option, value], runner=calls.append)
    assert not calls and not out.exists()


def test_a_description_that_is_not_the_programs_is_refused(tiny, tmp_path) -> None:
    metadata = read_export_metadata(tiny["model"])
    assert metadata["deploy"]["record"] == tiny["record"]
    tampered = json.loads(json.dumps(tiny["record"]))
    tampered["settings"]["model"]["spatial_size"] = [64, 64]
    net = tiny["net"]
    layout = input_layout(net, TASKS, ["image"], [32, 32])
    extra = {"run": metadata["run"], "deploy": {**metadata["deploy"], "record": tampered}}
    path = export_network(net, TASKS, layout, "torchscript", tmp_path / "m.ts", extra_metadata=extra).path
    with pytest.raises(PredictError, match="the run record inside is not the one the program was exported from"):
        predict(tiny["inputs"], tmp_path / "out", path, runner=lambda argv: 0)
    assert not Path(tmp_path / "out").exists()
