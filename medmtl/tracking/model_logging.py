"""A training's best model logged as an MLflow model into its run, and registered under a name with an alias.

Why: metrics and ``best.pt`` in a run cannot be registered, loaded with ``mlflow.pyfunc`` or served.
:class:`RunModelHandler` (in ``train.json``) logs, when the training completes, the pyfunc of
:mod:`medmtl.deploy.mlflow_model` with the run's files (:mod:`medmtl.tracking.model_files`), a
signature and an input example; with ``register_as`` it registers it and points an alias at the new
version (``--register_as NAME``, then ``mlflow.pyfunc.load_model("models:/NAME@champion")``).
:func:`log_run_model` does the same for a finished run (e.g. after its decisions were chosen).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from medmtl.tracking.artifacts import RUN_FILE, read_run_file
from medmtl.tracking.model_files import RUN_ARTIFACT, mlflow_settings, stage_model_files

__all__ = [
    "DEFAULT_ALIAS",
    "IMAGE_COLUMN",
    "MODEL_NAME",
    "PATH_COLUMN",
    "RETURN_MASKS",
    "MASK_RESAMPLING_PARAM",
    "RunModelHandler",
    "log_run_model",
    "model_signature",
    "pip_requirements",
]

logger = logging.getLogger(__name__)

#: name of the model in its run (``runs:/RUN_ID/model``).
MODEL_NAME = "model"
#: alias given to a registered version unless another is asked for.
DEFAULT_ALIAS = "champion"
#: what the model's environment needs, pinned to this environment's versions.
_REQUIREMENTS = ("medmtl", "torch", "monai", "pytorch-ignite", "mlflow")
#: the model's input columns (a path on the predicting machine, or an array) and its one parameter.
PATH_COLUMN = "path"
IMAGE_COLUMN = "image"
RETURN_MASKS = "return_masks"
MASK_RESAMPLING_PARAM = "mask_resampling"
# the file MLflow runs to load the model (medmtl.deploy, above this package: named by path, never imported here)
_CODE = Path(__file__).resolve().parents[1] / "deploy" / "mlflow_model_code.py"


def model_signature() -> Any:
    """Inputs: optional ``path`` (string) and ``image`` (any array) columns; params: ``return_masks``, ``mask_resampling``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    from medmtl.inference.writer import DEFAULT_MASK_RESAMPLING  # the writer owns the modes and their default

    inputs = Schema([ColSpec("string", PATH_COLUMN, required=False), ColSpec(AnyType(), IMAGE_COLUMN, required=False)])
    params = ParamSchema(
        [ParamSpec(RETURN_MASKS, "boolean", False), ParamSpec(MASK_RESAMPLING_PARAM, "string", DEFAULT_MASK_RESAMPLING)]
    )
    return ModelSignature(inputs=inputs, params=params)


def pip_requirements(names: Sequence[str] = _REQUIREMENTS) -> list[str]:
    """``name==version`` of each installed package (local labels such as ``+cpu`` dropped: not on PyPI).

    Given to MLflow so that it does not load the model to infer them.
    """
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name}=={version(name).split('+')[0]}")
    return found


def log_run_model(
    run_dir: str | os.PathLike,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    register_as: str | None = None,
    alias: str = DEFAULT_ALIAS,
    input_example: str | os.PathLike | None = None,
    name: str = MODEL_NAME,
) -> Any:
    """Log the best model of ``run_dir`` as an MLflow pyfunc into the run ``run_id`` (and register it).

    Args:
        run_dir: the training's ``--output_dir``.
        run_id: the MLflow run (default: the one the training wrote into ``RUN/mlflow_run.json``).
        tracking_uri: the store (default ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        register_as: register the model under this name and point ``alias`` at the new version.
        alias: the alias (``models:/NAME@ALIAS``).
        input_example: an image file of the run's data, saved as the model's input example (its path
            only) and predicted once while logging (MLflow checks the model serves it).
        name: the model's name in its run.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri``, ``registered_model_version``, ...).
    """
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    from medmtl.tracking.store import default_tracking_uri

    run_dir = Path(run_dir)
    run_id = run_id or read_run_file(run_dir / RUN_FILE)
    uri = tracking_uri or default_tracking_uri()
    example = pd.DataFrame({PATH_COLUMN: [os.fspath(input_example)]}) if input_example else None
    client = mlflow.MlflowClient(uri)
    with tempfile.TemporaryDirectory(prefix="medmtl_model_files_") as tmp, mlflow_settings(uri):
        files = stage_model_files(run_dir, Path(tmp) / RUN_ARTIFACT)
        model_id = None
        if run_id:  # in the run's experiment (Model.log alone puts it in the active one) with its parameters
            run = client.get_run(run_id)
            params = dict(run.data.params)
            model = client.create_logged_model(run.info.experiment_id, name, source_run_id=run_id, params=params)
            model_id = model.model_id
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(_CODE),
            artifacts={RUN_ARTIFACT: str(files)},
            signature=model_signature(),
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=register_as,
            model_id=model_id,
        )
    if register_as:
        client.set_registered_model_alias(register_as, alias, str(info.registered_model_version))
        logger.info(
            "registered %s as models:/%s@%s (version %s)", run_dir, register_as, alias, info.registered_model_version
        )
    logger.info("logged the best model of %s as MLflow model %s", run_dir, info.model_uri)
    return info


