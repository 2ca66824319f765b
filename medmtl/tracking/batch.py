"""Send MONAI's per-iteration MLflow metrics in batches instead of one store transaction per step.

Why: MONAI's ``MLFlowHandler`` logs the training loss at every iteration with one
``client.log_batch`` call each (``iteration_log`` is on in MONAI's default tracking settings).
Against the embedded SQLite store every call is a transaction on the training thread (119 ms
measured here for a one-metric call while a training ran); on a small 2D dataset (BUSI, 128 px,
2 CPU cores) py-spy put 6 % of the training time there, and batching took the epoch from 11.5 s to
10.4-10.9 s. Merging the metric-only calls and sending them once per epoch (or
every ``flush_interval`` seconds) costs one transaction for the lot.

:class:`MetricBatchingClient` wraps an ``MlflowClient``: ``log_batch`` calls that carry only
metrics are kept; any other call (params, tags, artifacts, reads, the run's end) first sends what
was kept, so the order of writes on the server is unchanged. Metrics keep the timestamps and steps
they were created with, so the run's history is the same as without batching; it only reaches the
server up to one epoch later. :class:`medmtl.tracking.TrackingGuard` installs it (its
``batch_metrics`` argument) and flushes at every epoch end and when the run ends.

Why ours and not MLflow's asynchronous logging (``log_batch(..., synchronous=False)``): a batch its
queue fails to write is logged and dropped, and when it merges calls (the only way to get one store
transaction for many steps, ``MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS``) the failure is reported on
the first call's future only, so the outage guard could not tell which calls to keep and replay.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["MetricBatchingClient", "MLFLOW_MAX_METRICS_PER_BATCH"]

#: MLflow's limit on the metrics of one ``log_batch`` call.
MLFLOW_MAX_METRICS_PER_BATCH = 1000


class MetricBatchingClient:
    """An ``MlflowClient`` stand-in that merges metric-only ``log_batch`` calls (see the module docstring).

    Args:
        client: the client to wrap (an ``MlflowClient`` or a wrapper with its methods).
        flush_interval: seconds after which kept metrics are sent at the next ``log_batch`` even
            without an explicit :meth:`flush` (bounds the delay on long epochs); ``0`` sends at once.
        max_metrics: metrics kept at most before they are sent.

    Example::

        client = MetricBatchingClient(MlflowClient("sqlite:///mlflow.db"), flush_interval=30)
        client.log_batch(run_id, metrics=[Metric("loss", 0.5, timestamp, 1)])  # kept
        client.flush()  # one log_batch with everything kept
    """

    def __init__(
        self, client: Any, flush_interval: float = 30.0, max_metrics: int = MLFLOW_MAX_METRICS_PER_BATCH
    ) -> None:
        if max_metrics < 1:
            raise ValueError(f"MetricBatchingClient: max_metrics must be >= 1, got {max_metrics}")
        self.wrapped_client = client
        self.flush_interval = float(flush_interval)
        self.max_metrics = int(max_metrics)
        self._pending: dict[str, list[Any]] = {}
        self._last_flush = time.monotonic()

    @property
    def pending(self) -> int:
        """Metrics kept and not sent yet."""
        return sum(len(metrics) for metrics in self._pending.values())

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (), **kwargs: Any) -> Any:
        """Keep a metric-only call; send anything else at once, after what was kept."""
        if params or tags or kwargs or not metrics:
            self.flush()
            return self.wrapped_client.log_batch(
                run_id=run_id, metrics=list(metrics), params=params, tags=tags, **kwargs
            )
        self._pending.setdefault(run_id, []).extend(metrics)
        if self.pending >= self.max_metrics or time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()
        return None

    def flush(self) -> None:
        """Send every kept metric: one ``log_batch`` per run (split at MLflow's 1000-metric limit)."""
        pending, self._pending = self._pending, {}
        self._last_flush = time.monotonic()
        for run_id, metrics in pending.items():
            for start in range(0, len(metrics), MLFLOW_MAX_METRICS_PER_BATCH):
                chunk = metrics[start : start + MLFLOW_MAX_METRICS_PER_BATCH]
                self.wrapped_client.log_batch(run_id=run_id, metrics=chunk, params=[], tags=[])

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.wrapped_client, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.flush()
            return attr(*args, **kwargs)

        return call
