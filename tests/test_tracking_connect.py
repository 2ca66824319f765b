"""connect_tracking: the tracking handlers get MONAI's MLFlowHandler from the handler lists, not from the engines."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from mlflow.tracking import MlflowClient
from monai.handlers import MLFlowHandler

from medmtl.tracking import (
    FALLBACK_DB,
    MetricBatchingClient,
    RunArtifactsHandler,
    TrackingGuard,
    connect_tracking,
    mlflow_handlers,
)


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one costs seconds); each test uses its own experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments(max_results=1)  # creates the store once
    return uri


def _engines() -> tuple[Engine, Engine]:
    """A trainer whose epochs end with a validator run (the validator sets a metric), as ValidationHandler does."""
    weight = torch.nn.Parameter(torch.tensor(2.0))
    optimizer = torch.optim.SGD([weight], lr=0.1)

    def train_step(engine: Engine, batch: torch.Tensor) -> dict[str, float]:
        optimizer.zero_grad()
        loss = (weight * batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    validator = Engine(lambda engine, batch: None)
    validator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(score=float(weight.detach().abs()))
    )
    trainer = Engine(train_step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))
    return trainer, validator


def _run(trainer: Engine, validator: Engine, train_handlers: list, val_handlers: list, epochs: int = 2) -> None:
    for handler in train_handlers:
        handler.attach(trainer)
    for handler in val_handlers:
        handler.attach(validator)
    trainer.run([torch.full((2,), float(i)) for i in range(3)], max_epochs=epochs)


def _mlflow(uri: str, experiment: str, **kwargs) -> MLFlowHandler:
    return MLFlowHandler(tracking_uri=uri, experiment_name=experiment, output_transform=lambda o: o["loss"], **kwargs)


def test_guard_gets_every_list_artifacts_their_own_and_nothing_twice(store_uri, tmp_path) -> None:
    guard, train_artifacts, val_artifacts = (
        TrackingGuard(fallback_dir=tmp_path),
        RunArtifactsHandler(),
        RunArtifactsHandler(),
    )
    train_mlflow, val_mlflow = _mlflow(store_uri, "lists"), _mlflow(store_uri, "lists")
    train_handlers = [guard, train_artifacts, object(), train_mlflow]
    val_handlers = [val_artifacts, val_mlflow]

    assert connect_tracking(train_handlers, val_handlers, None) == [train_mlflow, val_mlflow]
    connect_tracking(train_handlers, val_handlers)  # again: nothing added twice
    assert guard.mlflow_handlers == [train_mlflow, val_mlflow]
    assert train_artifacts.mlflow_handlers == [train_mlflow]  # its own engine's run
    assert val_artifacts.mlflow_handlers == [val_mlflow]
    assert mlflow_handlers(val_handlers, train_handlers, val_handlers) == [val_mlflow, train_mlflow]
    assert connect_tracking([guard, train_artifacts]) == []  # no --tracking mlflow: nothing to connect


def test_connected_handlers_guard_batch_and_log_params_once_on_resume(store_uri, tmp_path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: demo\n")
    params = {"lr": 0.1, "net": {"features": (8, 16)}}

    def training(extra: dict, close: bool) -> tuple[TrackingGuard, list[MLFlowHandler]]:
        trainer, validator = _engines()
        guard = TrackingGuard(fallback_dir=tmp_path, retry_interval=3600)
        artifacts = RunArtifactsHandler(params={**params, **extra}, artifacts=[spec, tmp_path / "missing.json"])
        handlers = [_mlflow(store_uri, "resume", run_name="train_1", close_on_complete=close)]
        handlers.append(_mlflow(store_uri, "resume", run_name="train_1", iteration_log=False))
        train_handlers, val_handlers = [guard, artifacts, handlers[0]], [handlers[1]]
        connect_tracking(train_handlers, val_handlers)
        _run(trainer, validator, train_handlers, val_handlers)
        return guard, handlers

    guard, handlers = training({}, close=False)  # ends RUNNING, as a killed training does
    assert all(isinstance(h.client, MetricBatchingClient) for h in handlers)  # the validator's too
    assert guard.pending == 0 and not guard.offline
    guard, _ = training({"epochs": 4, "lr": 0.5}, close=True)  # resumed: picks the same run again
    client = MlflowClient(store_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert run.info.status == "FINISHED"
    assert {k: run.data.params[k] for k in ("lr", "net.features", "epochs")} == {
        "lr": "0.1",  # write-once: the first value stays, the resume does not fail on it
        "net.features": "[8, 16]",
        "epochs": "4",
    }
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["spec.yaml"]
    assert len(client.get_metric_history(run.info.run_id, "Loss")) == 2 * 2 * 3  # two trainings, batched
    assert len(client.get_metric_history(run.info.run_id, "score")) >= 1  # the validator's handler: same run


def test_unconnected_handlers_do_nothing(store_uri, tmp_path) -> None:
    trainer, validator = _engines()
    guard, artifacts = TrackingGuard(fallback_dir=tmp_path), RunArtifactsHandler(params={"lr": 0.1})
    train_mlflow = _mlflow(store_uri, "unconnected")
    _run(trainer, validator, [guard, artifacts, train_mlflow], [], epochs=1)
    client = MlflowClient(store_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("unconnected").experiment_id])
    assert "lr" not in run.data.params  # MONAI's own params only
    assert not isinstance(train_mlflow.client, MetricBatchingClient)


def test_connected_guard_keeps_a_dead_server_run_in_the_local_store(tmp_path, monkeypatch, caplog) -> None:
    with socket.socket() as probe:  # a port nothing listens on: connection refused at once
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trainer, validator = _engines()
    guard = TrackingGuard(fallback_dir=tmp_path, retry_interval=3600)
    artifacts = RunArtifactsHandler(params={"lr": 0.1})
    train_handlers = [guard, artifacts, _mlflow(url, "dead", run_name="train_1", close_on_complete=True)]
    val_handlers = [_mlflow(url, "dead", run_name="train_1", iteration_log=False)]
    connect_tracking(train_handlers, val_handlers)
    with caplog.at_level("WARNING"):
        _run(trainer, validator, train_handlers, val_handlers)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("is unreachable (" in w for w in warnings) == 1

    local = MlflowClient(f"sqlite:///{Path(tmp_path) / FALLBACK_DB}")
    (run,) = local.search_runs([local.get_experiment_by_name("dead").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "train_1"
    assert run.data.params["lr"] == "0.1"
    assert len(local.get_metric_history(run.info.run_id, "Loss")) == 2 * 3
    assert [m.step for m in local.get_metric_history(run.info.run_id, "score")]  # the validator's calls too
