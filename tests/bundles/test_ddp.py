"""The ``multi_gpu_train`` workflow for real: ``torchrun --nproc_per_node=2`` on CPU (gloo), as a user runs it.

The validation split is chosen odd (5 cases: shards of 3 and 2 with ``even_divisible=False``), so
the gathered validation metric equals a single-process evaluation of the saved checkpoint only if
every case is counted exactly once. A test-only override makes every rank save its network and
loss state at the end, to check that DDP and the loss weighting's gradient sync kept them equal.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_cli import bundle_argv

from medmtl.bundle_layers import config_layers
from medmtl.data.demo import generate_demo2d
from medmtl.data.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "data_specs" / "demo.yaml"
TASKS = ("lesion", "malignant")
# 16 demo cases with this split give 5 validation cases holding both malignancy classes (splits are
# hashed per patient, so the seed picks which patients; checked by the fixture)
SPLITS = {
    "method": "fractions",
    "fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
    "seed": 40,
    "stratify": "malignant",
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _torchrun(*extra_configs: Path, cwd: Path, env: dict, **overrides: object) -> str:
    """The demo's ``multi_gpu_train`` workflow (its config layers, then ``extra_configs``) on 2 processes."""
    bundle = bundle_argv("demo", ["multi_gpu_train"], {k: str(v) for k, v in overrides.items()}, extra_configs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *bundle[1:]]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    return log


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    """Tiny demo data, then 2 epochs on 2 CPU processes with MLflow into a temporary SQLite store."""
    work = tmp_path_factory.mktemp("ddp")
    data = work / "data" / "demo2d"
    generate_demo2d(data, num_cases=16, seed=0)
    val = load_spec(SPEC, splits=SPLITS).build_cases(root=data).datalist("val")
    malignant = {c["malignant"] for c in val if c["malignant_present"]}
    assert len(val) % 2 == 1 and malignant == {0, 1}, "demo data changed: pick a split with an odd, two-class val set"
    dump = work / "dump_rank_state.json"  # test-only: each rank saves what DDP must keep identical
    dump.write_text(
        json.dumps(
            {
                "finalize": [
                    "$torch.save({'network': medmtl.engines.unwrap(@network).state_dict(), "
                    "'loss': @loss_function.state_dict(), "
                    "'train_losses': {k: v for k, v in @train::trainer.state.metrics.items() if 'loss' in k}}, "
                    "os.path.join(@output_dir, 'rank%d.pt' % medmtl.engines.get_rank()))",
                    "$medmtl.engines.cleanup_distributed()",
                ]
            }
        )
    )
    # the CPU (gloo) path even on a GPU machine: 2 ranks need 2 GPUs under NCCL
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
    }
    common = {
        "data_spec": SPEC,
        "dataset_dir": data,
        "spec_overrides": json.dumps({"splits": SPLITS}).replace('"', "'"),
        "spatial_size": "[32,32]",
        "batch_size": 2,
        "val_interval": 1,
    }
    log = _torchrun(
        dump,
        cwd=work,
        env=env,
        output_dir=work / "run",
        epochs=2,
        tracking="mlflow",
        log_mlflow_model=False,  # the MLflow model is tested in test_demo_bundle
        **common,
    )
    return {"work": work, "env": env, "common": common, "log": log, "val": val}


