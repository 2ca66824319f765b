"""Demo bundle runs that cannot corrupt each other, and that stop with one line instead of a traceback.

Through ``python -m monai.bundle run`` on tiny demo data (16 cases, 32x32, one epoch):

- a training starts while its MLflow SQLite store is locked by another process (``BEGIN EXCLUSIVE``)
  and while its output folder holds the lock file of a run killed with SIGKILL: it takes the lock
  over, tracks into the offline store with one warning, and finishes;
- a second training into a folder whose lock another process holds is refused with the holder named;
- an evaluation of a truncated checkpoint and an inference on a dataset with a missing image end with
  exit status 1 and one message (the report), never a ``ConfigExpression`` traceback.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_cli import bundle_argv, run_together

from medmtl.data.demo import generate_demo2d
from medmtl.engines import claim_output_dir, release_output_dir
from medmtl.engines.run_lock import LOCK_NAME
from medmtl.tracking import FALLBACK_DB

REPO = Path(__file__).resolve().parents[2]

LOCK_DB = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(300)
"""
HOLD_FOLDER = """
import sys, time
from medmtl.engines import claim_output_dir
claim_output_dir(sys.argv[1], command="another training")
print("held", flush=True)
time.sleep(300)
"""


def _background(script: str, *args: object) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() in {"locked", "held"}
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)


def _command(work: Path, *workflows: str, **overrides: object) -> list[str]:
    settings = {
        "data_spec": REPO / "data_specs" / "demo.yaml",
        "dataset_dir": work / "data",
        "output_dir": work / "run",
        "spatial_size": "[32,32]",
        "batch_size": 4,
        **overrides,
    }
    return bundle_argv("demo", workflows, settings)


def _env(env: dict | None = None) -> dict:
    return {**(env or os.environ), "CUDA_VISIBLE_DEVICES": ""}


def _bundle(work: Path, *workflows: str, env: dict | None = None, **overrides: object) -> subprocess.CompletedProcess:
    cmd = _command(work, *workflows, **overrides)
    return subprocess.run(cmd, cwd=work, env=_env(env), capture_output=True, text=True, timeout=300)


def _last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One training started against a locked MLflow store, into a folder a killed run left its lock in."""
    work = tmp_path_factory.mktemp("safety")
    generate_demo2d(work / "data", num_cases=16, seed=0)
    killed = _background(HOLD_FOLDER, work / "run")
    killed.send_signal(signal.SIGKILL)  # no cleanup: .medmtl.lock stays, its flock is gone
    killed.wait(timeout=30)
    assert (work / "run" / LOCK_NAME).is_file()
    store = work / "mlflow.db"
    locker = _background(LOCK_DB, store)
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
        result = _bundle(work, "train", env=env, epochs=1, val_interval=1, tracking="mlflow", log_mlflow_model=False)
    finally:
        _stop(locker)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"work": work, "log": result.stdout + result.stderr, "killed_pid": killed.pid}


def test_training_takes_over_a_killed_runs_lock_and_tracks_offline_when_the_store_is_locked(trained) -> None:
    import mlflow

    log, run = trained["log"], trained["work"] / "run"
    assert (
        f"took over the lock left by a run that ended without releasing it (killed?): pid {trained['killed_pid']}"
        in log
    )
    warnings = [line for line in log.splitlines() if "cannot be opened at the start of the run" in line]
    assert len(warnings) == 1 and "database is locked" in warnings[0]
    assert "Traceback" not in log
    client = mlflow.MlflowClient(f"sqlite:///{run / FALLBACK_DB}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("medmtl_demo").experiment_id])
    assert "train_loss/lesion" in mlflow_run.data.metrics  # the run is complete in the offline store
    assert not (run / LOCK_NAME).exists()  # released at the end


def test_a_second_training_into_a_held_folder_is_refused(trained) -> None:
    work, run = trained["work"], trained["work"] / "run"
    before = (run / "models" / "last.pt").stat().st_mtime_ns
    claim_output_dir(run, command="another training")  # held by this process (a child would spend seconds importing)
    try:
        result = _bundle(work, "train", epochs=2)
    finally:
        release_output_dir(run)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = _last_line(result)
    assert line.startswith("OutputDirLocked: ") and f"pid {os.getpid()} on host " in line and "another training" in line
    assert (run / "models" / "last.pt").stat().st_mtime_ns == before  # nothing of the holder's run touched


@pytest.fixture(scope="module")
def refused(trained) -> dict:
    """An evaluation of a truncated copy of ``best.pt`` and an inference on a copy of the data with an image
    missing, started together (both stop at the start, after seconds of imports each)."""
    work = trained["work"]
    broken = work / "broken.pt"
    broken.write_bytes((work / "run" / "models" / "best.pt").read_bytes()[:4096])
    data = work / "broken_data"
    shutil.copytree(work / "data", data)
    missing = sorted((data / "images").iterdir())[0]
    missing.unlink()
    evaluation, inference = run_together(
        [
            (_command(work, "evaluate", ckpt_path=broken), work),
            (_command(work, "inference", dataset_dir=data, validate_data=False), work),
        ],
        env=_env(),
    )
    return {"broken": broken, "evaluation": evaluation, "missing": missing, "inference": inference}


def test_evaluation_of_a_truncated_checkpoint_stops_with_one_line(trained, refused) -> None:
    work, broken, result = trained["work"], refused["broken"], refused["evaluation"]
    assert result.returncode == 1
    for stream in (result.stdout, result.stderr):  # MONAI's StatsHandler logs engine errors to stdout
        assert "Traceback" not in stream and "weights_only" not in stream
    line = _last_line(result)  # found before the data is cached and the evaluator runs
    assert line.startswith("BundleStartError: ") and str(broken) in line and "truncated or corrupt" in line
    torch.load(work / "run" / "models" / "best.pt", weights_only=True)  # the real one is untouched


def test_inference_on_a_dataset_with_errors_prints_the_report(refused) -> None:
    missing, result = refused["missing"], refused["inference"]
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "ConfigExpression" not in result.stderr
    assert missing.name in result.stderr and "FAILED: 1 error(s)" in result.stderr
