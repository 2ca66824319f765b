"""Which MLflow store a run tracks in: MLflow with nothing to set up.

Embedded default: the URI in ``MLFLOW_TRACKING_URI`` when set (a team's ``mlflow server``), else a
local SQLite store ``sqlite:///<cwd>/mlflow.db`` (MLflow 3 refuses plain folders / ``file://``).
With :class:`medmtl.tracking.TrackingGuard` in its handlers, a server outage never stops a run;
:func:`usable_tracking_uri` covers the start, before any handler exists: a store that cannot be
opened then (a SQLite file locked by another process, an unreachable database) is replaced by the
offline store with one warning, instead of ending the run before its first epoch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from monai.utils import path_to_sqlite_uri

from medmtl.tracking.guard import FALLBACK_DB, _is_outage, _short

__all__ = ["default_tracking_uri", "usable_tracking_uri", "download_evaluation"]

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
    later is only a warning (:class:`~medmtl.tracking.TrackingGuard`). Bundles resolve their
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
