"""Per-step cost of MLflow metric logging on the training thread: direct, batched by the guard, async.

MONAI's ``MLFlowHandler`` logs the loss at every iteration with one ``client.log_batch`` call. This
times ``steps`` such calls of one metric each against a fresh local SQLite store, one candidate per
process (MLflow's async queue and its environment are process-wide):

- ``sync``: the plain ``MlflowClient`` (one store transaction per step, on the training thread);
- ``batching``: the client :class:`medmtl.tracking.TrackingGuard` installs (outage guard +
  :class:`medmtl.tracking.MetricBatchingClient`), drained by ``guard.finish()``;
- ``async``: ``log_batch(..., synchronous=False)``, MLflow's asynchronous logging;
- ``async_buffered``: the same with ``MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=30`` (MLflow merges queued calls).

Run: ``.venv/bin/python benchmarks/mlflow_step_cost.py [--steps 200]``; prints µs per step on the
caller, the time to drain what is left, and how many metrics reached the store.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CANDIDATES = ("sync", "batching", "async", "async_buffered")


def _run(mode: str, steps: int) -> str:
    if mode == "async_buffered":
        os.environ["MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"] = "30"
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    tmp = tempfile.mkdtemp()
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    run_id = client.create_run(client.create_experiment("bench")).info.run_id
    target, guard = client, None
    if mode == "batching":
        from types import SimpleNamespace

        from medmtl.tracking import TrackingGuard

        handler = SimpleNamespace(client=client)  # the guard wraps an MLFlowHandler's ``client``
        guard = TrackingGuard(fallback_dir=tmp)
        guard.guard(handler)
        target = handler.client
    extra = {"synchronous": False} if mode.startswith("async") else {}
    operations = []
    start = time.perf_counter()
    for step in range(steps):
        metric = Metric("loss", 1.0 / (step + 1), int(time.time() * 1000), step)
        result = target.log_batch(run_id=run_id, metrics=[metric], params=[], tags=[], **extra)
        if result is not None:
            operations.append(result)
    logged = time.perf_counter()
    for operation in operations:
        operation.wait()
    if guard is not None:
        guard.finish()
    drained = time.perf_counter()
    stored = len(client.get_metric_history(run_id, "loss"))
    per_step = 1e6 * (logged - start) / steps
    return f"{mode:15s} {per_step:10.1f} us/step  {1e3 * (drained - logged):9.1f} ms to drain  {stored} stored"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--mode", choices=CANDIDATES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(_run(args.mode, args.steps))
        return
    for mode in CANDIDATES:
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
