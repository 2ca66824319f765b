"""MLflow metric batching: the store ends up with the same history, in far fewer transactions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from monai.handlers import MLFlowHandler

from medmtl.tracking import MLFLOW_MAX_METRICS_PER_BATCH, MetricBatchingClient, TrackingGuard, connect_tracking


class _CountingClient:
    """Forwards to a real client and counts its ``log_batch`` calls (one store transaction each)."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.batches: list[int] = []

    def log_batch(self, run_id: str, metrics=(), params=(), tags=(), **kwargs):
        self.batches.append(len(metrics))
        return self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.client, name)


@pytest.fixture(scope="module")
def tracking_client(tmp_path_factory) -> tuple[MlflowClient, str]:
    """One SQLite store for the module (creating one costs seconds), with one experiment."""
    client = MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    return client, client.create_experiment("batching")


@pytest.fixture
def store(tracking_client) -> tuple[MlflowClient, str]:
    """The client and a fresh run."""
    client, experiment_id = tracking_client
    return client, client.create_run(experiment_id).info.run_id


def _metric(key: str, value: float, step: int) -> Metric:
    return Metric(key, value, int(time.time() * 1000) - 1000 * step, step)  # distinct, non-monotonic timestamps


def test_metrics_are_kept_until_another_call_then_sent_in_order(store) -> None:
    client, run_id = store
    counting = _CountingClient(client)
    batching = MetricBatchingClient(counting, flush_interval=3600)
    sent = [_metric("loss", 0.5 + step, step) for step in range(1, 4)]
    for metric in sent:
        assert batching.log_batch(run_id=run_id, metrics=[metric], params=[], tags=[]) is None
    assert batching.pending == 3 and counting.batches == []
    assert client.get_metric_history(run_id, "loss") == []

    batching.log_param(run_id, "lr", "0.01")  # any other call sends the kept metrics first
    assert counting.batches == [3] and batching.pending == 0
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value, m.timestamp) for m in history) == [(m.step, m.value, m.timestamp) for m in sent]
    assert client.get_run(run_id).data.params == {"lr": "0.01"}


def test_calls_with_params_or_tags_pass_through_after_the_kept_metrics(store) -> None:
    from mlflow.entities import Param

    client, run_id = store
    counting = _CountingClient(client)
    batching = MetricBatchingClient(counting, flush_interval=3600)
    batching.log_batch(run_id, metrics=[_metric("loss", 1.0, 1)])
    batching.log_batch(run_id, metrics=[_metric("loss", 2.0, 2)], params=[Param("seed", "0")])
    assert counting.batches == [1, 1]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss")) == [(1, 1.0), (2, 2.0)]
    assert client.get_run(run_id).data.params == {"seed": "0"}


def test_flush_splits_at_the_mlflow_limit_and_max_metrics_triggers_it(store) -> None:
    client, run_id = store
    counting = _CountingClient(client)
    batching = MetricBatchingClient(counting, flush_interval=3600, max_metrics=10_000)
    total = 2 * MLFLOW_MAX_METRICS_PER_BATCH + 5
    batching.log_batch(run_id, metrics=[Metric("loss", float(i), 1000 + i, i) for i in range(total)])
    batching.flush()
    assert counting.batches == [MLFLOW_MAX_METRICS_PER_BATCH, MLFLOW_MAX_METRICS_PER_BATCH, 5]
    assert len(client.get_metric_history(run_id, "loss")) == total

    small = MetricBatchingClient(counting, flush_interval=3600, max_metrics=2)
    counting.batches.clear()
    for step in range(1, 6):
        small.log_batch(run_id, metrics=[_metric("acc", 0.1 * step, step)])
    assert counting.batches == [2, 2] and small.pending == 1
    with pytest.raises(ValueError, match="max_metrics"):
        MetricBatchingClient(counting, max_metrics=0)


def test_zero_flush_interval_sends_at_once(store) -> None:
    client, run_id = store
    counting = _CountingClient(client)
    batching = MetricBatchingClient(counting, flush_interval=0)
    batching.log_batch(run_id, metrics=[_metric("loss", 1.0, 1)])
    assert counting.batches == [1] and batching.pending == 0


def _train_with_mlflow(tmp_path: Path, guard: TrackingGuard, monkeypatch, epochs: int = 3, steps: int = 7):
    """A tiny ignite loop logged by MONAI's MLFlowHandler (per-iteration loss on, as in bundles).

    Returns the sizes of the metric-carrying ``log_batch`` calls that reached the store, and the
    logged loss history.
    """
    batches: list[int] = []
    original = MlflowClient.log_batch

    def counted(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        if metrics:
            batches.append(len(metrics))
        return original(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counted)
    weight = torch.nn.Parameter(torch.tensor(2.0))
    optimizer = torch.optim.SGD([weight], lr=0.1)

    def step(engine: Engine, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        optimizer.zero_grad()
        loss = (weight * batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    trainer = Engine(step)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_handler = MLFlowHandler(
        tracking_uri=uri, experiment_name="batched", output_transform=lambda out: out["loss"].item()
    )
    handlers = [guard, mlflow_handler]  # as in the bundles: --tracking appends MLFlowHandler after the guard
    connect_tracking(handlers)
    for handler in handlers:
        handler.attach(trainer)
    trainer.run([torch.full((2,), float(i)) for i in range(steps)], max_epochs=epochs)
    monkeypatch.undo()
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("batched").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "Loss")
    return batches, sorted((m.step, round(m.value, 6)) for m in history)


def test_guard_batches_monai_iteration_logs_into_one_call_per_epoch(tmp_path: Path, monkeypatch) -> None:
    batches, history = _train_with_mlflow(tmp_path / "batched", TrackingGuard(fallback_dir=tmp_path), monkeypatch)
    plain_batches, plain_history = _train_with_mlflow(
        tmp_path / "plain", TrackingGuard(fallback_dir=tmp_path, batch_metrics=False), monkeypatch
    )
    assert history == plain_history and len(history) == 3 * 7  # same steps and values
    assert plain_batches == [1] * 21  # one store transaction per iteration without batching
    assert batches == [7, 7, 7]  # one per epoch with it
