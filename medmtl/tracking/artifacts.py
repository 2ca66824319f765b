"""Hyperparameters and files a reviewer of a run needs, added to the run MONAI's ``MLFlowHandler`` opened."""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from medmtl.atomic_io import atomic_write

__all__ = ["RUN_FILE", "TRAINING_RUN_TAG", "RunArtifactsHandler", "read_run_file"]

#: the training's MLflow run id, written into its run folder.
RUN_FILE = "mlflow_run.json"
#: tag of evaluation / inference runs naming the training run whose weights they used.
TRAINING_RUN_TAG = "medmtl.training_run_id"

logger = logging.getLogger(__name__)


class RunArtifactsHandler:
    """Adds hyperparameters and files (spec, splits, best model, report) to the MLflow run of an engine.

    MONAI's ``MLFlowHandler`` (added by ``--tracking mlflow``) logs metrics; this handler logs what a
    reviewer of the run also needs, into the run of the ``MLFlowHandler`` of its own handler list.
    :func:`~medmtl.tracking.connect_tracking`, called in the bundle's ``run`` section, hands that
    handler over (:meth:`connect`). Not connected (no MLflow tracking) it does nothing, so bundles
    can always list it.

    Args:
        params: flat or nested dict of hyperparameters (nested keys are joined with ``.``).
        artifacts: files or folders logged when the engine completes (missing ones are skipped); a
            glob pattern logs every match (e.g. MONAI's ``config_*.json`` of the executed config).
        artifact_path: folder inside the run's artifacts.
        tags: run tags, e.g. ``{"mlflow.parentRunId": ID}`` (``medmtl cv`` nests its folds' runs
            under one parent run this way: MONAI's handler takes no tags).
        run_file: training: write the run's id here (``RUN/mlflow_run.json``) so that later
            evaluations and inferences of the run can name it.
        source_run_file: evaluation / inference: the ``run_file`` of the training whose weights
            are used; its run id becomes the tag ``medmtl.training_run_id`` (and the evaluation is
            found from the training run in the MLflow UI).
        dataset: ``{"name", "source", "cases", "context"}``: the cases the run used (datalist dicts),
            logged as an MLflow dataset input with a digest of the file contents
            (:func:`medmtl.tracking.dataset.log_dataset`); ``None``: not logged.
        end_run: finish the run when the engine completes (MONAI leaves an evaluation's run, opened
            by its validator settings, RUNNING with no end time).
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        artifacts: Sequence[str | os.PathLike] | str | None = None,
        artifact_path: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_file: str | os.PathLike | None = None,
        source_run_file: str | os.PathLike | None = None,
        dataset: Mapping[str, Any] | None = None,
        end_run: bool = False,
    ) -> None:
        self.params = dict(params or {})
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.artifacts = [artifacts] if isinstance(artifacts, str | os.PathLike) else list(artifacts or [])
        self.artifact_path = artifact_path
        self.run_file = Path(run_file) if run_file else None
        self.source_run_file = Path(source_run_file) if source_run_file else None
        self.dataset = dict(dataset) if dataset else None
        self.end_run = end_run
        self.mlflow_handlers: list[Any] = []

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.log_artifacts, Events.COMPLETED):
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self.log_params)
        engine.add_event_handler(Events.COMPLETED, self.log_artifacts)

    def connect(self, mlflow_handlers: Iterable[Any]) -> None:
        """Log into the run of these ``MLFlowHandler`` objects (those of this handler's engine); idempotent."""
        for handler in mlflow_handlers:
            if not any(handler is known for known in self.mlflow_handlers):
                self.mlflow_handlers.append(handler)

    @property
    def mlflow_handler(self) -> Any | None:
        """The first connected ``MLFlowHandler`` with an open run, if any."""
        return next((h for h in self.mlflow_handlers if getattr(h, "cur_run", None) is not None), None)

    def log_params(self, engine: Engine) -> None:
        handler = self.mlflow_handler
        if handler is None:
            return
        run = handler.cur_run.info
        if self.run_file is not None:
            atomic_write(self.run_file, json.dumps({"run_id": run.run_id, "experiment_id": run.experiment_id}) + "\n")
        tags = dict(self.tags)
        training = read_run_file(self.source_run_file) if self.source_run_file is not None else None
        if training is not None:
            tags[TRAINING_RUN_TAG] = training
        for key, value in tags.items():
            handler.client.set_tag(run.run_id, key, value)
        if self.dataset is not None:
            from medmtl.tracking.dataset import log_dataset

            log_dataset(handler.client, run.run_id, **self.dataset)
            self.dataset = None  # once per run, also when an evaluation engine runs again
        if not self.params:
            return
        flat = {k: _param_text(v) for k, v in _flatten(self.params).items()}
        existing = handler.client.get_run(handler.cur_run.info.run_id).data.params
        fresh = {k: v for k, v in flat.items() if k not in existing}  # MLflow params are write-once (resume)
        for key, value in fresh.items():
            handler.client.log_param(handler.cur_run.info.run_id, key, value)

    def log_artifacts(self, engine: Engine) -> None:
        handler = self.mlflow_handler
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
        if self.end_run:
            handler.client.set_terminated(run_id)


def read_run_file(path: str | os.PathLike) -> str | None:
    """The MLflow run id a training wrote with ``run_file`` (``None``: untracked or unreadable, said in the log)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        run_id = json.loads(path.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError) as err:
        logger.warning("%s is not readable (%s): the training run is not tagged", path, err)
        return None
    return run_id if isinstance(run_id, str) and run_id.isalnum() else None


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
