"""A demo-bundle training with ``--tracking mlflow`` survives its tracking server being down.

Two runs against a real ``mlflow server`` on 127.0.0.1, each with :class:`medmtl.tracking.TrackingGuard`
added through a test-only config (the way a bundle lists it in ``train::handlers``) and a hook
that holds epoch 2 until the test has changed the server's state:

- the server is down when training starts and comes up in epoch 2: the kept calls are replayed,
  the server ends up with the complete run (placeholder experiment and run created for real);
- the server goes down after epoch 1 and never returns: training finishes, the server keeps epoch
  1, and the rest of the run (metrics, params, artifacts, its end) is in the local fallback store.

Both warn once, print no traceback, exit 0 and keep every epoch in ``history.json``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_cli import bundle_argv

from medmtl.data.demo import generate_demo2d
from medmtl.tracking import FALLBACK_DB

REPO = Path(__file__).resolve().parents[2]

# Test-only config merged after the demo's training layers: the guard as a bundle lists it, checking the server
# every 0.5 s, and a hook that, at the first iteration of epoch 2, writes `reached` and waits for `go`.
EXTRA = {
    "+imports": ["$import ignite", "$import time"],
    "+train::handlers": [
        {"_target_": "medmtl.tracking.TrackingGuard", "fallback_dir": "@output_dir", "retry_interval": 0.5}
    ],
    "+initialize": [
        "$@train::trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, "
        "lambda e: (open(os.path.join(@output_dir, 'reached'), 'w').close(), "
        "[time.sleep(0.1) for _ in range(1200) if not os.path.exists(os.path.join(@output_dir, 'go'))]) "
        "if e.state.epoch == 2 and (e.state.iteration - 1) % e.state.epoch_length == 0 else None)"
    ],
}


def _free_port(taken: int | None = None) -> int:
    """A port nothing listens on, other than ``taken`` (a port a server that is still starting will bind)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != taken:
            return port


