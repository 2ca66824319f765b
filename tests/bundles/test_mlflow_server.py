"""Training logs to a real ``mlflow server`` on 127.0.0.1 when ``MLFLOW_TRACKING_URI`` points at it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medmtl.bundle_layers import bundle_command
from medmtl.data.demo import generate_demo2d

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,  # python -m mlflow: works wherever mlflow imports (no console script needed)
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # no job runner (eight more processes importing mlflow, for GenAI scorer jobs): training never uses it
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,  # its own process group: stopped with every process it started
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail("mlflow server exited at start")
            time.sleep(0.5)
    else:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        pytest.fail("mlflow server did not answer within 90 s")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_training_logs_to_real_mlflow_server(mlflow_server, tmp_path) -> None:
    import mlflow

    generate_demo2d(tmp_path / "data" / "demo2d", num_cases=24, seed=0)  # small: what is checked is where the run goes
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    cmd = bundle_command("demo", ["train"]) + [
        "--data_spec",
        str(REPO / "data_specs" / "demo.yaml"),
        "--dataset_dir",
        str(tmp_path / "data" / "demo2d"),
        "--output_dir",
        str(tmp_path / "run"),
        "--spatial_size",
        "[32,32]",
        "--epochs",
        "2",
        "--val_interval",
        "1",
        "--experiment_name",
        "server_check",
        "--tracking",
        "mlflow",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store

    client = mlflow.MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("server_check").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss/malignant")] == [1, 2]
    assert "lesion/dice" in run.data.metrics
    assert {"splits.json", "best.pt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
