"""A run is self-describing: evaluation and inference need nothing but ``--output_dir`` (issue 19.1).

One tiny demo run trained with a non-default backbone, spatial size and channel list; then the
evaluation and the inference with only ``--output_dir`` (from another working folder) give the same
metrics and probabilities as with every training override repeated; a contradicting override is one
clear line; a run without a record (trained before records existed) still works with explicit overrides.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from bundle_cli import bundle_argv

from medmtl.data.demo import generate_demo_data

REPO = Path(__file__).resolve().parents[2]
TRAINED_WITH = {
    "backbone": "resunet",
    "spatial_size": [32, 32],
    "backbone_presets#resunet#channels": [4, 8, 16, 32, 64],
}


def _bundle(workflow: str, cwd: Path, **overrides: object) -> subprocess.CompletedProcess:
    cmd = bundle_argv("demo", [workflow], overrides)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "OMP_NUM_THREADS": "2"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("selfdescribing")
    generate_demo_data(work / "data", num_cases=24, seed=0)
    data = {"data_spec": REPO / "data_specs" / "demo.yaml", "dataset_dir": work / "data" / "demo2d"}
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    _ok(_bundle("train", cwd=work, output_dir=work / "run", epochs=2, val_interval=1, **data, **TRAINED_WITH))
    return {"work": work, "run": work / "run", "elsewhere": elsewhere, "data": data}


def _probabilities(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "predictions.csv", newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def test_training_records_its_configuration_in_the_run_and_the_checkpoints(run) -> None:
    record = json.loads((run["run"] / "run_config.json").read_text())
    model = record["settings"]["model"]
    assert model["backbone"] == "resunet" and model["spatial_size"] == [32, 32]
    assert model["backbone_presets"]["resunet"]["channels"] == [4, 8, 16, 32, 64]
    assert record["settings"]["data"]["dataset_dir"] == str(run["data"]["dataset_dir"])
    assert record["network"]["class"].endswith("MultiTaskNet")
    for name in ("best.pt", "last.pt"):
        checkpoint = torch.load(run["run"] / "models" / name, weights_only=True, map_location="cpu")
        assert checkpoint["run_config"]["settings"] == record["settings"]


def test_evaluation_with_only_output_dir_matches_the_explicit_overrides(run) -> None:
    _ok(_bundle("evaluate", cwd=run["elsewhere"], output_dir=run["run"], eval_dir=run["work"] / "e1"))
    explicit = {**run["data"], **TRAINED_WITH}
    _ok(
        _bundle(
            "evaluate",
            cwd=run["work"],
            output_dir=run["run"],
            eval_dir=run["work"] / "e2",
            **explicit,
        )
    )
    first = json.loads((run["work"] / "e1" / "summary.json").read_text())
    second = json.loads((run["work"] / "e2" / "summary.json").read_text())
    assert first["mean"] == second["mean"] and set(first["mean"]) == {"lesion", "malignant"}


def test_inference_with_only_output_dir_matches_the_explicit_overrides(run) -> None:
    common = {"output_dir": run["run"], "infer_split": "all"}
    _ok(_bundle("inference", cwd=run["elsewhere"], infer_dir=run["work"] / "p1", **common))
    explicit = {**run["data"], **TRAINED_WITH}
    _ok(_bundle("inference", cwd=run["work"], infer_dir=run["work"] / "p2", **common, **explicit))
    first, second = _probabilities(run["work"] / "p1"), _probabilities(run["work"] / "p2")
    assert len(first) == 24 and first.keys() == second.keys()
    for case_id, row in first.items():
        assert row["malignant_probability"] == second[case_id]["malignant_probability"]


def test_an_override_contradicting_the_run_is_one_line_naming_both_values(run) -> None:
    result = _bundle("evaluate", cwd=run["elsewhere"], output_dir=run["run"], backbone="unet")
    assert result.returncode == 1
    assert "--backbone:" in result.stderr and "backbone='resunet'" in result.stderr and "'unet'" in result.stderr
    assert "Traceback" not in result.stderr
    resumed = _bundle("train", cwd=run["elsewhere"], output_dir=run["run"], epochs=3, spatial_size=[48, 48])
    assert resumed.returncode == 1 and "spatial_size=[32, 32]" in resumed.stderr


def test_a_run_without_a_record_still_works_with_explicit_overrides(run) -> None:
    old = run["work"] / "old_run"
    shutil.copytree(run["run"], old, ignore=shutil.ignore_patterns("eval", "predictions", "*.lock"))
    (old / "run_config.json").unlink()
    for name in ("best.pt", "last.pt"):
        path = old / "models" / name
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        checkpoint.pop("run_config")
        torch.save(checkpoint, path)
    _ok(_bundle("evaluate", cwd=run["work"], output_dir=old, **run["data"], **TRAINED_WITH))
    assert json.loads((old / "eval" / "summary.json").read_text())["mean"]