def test_one_mlflow_run_with_per_task_history(ddp_run) -> None:
    import mlflow

    client = mlflow.MlflowClient(ddp_run["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("medmtl_demo")
    (run,) = client.search_runs([experiment.experiment_id])  # rank 1 created none
    assert run.info.status == "FINISHED"
    for key in ("train_loss/lesion", "train_loss/malignant", "lesion/dice", "malignant/auroc", "mean_primary"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    assert run.data.params["tasks"] == str(list(TASKS))


def test_rank0_alone_writes_checkpoints_that_load_into_a_plain_network(ddp_run) -> None:
    from medmtl.networks import MultiTaskNet

    run = ddp_run["work"] / "run"
    assert sorted(p.name for p in (run / "models").iterdir()) == ["best.pt", "last.pt"]  # no stray temp files
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2]
    assert ddp_run["log"].count("epoch 2/2 |") == 1  # one progress line per epoch: rank 1 is quiet
    tasks = load_spec(SPEC).task_list
    kwargs = {"spatial_dims": 2, "in_channels": 1, "features": [16, 16, 32, 64, 128, 16], "dropout": 0.1}
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / "models" / name, map_location="cpu", weights_only=True)["network"]
        assert not any(k.startswith("module.") for k in state)
        MultiTaskNet(backbone="unet", tasks=tasks, backbone_kwargs=kwargs).load_state_dict(state)  # strict


def test_ranks_keep_identical_network_and_loss_weights(ddp_run) -> None:
    run = ddp_run["work"] / "run"
    r0, r1 = (torch.load(run / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in (0, 1))
    for part in ("network", "loss"):
        assert r0[part].keys() == r1[part].keys()
        for key in r0[part]:
            assert torch.equal(r0[part][key], r1[part][key]), f"{part}.{key} differs between ranks"
    assert r0["loss"]["weighting.log_vars"].abs().sum() > 0  # uncertainty weights were trained, in sync
    # epoch losses (what DWA's history records) are means over both ranks' batches, not each rank's own
    assert r0["train_losses"] == r1["train_losses"] and "train_loss/lesion" in r0["train_losses"]


def test_validation_counts_every_case_once_and_matches_one_process(ddp_run) -> None:
    """The DDP validation of the best epoch equals a single-process evaluation of best.pt."""
    from monai.bundle import ConfigParser

    run = ddp_run["work"] / "run"
    best = torch.load(run / "models" / "best.pt", map_location="cpu", weights_only=True)
    history = {r["epoch"]: r for r in json.loads((run / "history.json").read_text())}[best["epoch"]]
    for task in TASKS:
        labelled = sum(bool(c[f"{task}_present"]) for c in ddp_run["val"])
        assert history[f"val_{task}/num_cases"] == labelled  # no shard lost, no padding duplicate

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_layers("demo", "train")])
    common = ddp_run["common"]
    parser.update(
        {
            "data_spec": str(SPEC),
            "dataset_dir": str(common["dataset_dir"]),
            "output_dir": str(run),
            "spec_overrides": {"splits": SPLITS},
            "spatial_size": [32, 32],
            "batch_size": common["batch_size"],
            "device": "$torch.device('cpu')",  # the DDP run was on CPU (gloo); on a GPU machine the
            "amp": False,  # defaults would evaluate with CUDA AMP and differ by ~3e-4
            "validate::handlers": [
                {
                    "_target_": "CheckpointLoader",
                    "load_path": str(run / "models" / "best.pt"),
                    "load_dict": {"network": "@network"},
                    "map_location": "cpu",
                },
                {"_target_": "medmtl.engines.FlattenTaskOutputsd", "tasks": "@tasks"},
            ],
        }
    )
    evaluator = parser.get_parsed_content("validate::evaluator")
    evaluator.run()
    single = evaluator.state.metrics
    assert single["mean_primary"] == pytest.approx(best["mean_primary"], abs=1e-5)
    for key, value in single.items():
        logged = history.get(f"val_{key}")
        if isinstance(value, float) and math.isfinite(value) and logged is not None:
            assert logged == pytest.approx(value, abs=1e-5), key


def test_restart_resumes_every_rank_from_last_checkpoint(ddp_run) -> None:
    work = ddp_run["work"]
    shutil.copytree(work / "run", work / "resumed")
    log = _torchrun(
        cwd=work,
        env=ddp_run["env"],
        output_dir=work / "resumed",
        epochs=3,
        **ddp_run["common"],
    )
    assert "resumed from" in log and "epoch 1/3 |" not in log and "epoch 3/3 |" in log
    history = json.loads((work / "resumed" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
