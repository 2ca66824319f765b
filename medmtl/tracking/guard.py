"""Training that survives an MLflow tracking server outage: buffer, replay, local fallback.

MONAI's ``MLFlowHandler`` (added by ``--tracking mlflow``) and :class:`medmtl.tracking.RunArtifactsHandler`
call the tracking server from inside the engines. With the server down, every call retries for
minutes (MLflow's default: 7 retries with exponential backoff) and then raises, which ends the
training with a traceback: an hours-long run lost because a dashboard was down. The metrics are
safe in ``history.json`` either way; what the run must not do is die or go silent.

:class:`TrackingGuard` wraps the ``client`` of every ``MLFlowHandler`` connected to it
(:func:`medmtl.tracking.connect_tracking`: the handlers ``--tracking mlflow`` appended to the
bundle's handler lists; MONAI's handler and ours make every server call through
``handler.client``, so nothing of MONAI is copied or patched). The wrapped client:

- passes calls through while the server answers;
- on the first connection failure logs **one** warning and goes offline: writes (metrics, params,
  tags, artifacts, the run's end) are kept in order; reads get what is known locally (the
  experiment and run seen last, or placeholders when the server was down from the start);
- every ``retry_interval`` seconds asks the server's ``/health``; when it answers, creates what
  was only a placeholder (experiment, run) and replays the kept calls, so the run on the server
  ends up complete;
- when the engine completes (or the process exits) with the server still down, writes the kept
  calls (plus the run's params) into a local SQLite store ``<fallback_dir>/mlflow_offline.db``
  (artifacts in ``<fallback_dir>/mlruns_offline``) and says so in a second warning.

Calls that fail for another reason than the connection (a rejected parameter, a deleted
experiment) are raised unchanged, as without the guard.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.utils import path_to_sqlite_uri, path_to_uri

from medmtl.tracking.batch import MetricBatchingClient

__all__ = ["TrackingGuard", "FALLBACK_DB", "FALLBACK_ARTIFACTS"]

logger = logging.getLogger(__name__)

FALLBACK_DB = "mlflow_offline.db"
FALLBACK_ARTIFACTS = "mlruns_offline"

# client methods that only write: kept while offline and replayed in order
_WRITES = {
    "log_batch",
    "log_metric",
    "log_param",
    "set_tag",
    "delete_tag",
    "log_artifact",
    "log_artifacts",
    "log_text",
    "log_dict",
    "log_inputs",
    "set_terminated",
    "update_run",
}
_OUTAGE_TYPES = ("ConnectionError", "Timeout", "RetryError", "MaxRetryError", "NewConnectionError", "ProtocolError")


def _is_outage(error: BaseException) -> bool:
    """True for an unreachable/overloaded server (connection refused, timeout, 5xx after retries), not a 4xx."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = {cls.__name__ for cls in type(current).__mro__}
        if names & set(_OUTAGE_TYPES) or isinstance(current, ConnectionError | TimeoutError):
            return True
        if "OperationalError" in names:  # a locked or vanished SQLite/SQL store
            return True
        current = current.__cause__ or current.__context__
    text = str(error)
    return "failed with exception" in text or "failed with timeout exception" in text


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