def _launch_server(port: int, folder: Path) -> subprocess.Popen:
    """``mlflow server`` in its own process group (its workers stop with it)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
    cmd += ["--artifacts-destination", str(folder / "server_artifacts")]
    # no job runner (eight more processes importing mlflow, for GenAI scorer jobs): training never uses it
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)


def _start_server(port: int, folder: Path) -> subprocess.Popen:
    """``mlflow server`` as :func:`_launch_server` starts it; returns once it answers."""
    return _answering(_launch_server(port, folder), port)


def _answering(server: subprocess.Popen, port: int) -> subprocess.Popen:
    """``server`` once it answers on ``port``."""
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            if server.poll() is not None:
                pytest.fail("mlflow server exited at start")
            time.sleep(0.3)
    _stop_server(server)
    pytest.fail("mlflow server did not answer within 90 s")


def _stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # the group of the server we started, workers included
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before {path.name}:\n{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} not reached in {timeout} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("outage")
    generate_demo2d(work / "data", num_cases=24, seed=0)
    (work / "extra.json").write_text(json.dumps(EXTRA))
    return work


@pytest.fixture(scope="module", autouse=True)
def second_server(work) -> Iterator[tuple[subprocess.Popen, int]]:
    """The server the second test stops after epoch 1, launched with the module: its start (seconds of
    imports) overlaps the first test. Stopped at the end of the module at the latest."""
    port = _free_port()
    server = _launch_server(port, work / "server_b")
    yield server, port
    _stop_server(server)


def _start_training(work: Path, run: Path, port: int) -> subprocess.Popen:
    overrides = {
        "data_spec": REPO / "data_specs" / "demo.yaml",
        "dataset_dir": work / "data",
        "output_dir": run,
        "epochs": 3,
        "val_interval": 1,
        "batch_size": 4,
        "spatial_size": "[32,32]",
        "experiment_name": "outage",
        "tracking": "mlflow",
        "log_mlflow_model": False,  # the outage of metrics and artifacts is tested here, not the model
    }
    cmd = bundle_argv("demo", ["train"], overrides, extra_configs=[work / "extra.json"])
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(name, None)  # the guard's own defaults apply
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert out.count("is unreachable (") == 1  # one warning for the outage, not one per call
    return out


def _the_run(client, experiment: str = "outage"):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def _steps(client, run, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def test_server_down_at_start_then_back_gets_the_whole_run(work, second_server) -> None:
    import mlflow

    run_dir, port = work / "down_then_up", _free_port(taken=second_server[1])
    proc = _start_training(work, run_dir, port)  # nothing listens on the port yet
    try:
        _wait_for(run_dir / "reached", proc)
        server = _start_server(port, work / "server_a")
    except BaseException:
        proc.kill()
        raise
    try:
        (run_dir / "go").touch()
        out = _finish(proc)
        assert "answers again" in out
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        run = _the_run(client)
        assert run.info.status == "FINISHED" and run.info.run_name.startswith("train_")
        assert _steps(client, run, "train_loss/lesion") == [1, 2, 3]  # epoch 1 was kept, then replayed
        assert _steps(client, run, "mean_primary") == [1, 2, 3]  # the validator's handler: same run
        assert run.data.params["weighting"] == "uncertainty" and run.data.params["max_epochs"] == "3"
        assert {"splits.json", "best.pt", "demo.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        _stop_server(server)
    assert not (run_dir / FALLBACK_DB).exists()  # everything reached the server
    assert [r["epoch"] for r in json.loads((run_dir / "history.json").read_text())] == [1, 2, 3]


def test_server_down_after_epoch_1_keeps_the_rest_in_the_local_store(work, second_server) -> None:
    import mlflow

    run_dir, (server, port) = work / "up_then_down", second_server
    _answering(server, port)
    proc = _start_training(work, run_dir, port)
    try:
        _wait_for(run_dir / "reached", proc)  # epoch 1 logged to the server
    except BaseException:
        proc.kill()
        raise
    finally:
        _stop_server(server)
    (run_dir / "go").touch()
    out = _finish(proc)
    fallback_uri = f"sqlite:///{run_dir / FALLBACK_DB}"
    assert f"written to {fallback_uri}" in out  # the warnings say where the records are

    on_server = mlflow.MlflowClient(f"sqlite:///{work / 'server_b' / 'server.db'}")  # the stopped server's store
    server_run = _the_run(on_server)
    assert _steps(on_server, server_run, "train_loss/lesion") == [1]
    assert server_run.info.status == "RUNNING"  # its end could not be sent

    local = mlflow.MlflowClient(fallback_uri)
    local_run = _the_run(local)
    assert local_run.data.tags["medmtl.server_run_id"] == server_run.info.run_id
    assert local_run.info.status == "FINISHED" and local_run.info.run_name == server_run.info.run_name
    assert _steps(local, local_run, "train_loss/lesion") == [2, 3]
    assert _steps(local, local_run, "mean_primary") == [2, 3]
    assert local_run.data.params["weighting"] == "uncertainty"  # params logged before the outage come along
    assert {"splits.json", "best.pt"} <= {a.path for a in local.list_artifacts(local_run.info.run_id)}
    assert [r["epoch"] for r in json.loads((run_dir / "history.json").read_text())] == [1, 2, 3]


def test_errors_other_than_an_outage_pass_through_unchanged(tmp_path) -> None:
    """A rejected call (here: a parameter changed) raises as without the guard; only connection failures are kept."""
    from types import SimpleNamespace

    import requests
    from mlflow.exceptions import MlflowException

    from medmtl.tracking import TrackingGuard

    class Client:
        tracking_uri = "http://127.0.0.1:1"

        def log_param(self, run_id: str, key: str, value: str) -> None:
            raise MlflowException("Changing param values is not allowed", error_code="INVALID_PARAMETER_VALUE")

        def set_tag(self, run_id: str, key: str, value: str) -> None:
            try:
                raise requests.exceptions.ConnectionError("Connection refused")
            except requests.exceptions.ConnectionError as error:  # as mlflow.utils.rest_utils wraps it
                raise MlflowException(f"API request failed with exception {error}")  # noqa: B904

        def get_run(self, run_id: str) -> None:
            raise AssertionError("not called while offline")

    handler = SimpleNamespace(client=Client())
    guard = TrackingGuard(fallback_dir=tmp_path, retry_interval=3600)
    guard.guard(handler)
    guard.guard(handler)  # idempotent
    with pytest.raises(MlflowException, match="Changing param values"):
        handler.client.log_param("run", "lr", "0.1")
    assert not guard.offline
    assert handler.client.set_tag("run", "k", "v") is None  # kept, not raised
    assert guard.offline and guard.pending == 1
    assert handler.client.get_run("run").data.params == {}  # reads answer from what is known
