"""Experiment tracking defaults: MLflow with nothing to set up.

Embedded default: the URI in ``MLFLOW_TRACKING_URI`` when set (a team's ``mlflow server``), else a
local SQLite store ``sqlite:///<cwd>/mlflow.db`` (MLflow 3 refuses plain folders / ``file://``).
With :class:`medmtl.tracking_guard.TrackingGuard` in its handlers, a server outage never stops a run;
:func:`usable_tracking_uri` covers the start, before any handler exists: a store that cannot be
opened then (a SQLite file locked by another process, an unreachable database) is replaced by the
offline store with one warning, instead of ending the run before its first epoch.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.utils import path_to_sqlite_uri

from medmtl.tracking_guard import FALLBACK_DB, TrackingGuard, _is_outage, _short

__all__ = ["default_tracking_uri", "usable_tracking_uri", "RunArtifactsHandler", "TrackingGuard"]

logger = logging.getLogger(__name__)


def default_tracking_uri(db_path: str | os.PathLike = "mlflow.db") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute ``sqlite:///`` URI of ``db_path``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or path_to_sqlite_uri(os.path.abspath(os.fspath(db_path)))


def _main_process() -> bool:
    """DDP rank 0 (or no DDP): the only rank that tracks, so the only one to open the store.

    Other ranks resolve the bundle's ``tracking_uri`` too (MONAI resolves the references of a
    disabled handler); opening a new SQLite store from several processes at once races its migration.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def usable_tracking_uri(
    uri: str | None = None, fallback_dir: str | os.PathLike | None = None, env_var: str = "MLFLOW_TRACKING_URI"
) -> str:
    """The tracking URI for a run: its store if it opens now, else the offline store (one warning).

    Why: MONAI's ``MLFlowHandler`` opens its store when it is built; a SQLite ``mlflow.db`` locked by
    another process (an exclusive transaction, a stuck ``mlflow ui``) or a database that does not
    answer then ends the run with a traceback before it starts, while the same problem a minute
    later is only a warning (:class:`~medmtl.tracking_guard.TrackingGuard`). Bundles resolve their
    ``tracking_uri`` with this function, which opens the store once (MLflow keeps it for the
    handler) and, when that fails for an outage, returns ``<fallback_dir>/mlflow_offline.db``, the
    store the guard falls back to. ``MLFLOW_TRACKING_URI`` wins over ``uri`` in MONAI's handler, so
    when it is set it is the store checked, and it is pointed to the offline store in this process.

    HTTP(S) servers are not contacted here: a client for them opens nothing, and the guard keeps a
    run's calls while the server is down and sends them when it answers (or writes them to the
    offline store at the end). Under DDP only rank 0 (the rank that tracks) opens the store.

    Args:
        uri: the configured URI (default :func:`default_tracking_uri`).
        fallback_dir: folder of the offline store (default: the working folder), the run's output folder
            in bundles.
        env_var: the environment variable that overrides ``uri``.

    Returns:
        The URI to track the run in.
    """
    from_env = os.environ.get(env_var)
    target = from_env or uri or default_tracking_uri()
    if target.startswith(("http://", "https://", "databricks")) or not _main_process():
        return target
    try:
        import mlflow

        mlflow.MlflowClient(target).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - only an outage is handled; the rest is MLflow's to report
        if not _is_outage(error):
            return target
        folder = Path(fallback_dir if fallback_dir is not None else os.getcwd()).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        fallback = path_to_sqlite_uri(str(folder / FALLBACK_DB))
        if fallback == target:
            return target
        logger.warning(
            "MLflow tracking store %s cannot be opened at the start of the run (%s): this run is tracked in the "
            "offline store %s instead (see it with `mlflow ui --backend-store-uri %s`); its metrics are also in "
            "the run's history.json",
            target,
            _short(Exception(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)),
            fallback,
            fallback,
        )
        if from_env:
            os.environ[env_var] = fallback
        return fallback
    return target