class _Outage:
    """Shared state of one tracking URI: online/offline, kept calls, placeholders and what is known."""

    def __init__(self, uri: str, guard: TrackingGuard) -> None:
        self.uri = uri
        self.guard = guard
        self.offline = False
        self.since = 0.0
        self.last_probe = 0.0
        self.outages = 0
        self.queue: list[tuple[str, tuple, dict]] = []
        self.experiments: dict[str, Any] = {}  # name -> Experiment (real or placeholder)
        self.create_experiment_kwargs: dict[str, dict] = {}
        self.runs: dict[str, Any] = {}  # run id -> Run (real or placeholder)
        self.params: dict[str, dict[str, str]] = {}  # run id -> params logged
        self.id_map: dict[str, str] = {}  # placeholder id -> server id
        self.fallback_map: dict[str, str] = {}  # run id -> run id in the local store
        self.fallback_params: dict[str, set[str]] = {}  # run id -> param keys already in the local store
        self.given_up = False  # the server answered but refused to recreate the run: local store only

    # ------------------------------------------------------------------ calls

    def call(self, client: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.offline:
            self.recover(client)
        if not self.offline:
            try:
                result = getattr(client, name)(*self._mapped(args), **self._mapped(kwargs))
            except Exception as error:
                if not _is_outage(error):
                    raise
                self._go_offline(error)
            else:
                self._remember(name, args, kwargs, result)
                return result
        return self._offline_call(name, args, kwargs)

    def _mapped(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.id_map.get(value, value)
        if isinstance(value, tuple):
            return tuple(self._mapped(v) for v in value)
        if isinstance(value, list):
            return [self._mapped(v) for v in value]
        if isinstance(value, dict):
            return {k: self._mapped(v) for k, v in value.items()}
        return value

    def _remember(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        """Keep what an offline read may need later: experiments, runs and params seen."""
        from mlflow.entities import Experiment, Run

        items = result if isinstance(result, list) else [result]
        for item in items:
            if isinstance(item, Experiment):
                self.experiments[item.name] = item
            elif isinstance(item, Run):
                self.runs[item.info.run_id] = item
                self.params.setdefault(item.info.run_id, {}).update(item.data.params)
        if name in _WRITES:
            self._note_params(name, args, kwargs)

    def _note_params(self, name: str, args: tuple, kwargs: dict) -> None:
        run_id = kwargs.get("run_id", args[0] if args else None)
        if run_id is None:
            return
        params = self.params.setdefault(run_id, {})
        if name == "log_param":
            key = kwargs.get("key", args[1] if len(args) > 1 else None)
            value = kwargs.get("value", args[2] if len(args) > 2 else None)
            if key is not None:
                params[key] = str(value)
        elif name == "log_batch":
            for param in kwargs.get("params", args[2] if len(args) > 2 else ()) or ():
                params[param.key] = param.value

    # ---------------------------------------------------------------- offline

    def _go_offline(self, error: BaseException) -> None:
        self.offline = True
        self.since = self.last_probe = time.time()
        self.outages += 1
        message = (
            "MLflow tracking server %s is unreachable (%s): the run goes on; its MLflow calls are kept and sent "
            "when the server answers again (checked every %g s), or written to %s at the end of the run. "
            "Metrics are also in the run's history.json"
        )
        log = logger.warning if self.outages == 1 else logger.info
        log(message, self.uri, _short(error), self.guard.retry_interval, self.guard.fallback_uri)

    def _offline_call(self, name: str, args: tuple, kwargs: dict) -> Any:
        from mlflow.entities import Experiment, LifecycleStage, Run, RunData, RunInfo, RunStatus

        if name in _WRITES:
            if name == "set_terminated" and kwargs.get("end_time") is None and len(args) < 3:
                kwargs = {**kwargs, "end_time": int(time.time() * 1000)}  # when it ended, not when replayed
            self.queue.append((name, args, kwargs))
            self._note_params(name, args, kwargs)
            if len(self.queue) >= self.guard.max_buffered:
                self.write_fallback(reason=f"more than {self.guard.max_buffered} calls kept")
            return None
        if name in {"get_experiment_by_name", "create_experiment"}:
            exp_name = kwargs.get("name", args[0] if args else "Default")
            if exp_name not in self.experiments:
                placeholder = f"offline-{uuid.uuid4().hex[:12]}"
                self.experiments[exp_name] = Experiment(placeholder, exp_name, "", LifecycleStage.ACTIVE)
                self.create_experiment_kwargs[exp_name] = {k: v for k, v in kwargs.items() if k != "name"}
            experiment = self.experiments[exp_name]
            return experiment if name == "get_experiment_by_name" else experiment.experiment_id
        if name == "get_experiment":
            exp_id = kwargs.get("experiment_id", args[0] if args else None)
            return next((e for e in self.experiments.values() if e.experiment_id == exp_id), None)
        if name == "search_runs":
            ids = kwargs.get("experiment_ids", args[0] if args else [])
            ids = [ids] if isinstance(ids, str) else list(ids)
            return [self.get_run(r.info.run_id) for r in self.runs.values() if r.info.experiment_id in ids]
        if name == "create_run":
            exp_id = kwargs.get("experiment_id", args[0] if args else None)
            run_id = f"offline-{uuid.uuid4().hex}"
            start = kwargs.get("start_time") or int(time.time() * 1000)
            run_name = kwargs.get("run_name") or run_id
            status = RunStatus.to_string(RunStatus.RUNNING)
            info = RunInfo(run_id, exp_id, "", status, start, None, LifecycleStage.ACTIVE, run_name=run_name)
            self.runs[run_id] = Run(info, RunData())
            self.params[run_id] = {}
            return self.get_run(run_id)
        if name == "get_run":
            return self.get_run(kwargs.get("run_id", args[0] if args else None))
        logger.debug("MLflow server offline: %s() skipped", name)
        return None

    def get_run(self, run_id: str | None) -> Any:
        from mlflow.entities import LifecycleStage, Param, Run, RunData, RunInfo, RunStatus

        run = self.runs.get(run_id) if run_id is not None else None
        if run is None:  # never seen: an empty stand-in, so callers reading .data.params go on
            status = RunStatus.to_string(RunStatus.RUNNING)
            info = RunInfo(str(run_id), "", "", status, int(time.time() * 1000), None, LifecycleStage.ACTIVE)
            run = Run(info, RunData())
        params = [Param(k, v) for k, v in self.params.get(run_id, {}).items()]
        return Run(run.info, RunData(params=params))

    # ---------------------------------------------------------------- recover

    def _server_up(self, client: Any) -> bool:
        if self.uri.startswith(("http://", "https://")):
            import requests

            try:
                return requests.get(self.uri.rstrip("/") + "/health", timeout=2).ok
            except requests.RequestException:
                return False
        try:
            client.search_experiments(max_results=1)
            return True
        except Exception:  # noqa: BLE001 - any failure means "still down"
            return False

    def recover(self, client: Any, force: bool = False) -> bool:
        """Probe (at most every ``retry_interval`` s unless forced) and replay; True when back online."""
        now = time.time()
        if self.given_up or not force and now - self.last_probe < self.guard.retry_interval:
            return False
        self.last_probe = now
        if not self._server_up(client):
            return False
        try:
            sent = self._replay(client)
        except Exception as error:  # noqa: BLE001 - the kept calls stay queued either way
            if not _is_outage(error):
                self.given_up = True
                logger.warning(
                    "MLflow tracking server %s answers again but refused to recreate the run (%s): the rest of "
                    "the run goes to %s",
                    self.uri,
                    _short(error),
                    self.guard.fallback_uri,
                )
            return False
        self.offline = False
        logger.info(
            "MLflow tracking server %s answers again after %.0f s: %d kept call(s) sent",
            self.uri,
            time.time() - self.since,
            sent,
        )
        return True

    def _replay(self, client: Any) -> int:
        for exp_name, experiment in list(self.experiments.items()):
            if experiment.experiment_id.startswith("offline-") and experiment.experiment_id not in self.id_map:
                real = client.get_experiment_by_name(exp_name)
                if real is None:
                    exp_id = client.create_experiment(exp_name, **self.create_experiment_kwargs.get(exp_name, {}))
                    real = client.get_experiment(exp_id)
                self.id_map[experiment.experiment_id] = real.experiment_id
                self.experiments[exp_name] = real
        for run_id, run in list(self.runs.items()):
            if run_id.startswith("offline-") and run_id not in self.id_map:
                real = client.create_run(
                    experiment_id=self._mapped(run.info.experiment_id),
                    start_time=run.info.start_time,
                    run_name=run.info.run_name,
                )
                self.id_map[run_id] = real.info.run_id
        sent = 0
        while self.queue:
            name, args, kwargs = self.queue[0]
            try:
                getattr(client, name)(*self._mapped(args), **self._mapped(kwargs))
            except Exception as error:
                if _is_outage(error):
                    raise
                logger.warning("MLflow rejected a kept %s() call while replaying it: %s", name, _short(error))
            self.queue.pop(0)
            sent += 1
        return sent

    # --------------------------------------------------------------- fallback

    def finish(self, client: Any) -> None:
        if not self.queue:
            return
        if self.recover(client, force=True):
            return
        self.write_fallback(reason="the server is still unreachable at the end of the run")

    def write_fallback(self, reason: str) -> None:
        """Replay the kept calls into the local SQLite store, one run per run id, with the run's params."""
        import mlflow

        queue, self.queue = self.queue, []
        if not queue:
            return
        guard = self.guard
        guard.fallback_dir.mkdir(parents=True, exist_ok=True)
        local = mlflow.MlflowClient(guard.fallback_uri)
        run_ids: list[str] = []
        for _, args, kwargs in queue:
            run_id = kwargs.get("run_id", args[0] if args else None)
            if isinstance(run_id, str) and run_id not in run_ids:
                run_ids.append(run_id)
        for run_id in run_ids:
            if run_id in self.fallback_map:
                continue
            run = self.runs.get(run_id)
            exp_name = next(
                (n for n, e in self.experiments.items() if run and e.experiment_id == run.info.experiment_id),
                "medmtl_offline",
            )
            experiment = local.get_experiment_by_name(exp_name)
            exp_id = (
                experiment.experiment_id
                if experiment
                else local.create_experiment(exp_name, artifact_location=path_to_uri(guard.fallback_artifacts))
            )
            server_id = self.id_map.get(run_id, run_id)
            tags = {"medmtl.tracking_uri": self.uri, "medmtl.offline_reason": reason}
            if not server_id.startswith("offline-"):
                tags["medmtl.server_run_id"] = server_id  # the server holds this run's calls before the outage
            fallback = local.create_run(
                exp_id,
                start_time=run.info.start_time if run else None,
                run_name=run.info.run_name if run else None,
                tags=tags,
            )
            self.fallback_map[run_id] = fallback.info.run_id
        for run_id in run_ids:  # params are write-once: each key once, also across several spills
            logged = self.fallback_params.setdefault(run_id, set())
            for key, value in self.params.get(run_id, {}).items():
                if key not in logged:
                    local.log_param(self.fallback_map[run_id], key, value)
                    logged.add(key)
        for name, args, kwargs in queue:
            if name == "log_param":
                continue  # logged above: MLflow params are write-once
            run_id = kwargs.get("run_id", args[0] if args else None)
            target = self.fallback_map.get(run_id, run_id)
            args = (target, *args[1:]) if args and args[0] == run_id else args
            kwargs = {**kwargs, "run_id": target} if "run_id" in kwargs else kwargs
            if name == "log_batch":  # its params were logged above too
                if "params" in kwargs:
                    kwargs = {**kwargs, "params": []}
                elif len(args) > 2:
                    args = (*args[:2], [], *args[3:])
            try:
                getattr(local, name)(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - keep writing the rest
                logger.warning("could not write a kept %s() call to %s: %s", name, guard.fallback_uri, _short(error))
        logger.warning(
            "MLflow tracking server %s: %s, so %d kept MLflow call(s) were written to %s instead (run %s); "
            "see them with `mlflow ui --backend-store-uri %s`",
            self.uri,
            reason,
            len(queue),
            guard.fallback_uri,
            ", ".join(self.fallback_map[r] for r in run_ids),
            guard.fallback_uri,
        )


class _GuardedClient:
    """An ``MlflowClient`` stand-in that routes public calls through an :class:`_Outage`."""

    def __init__(self, client: Any, outage: _Outage) -> None:
        self._medmtl_client = client
        self._medmtl_outage = outage

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._medmtl_client, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._medmtl_outage.call(self._medmtl_client, name, *args, **kwargs)

        return call


class TrackingGuard:
    """Keep a run going, and its MLflow records, when the tracking server is down (see the module docstring).

    List it in the trainer's handlers (``train::handlers``) once, and connect it in the bundle's
    ``run`` section to the handler lists ``--tracking mlflow`` appends ``MLFlowHandler`` to: it
    guards every one of them, the trainer's and the validator's. In an evaluation or inference
    config, list it in that engine's handlers and connect that list. Not connected (no
    ``--tracking mlflow``) it does nothing::

        {"_target_": "medmtl.tracking.TrackingGuard", "fallback_dir": "@output_dir"}
        "run": ["$medmtl.tracking.connect_tracking(@train::handlers, @validate::handlers)", "$@train::trainer.run()"]

    It also sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` for this
    process unless they are set already: MLflow's defaults (7 retries with exponential backoff,
    120 s) make one call to a dead server hang for minutes before the guard can take over. No
    retry is needed here: a failed call is kept and sent again with the others, so nothing is lost.

    Args:
        fallback_dir: folder of the local store used when the server is still down at the end
            (``mlflow_offline.db`` and ``mlruns_offline/``); default: the working folder.
        retry_interval: seconds between checks of the server while it is down.
        max_retries: MLflow HTTP retries per call (environment default, see above); 0 detects an
            outage at once, without urllib3's "Retrying" warning per call.
        timeout: MLflow HTTP timeout in seconds (environment default, see above).
        max_buffered: calls kept in memory at most; beyond that they go to the local store early.
        batch_metrics: merge MONAI's per-iteration metric calls and send them once per epoch (or every
            ``flush_interval`` seconds) with :class:`~medmtl.tracking.MetricBatchingClient`: one
            store transaction per epoch instead of one per step (5-9 % of a small 2D run's epoch on SQLite).
        flush_interval: longest delay, in seconds, of a batched metric.
    """

    def __init__(
        self,
        fallback_dir: str | os.PathLike | None = None,
        retry_interval: float = 60.0,
        max_retries: int = 0,
        timeout: int = 30,
        max_buffered: int = 100_000,
        batch_metrics: bool = True,
        flush_interval: float = 30.0,
    ) -> None:
        self.fallback_dir = Path(fallback_dir if fallback_dir is not None else os.getcwd()).absolute()
        self.retry_interval = float(retry_interval)
        self.max_retries = max_retries
        self.timeout = timeout
        self.max_buffered = max_buffered
        self.batch_metrics = batch_metrics
        self.flush_interval = float(flush_interval)
        self.mlflow_handlers: list[Any] = []
        self._batchers: list[MetricBatchingClient] = []
        self._outages: dict[str, _Outage] = {}
        self._clients: list[tuple[Any, _Outage]] = []
        self._main: Engine | None = None
        self._atexit = False

    @property
    def fallback_uri(self) -> str:
        return path_to_sqlite_uri(str(self.fallback_dir / FALLBACK_DB))

    @property
    def fallback_artifacts(self) -> Path:
        return self.fallback_dir / FALLBACK_ARTIFACTS

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.started, Events.STARTED):
            return
        if self._main is None:
            self._main = engine
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.max_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.timeout))
        # STARTED handlers run in the order they were added: ours is in before MLFlowHandler.start
        # (``--tracking`` appends MLflow's handlers after the bundle's), so no call goes unguarded
        engine.add_event_handler(Events.STARTED, self.started)

    def connect(self, mlflow_handlers: Iterable[Any]) -> None:
        """Guard these ``MLFlowHandler`` objects from the start of the engine on; idempotent."""
        for handler in mlflow_handlers:
            if not any(handler is known for known in self.mlflow_handlers):
                self.mlflow_handlers.append(handler)

    def started(self, engine: Engine) -> None:
        """Wrap the clients of the connected MLflow handlers (before they open a run); finish after the run."""
        for handler in self.mlflow_handlers:
            self.guard(handler)
        if engine is self._main and not engine.has_event_handler(self.finish, Events.COMPLETED):
            # added now, after MLFlowHandler's COMPLETED callbacks (its final artifacts, set_terminated)
            engine.add_event_handler(Events.COMPLETED, self.finish)
            # likewise after its EPOCH_COMPLETED logging (and the validation run before it)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.flush)
        if not self._atexit:  # a run that ends with an exception never fires COMPLETED
            atexit.register(self.finish)
            self._atexit = True

    def guard(self, handler: Any) -> None:
        """Route ``handler.client`` (an ``MlflowClient``) through the outage logic; idempotent."""
        client = handler.client
        if isinstance(client, (_GuardedClient, MetricBatchingClient)):
            return
        uri = str(getattr(client, "tracking_uri", "") or "")
        outage = self._outages.setdefault(uri, _Outage(uri, self))
        guarded = _GuardedClient(client, outage)
        if self.batch_metrics:
            batcher = MetricBatchingClient(guarded, flush_interval=self.flush_interval)
            self._batchers.append(batcher)
            handler.client = batcher
        else:
            handler.client = guarded
        self._clients.append((client, outage))

    def flush(self, _engine: Engine | None = None) -> None:
        """Send the metrics kept by the batching clients (each epoch end, and when the run ends)."""
        for batcher in self._batchers:
            try:
                batcher.flush()
            except Exception as error:  # noqa: BLE001 - tracking must never end a training
                logger.warning("MLflow metrics kept for batching could not be sent (%s)", _short(error))

    def finish(self, _engine: Engine | None = None) -> None:
        """Send what was kept, or write it to the local store; called when the run ends."""
        self.flush()
        done: set[int] = set()
        for client, outage in self._clients:
            if id(outage) not in done:
                done.add(id(outage))
                try:
                    outage.finish(client)
                except Exception as error:  # noqa: BLE001 - the end of a finished training is no place to crash
                    logger.warning(
                        "MLflow calls kept during the outage of %s could not be sent nor written to %s (%s); "
                        "the run's metrics are still in its history.json",
                        outage.uri,
                        self.fallback_uri,
                        _short(error),
                    )

    @property
    def pending(self) -> int:
        """Calls kept and not yet sent anywhere."""
        return sum(len(o.queue) for o in self._outages.values())

    @property
    def offline(self) -> bool:
        return any(o.offline for o in self._outages.values())