class RunModelHandler:
    """Trainer handler: when the training completes, its best model becomes an MLflow model of its run.

    Listed in ``train::handlers`` after the checkpoint handler and connected by
    :func:`~medmtl.tracking.connect_tracking` to the ``MLFlowHandler`` of that list, like
    :class:`~medmtl.tracking.RunArtifactsHandler`; not connected (no ``--tracking mlflow``) it does
    nothing. A model that cannot be logged (a store that went away) is a warning naming the call that
    logs it later: the training and its checkpoints are complete.

    Args:
        run_dir: the training's ``--output_dir`` (its ``models/best.pt`` is final when the trainer completes).
        register_as: registered model name (bundle key ``register_as``); ``None``: not registered.
        alias: alias of the registered version (bundle key ``register_alias``).
        input_example: image files of the run's data; the first is the model's input example.
        enabled: ``False`` logs nothing (bundle key ``log_mlflow_model``).
        input_keys: the network's inputs (``@input_keys``); the model takes one image per row, so a
            network with several inputs per case (the knee's three planes) is not logged (said in the log).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        register_as: str | None = None,
        alias: str = DEFAULT_ALIAS,
        input_example: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
        enabled: bool = True,
        input_keys: Sequence[str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.input_keys = list(input_keys or [])
        self.register_as = register_as or None
        self.alias = alias
        examples = [input_example] if isinstance(input_example, str | os.PathLike) else list(input_example or [])
        self.input_example = next((e for e in examples if isinstance(e, str | os.PathLike)), None)
        self.enabled = enabled
        self.mlflow_handlers: list[Any] = []
        self.model_info: Any = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.log_model, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.log_model)

    def connect(self, mlflow_handlers: Iterable[Any]) -> None:
        """Log into the run of these ``MLFlowHandler`` objects (those of this handler's engine); idempotent."""
        for handler in mlflow_handlers:
            if not any(handler is known for known in self.mlflow_handlers):
                self.mlflow_handlers.append(handler)

    def log_model(self, engine: Engine | None = None) -> None:
        handler = next((h for h in self.mlflow_handlers if getattr(h, "cur_run", None) is not None), None)
        if handler is None or not self.enabled:
            return
        if len(self.input_keys) > 1:
            logger.info(
                "no MLflow model logged: the network takes %d images per case (%s); the model takes one",
                len(self.input_keys),
                ", ".join(self.input_keys),
            )
            return
        run_id = handler.cur_run.info.run_id
        with contextlib.suppress(Exception):  # through TrackingGuard: the server's id of a run it created late
            run_id = handler.client.get_run(run_id).info.run_id
        uri = str(getattr(handler.client, "tracking_uri", "") or "") or None
        try:
            self.model_info = log_run_model(
                self.run_dir, run_id, uri, self.register_as, self.alias, input_example=self.input_example
            )
        except Exception as error:  # noqa: BLE001 - a finished training is not failed by its model's logging
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            register = f", register_as={self.register_as!r}, alias={self.alias!r}" if self.register_as else ""
            logger.warning(
                "the best model of %s was not logged as an MLflow model (%s); log it later with "
                "medmtl.tracking.log_run_model(%r, run_id=%r, tracking_uri=%r%s)",
                self.run_dir,
                first,
                str(self.run_dir),
                run_id,
                uri,
                register,
            )