class RunArtifactsHandler:
    """Adds hyperparameters and files (spec, splits, best model, report) to the MLflow run of an engine.

    MONAI's ``MLFlowHandler`` (added by ``--tracking mlflow``) logs metrics; this handler finds that
    handler on the same engine and logs what a reviewer of the run also needs. Without MLflow
    tracking it does nothing, so bundles can always list it.

    Args:
        params: flat or nested dict of hyperparameters (nested keys are joined with ``.``).
        artifacts: files or folders logged when the engine completes (missing ones are skipped); a
            glob pattern logs every match (e.g. MONAI's ``config_*.json`` of the executed config).
        artifact_path: folder inside the run's artifacts.
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        artifacts: Sequence[str | os.PathLike] | str | None = None,
        artifact_path: str | None = None,
    ) -> None:
        self.params = dict(params or {})
        self.artifacts = [artifacts] if isinstance(artifacts, str | os.PathLike) else list(artifacts or [])
        self.artifact_path = artifact_path

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.log_artifacts, Events.COMPLETED):
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self.log_params)
        engine.add_event_handler(Events.COMPLETED, self.log_artifacts)

    @staticmethod
    def find_mlflow_handler(engine: Engine) -> Any | None:
        """The ``MLFlowHandler`` attached to ``engine`` with an open run, if any."""
        for func, *_ in engine._event_handlers.get(Events.STARTED, []):
            owner = getattr(func, "__self__", None)
            if type(owner).__name__ == "MLFlowHandler" and getattr(owner, "cur_run", None) is not None:
                return owner
        return None

    def log_params(self, engine: Engine) -> None:
        handler = self.find_mlflow_handler(engine)
        if handler is None or not self.params:
            return
        flat = {k: _param_text(v) for k, v in _flatten(self.params).items()}
        existing = handler.client.get_run(handler.cur_run.info.run_id).data.params
        fresh = {k: v for k, v in flat.items() if k not in existing}  # MLflow params are write-once (resume)
        for key, value in fresh.items():
            handler.client.log_param(handler.cur_run.info.run_id, key, value)

    def log_artifacts(self, engine: Engine) -> None:
        handler = self.find_mlflow_handler(engine)
        if handler is None:
            return
        run_id = handler.cur_run.info.run_id
        paths: list[Path] = []
        for item in self.artifacts:
            text = os.fspath(item)
            paths += [Path(p) for p in sorted(glob.glob(text))] if glob.has_magic(text) else [Path(text)]
        for path in paths:
            if path.is_file():
                handler.client.log_artifact(run_id, str(path), self.artifact_path)
            elif path.is_dir():
                handler.client.log_artifacts(run_id, str(path), self.artifact_path)
            else:
                logger.debug("artifact %s does not exist, not logged", path)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    text = str(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 500 else text[:497] + "..."


def download_evaluation(run_id: str, dst_dir: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """Fetch the ``evaluation`` artifacts (summary.json, predictions.npz...) of an MLflow run into ``dst_dir``.

    Raises:
        FileNotFoundError: when the run has no evaluation artifacts (it is a training run, or the
            evaluation ran without ``--tracking mlflow``).
    """
    import mlflow

    uri = tracking_uri or default_tracking_uri()
    client = mlflow.MlflowClient(uri)
    try:
        names = {a.path for a in client.list_artifacts(run_id)}
    except mlflow.exceptions.MlflowException as err:
        raise FileNotFoundError(
            f"no MLflow run {run_id} at {uri}: run the command where mlflow.db is, or set MLFLOW_TRACKING_URI "
            "(or --tracking-uri) to the store that holds the run"
        ) from err
    if "evaluation" not in names:
        raise FileNotFoundError(
            f"MLflow run {run_id} at {uri} has no 'evaluation' artifacts (it has {sorted(names)}); "
            "give the id of an evaluation run (evaluate.json with --tracking mlflow) or a run folder"
        )
    Path(dst_dir).mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="evaluation", dst_path=str(dst_dir), tracking_uri=uri
    )
    return Path(local)
