"""Bundles trained with ``--compile True`` (issue 23 item 5) or ``--amp True`` on the CPU (bfloat16 autocast):
their checkpoints are the plain float32 network's.

Why a bundle run: the compiled call is given to the engines only; what must hold is that everything
written from the run (``best.pt``/``last.pt`` with EMA, the run record) and inference through a
compiled network are exactly what an uncompiled run gives. The ``eager`` backend runs dynamo's capture
(graph breaks, guards, recompiles on train/eval) without generating code, so the test stays fast.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from bundle_cli import run_in_process
from monai.bundle import ConfigParser

from medmtl.bundle_layers import config_layers
from medmtl.data.demo import generate_demo2d

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "spatial_size": "[32,32]",
    "backbone_presets#unet#features": "[4,4,8,8,16,4]",
    "batch_size": "4",
    "validate_data": "False",
    "tune_host_allocator": "False",  # no allocator tuning in the test process
}


def _argv(workflow: str, data: Path, run: Path, **overrides: str) -> list[str]:
    common = {"data_spec": str(REPO / "data_specs" / "demo.yaml"), "dataset_dir": str(data), "output_dir": str(run)}
    return ["run", "demo", workflow, *(a for k, v in {**common, **TINY, **overrides}.items() for a in (f"--{k}", v))]


def _trained_run(work: Path, **overrides: str) -> dict[str, Path]:
    """A demo run on 12 generated cases, validated every epoch, with EMA weights and ``overrides``."""
    data = work / "demo2d"
    generate_demo2d(data, num_cases=12, seed=0)
    run = work / "run"
    assert run_in_process(_argv("train", data, run, val_interval="1", ema_decay="0.9", **overrides)) == 0
    return {"work": work, "data": data, "run": run}


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory) -> dict[str, Path]:
    compiled = {"compile": "True", "compile_kwargs": "{'backend': 'eager'}"}
    return _trained_run(tmp_path_factory.mktemp("compiled"), epochs="1", **compiled)


def _plain_network(data: Path, run: Path) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_layers("demo", "train")])
    parser.update(
        {
            "data_spec": str(REPO / "data_specs" / "demo.yaml"),
            "dataset_dir": str(data),
            "output_dir": str(run.parent / "plain"),
            "spatial_size": [32, 32],
            "backbone_presets::unet::features": [4, 4, 8, 8, 16, 4],
        }
    )
    parser.get_parsed_content("imports")
    return parser.get_parsed_content("network_def")


def test_checkpoints_of_a_compiled_run_load_into_the_plain_network_with_the_same_keys(compiled_run) -> None:
    network = _plain_network(compiled_run["data"], compiled_run["run"])
    for name in ("best.pt", "last.pt"):
        state = torch.load(compiled_run["run"] / "models" / name, weights_only=True, map_location="cpu")["network"]
        assert list(state) == list(network.state_dict()), name  # no _orig_mod. or module. prefix
        network.load_state_dict(state, strict=True)
    record = json.loads((compiled_run["run"] / "run_config.json").read_text())
    assert record["training"]["compile"] is True
    assert record["training"]["compile_kwargs"] == {"backend": "eager"}
    assert record["training"]["cudnn_benchmark"] is False  # reproducible seeded runs unless asked


@pytest.fixture(scope="module")
def cpu_amp_run(tmp_path_factory) -> dict[str, Path]:
    return _trained_run(tmp_path_factory.mktemp("cpu_amp"), epochs="2", amp="True")


def test_a_cpu_amp_run_writes_float32_checkpoints_and_validates_in_the_float32_range(cpu_amp_run) -> None:
    network = _plain_network(cpu_amp_run["data"], cpu_amp_run["run"])
    for name in ("best.pt", "last.pt"):
        state = torch.load(cpu_amp_run["run"] / "models" / name, weights_only=True, map_location="cpu")["network"]
        assert list(state) == list(network.state_dict()), name  # no module. prefix from the autocast wrapper
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point()), name
        network.load_state_dict(state, strict=True)
    record = json.loads((cpu_amp_run["run"] / "run_config.json").read_text())
    assert record["training"]["amp"] is True and record["training"]["device"] == "cpu"
    history = json.loads((cpu_amp_run["run"] / "history.json").read_text())
    assert len(history) == 2 and all(math.isfinite(epoch["train_loss_epoch"]) for epoch in history)


def test_cpu_amp_inference_writes_what_float32_inference_writes_within_bfloat16_precision(cpu_amp_run) -> None:
    data, run, work = cpu_amp_run["data"], cpu_amp_run["run"], cpu_amp_run["work"]
    outputs = {}
    for amp in ("True", "False"):
        out = work / f"infer_amp_{amp}"
        assert run_in_process(_argv("inference", data, run, amp=amp, infer_dir=str(out))) == 0
        outputs[amp] = _table(out)
    assert len(outputs["True"]) == len(outputs["False"]) > 0
    compared = 0
    for got, expected in zip(outputs["True"], outputs["False"], strict=True):
        assert got.keys() == expected.keys() and got["case_id"] == expected["case_id"]
        for key, value in expected.items():
            if key.endswith(("_probability", "entropy")):  # bfloat16 logits: about 3 significant digits
                assert float(got[key]) == pytest.approx(float(value), abs=0.02), key
            elif key.endswith("_voxels"):  # only pixels at the 0.5 boundary may flip
                assert float(got[key]) == pytest.approx(float(value), rel=0.01, abs=2), key
            else:
                continue
            compared += 1
    assert compared >= 3 * len(outputs["False"])


def _table(folder: Path) -> list[dict[str, str]]:
    (found,) = folder.glob("*.csv")
    with open(found, newline="") as handle:
        return list(csv.DictReader(handle))


def test_compiled_inference_writes_what_eager_inference_writes(compiled_run) -> None:
    data, run, work = compiled_run["data"], compiled_run["run"], compiled_run["work"]
    outputs = {}
    for compile_on in ("True", "False"):
        out = work / f"infer_{compile_on}"
        extra = {"compile": compile_on, "compile_kwargs": "{'backend': 'eager'}", "infer_dir": str(out)}
        assert run_in_process(_argv("inference", data, run, **extra)) == 0
        outputs[compile_on] = out
    compiled, eager = (_table(outputs[k]) for k in ("True", "False"))
    assert len(compiled) == len(eager) > 0
    for got, expected in zip(compiled, eager, strict=True):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            try:
                assert float(got[key]) == pytest.approx(float(value), abs=1e-6), key
            except ValueError:
                assert got[key] == value, key
    masks = sorted(p.relative_to(outputs["False"]) for p in outputs["False"].rglob("*.png"))
    assert masks and masks == sorted(p.relative_to(outputs["True"]) for p in outputs["True"].rglob("*.png"))
    for mask in masks:
        assert (outputs["True"] / mask).read_bytes() == (outputs["False"] / mask).read_bytes(), mask
