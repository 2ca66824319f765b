"""The files an MLflow model of a run carries, and the run folder they become again.

Why: a run folder holds a record with absolute paths of the machine it trained on (its data spec),
checkpoints with optimizer-free but record-carrying weights, evaluations and caches. An MLflow model
must travel: it carries only what the network needs (:func:`stage_model_files`) and, wherever it
is loaded or downloaded, becomes a run folder again (:func:`run_folder`) whose record names the
spec copy next to it, so :func:`~medmtl.deploy.run_network.load_run_network`, the bundles'
inference and ``medmtl predict`` read it as they read any run. Layout (the ``run`` artifact)::

    run_config.json        the run record (the checkpoint's own copy, else the run's file)
    models/best.pt         the weights: {"network": state dict, "epoch": ...}, without the record
    spec/<spec>.yaml       the data spec the run trained with (tasks, input, preprocessing)
    decisions.json         thresholds / prior corrections, when the run has them
    calibration.json       temperatures, when the run has them
    MODEL_CARD.md          the model card, when the run was evaluated
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "CHOICE_FILES",
    "MODEL_URI_PREFIXES",
    "ModelFilesError",
    "download_model_folder",
    "is_model_uri",
    "mlflow_settings",
    "run_folder",
    "stage_model_files",
    "write_run_folder",
]

#: the weights inside the model's files and inside a run folder.
WEIGHTS = Path("models") / "best.pt"
#: folder of the data spec copy.
SPEC_FOLDER = "spec"
#: files of the run's choices, carried when present (the model card also from ``eval/``).
CHOICE_FILES = ("decisions.json", "calibration.json", "MODEL_CARD.md")
#: MLflow model URIs ``medmtl predict`` takes besides folders.
MODEL_URI_PREFIXES = ("models:/", "runs:/")
#: the key of the model's files among the pyfunc's artifacts.
RUN_ARTIFACT = "run"
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class ModelFilesError(ValueError):
    """A run or an MLflow model whose files cannot be used; the message names it and the fix."""


def _record(run_dir: Path, checkpoint: Path) -> dict[str, Any]:
    from medmtl.engines.run_config import RunRecord

    record = RunRecord.for_checkpoint(checkpoint, run_dir, argv=[]).record  # the checkpoint's copy first
    if record is None:
        raise ModelFilesError(
            f"{run_dir}: no record of the run's configuration (run_config.json, or a copy inside {checkpoint.name}); "
            "an MLflow model needs it to rebuild the network: train the run again with this medmtl"
        )
    return record


def stage_model_files(run_dir: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the files the MLflow model of ``run_dir`` carries into the new folder ``dst`` (layout above).

    Raises:
        ModelFilesError: no ``models/best.pt``, no run record, or the recorded data spec is missing.
    """
    import torch

    from medmtl.engines.checkpoint_io import RUN_CONFIG_KEY

    run_dir, dst = Path(run_dir), Path(dst)
    checkpoint = run_dir / WEIGHTS
    if not checkpoint.is_file():
        raise ModelFilesError(f"{run_dir}: no {WEIGHTS}; give the --output_dir of a finished training run")
    record = _record(run_dir, checkpoint)
    spec = Path(str(record["settings"]["data"].get("data_spec") or ""))
    if not spec.is_file():
        raise ModelFilesError(
            f"{run_dir}: the data spec the run trained with ({spec or 'not recorded'}) is not on this machine; "
            "run this where the training ran (the model carries a copy of the spec)"
        )
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get("network"), dict):
        raise ModelFilesError(f"{checkpoint}: holds no 'network' state dict; give a checkpoint written by medmtl")
    (dst / WEIGHTS).parent.mkdir(parents=True)
    torch.save({k: v for k, v in state.items() if k != RUN_CONFIG_KEY}, dst / WEIGHTS)  # the record is beside it
    (dst / "run_config.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (dst / SPEC_FOLDER).mkdir()
    shutil.copy2(spec, dst / SPEC_FOLDER / spec.name)
    for name in CHOICE_FILES:
        found = next((p for p in (run_dir / name, run_dir / "eval" / name) if p.is_file()), None)
        if found is not None:
            shutil.copy2(found, dst / name)
    return dst


def _spec_file(files: Path) -> Path:
    specs = sorted((files / SPEC_FOLDER).glob("*")) if (files / SPEC_FOLDER).is_dir() else []
    if len(specs) != 1 or not (files / "run_config.json").is_file() or not (files / WEIGHTS).is_file():
        raise ModelFilesError(
            f"{files}: not the files of a medmtl MLflow model (expected run_config.json, {WEIGHTS} and one "
            f"{SPEC_FOLDER}/<spec>.yaml); log the model with medmtl.tracking.log_run_model"
        )
    return specs[0]


def run_folder(files: str | os.PathLike, dst: str | os.PathLike, link_weights: bool = False) -> Path:
    """A run folder in ``dst`` (new or empty) from the model's ``files``: its record names the spec copy in ``dst``.

    Args:
        files: the model's ``run`` artifact folder (:func:`stage_model_files`).
        dst: where the run folder goes.
        link_weights: link ``models/best.pt`` to the model's copy instead of copying it (a folder that
            only lives while the model loads); falls back to a copy where links are not allowed.

    Raises:
        ModelFilesError: ``files`` is not a model's files, or ``dst`` is not empty.
    """
    from medmtl.engines.run_config import read_run_config_file

    files = Path(files)
    spec = _spec_file(files)
    _require_empty(Path(dst))  # before the record is read: the folder given is the first thing to fix
    weights = (files / WEIGHTS).resolve()

    def place_weights(target: Path) -> None:
        try:
            if not link_weights:
                raise OSError("copy asked")
            os.symlink(weights, target)
        except OSError:
            shutil.copy2(weights, target)

    choices = {name: (files / name).read_bytes() for name in CHOICE_FILES if (files / name).is_file()}
    record = read_run_config_file(files / "run_config.json")
    return write_run_folder(dst, record, spec.name, spec.read_bytes(), place_weights, choices)


def _require_empty(dst: Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ModelFilesError(f"{dst} exists and is not an empty folder: give a new folder for the model's run")


def write_run_folder(
    dst: str | os.PathLike,
    record: dict[str, Any],
    spec_name: str,
    spec_text: bytes,
    write_weights: Callable[[Path], None],
    files: Mapping[str, bytes] = MappingProxyType({}),
) -> Path:
    """A run folder in ``dst`` (new or empty) that the bundles read as any training run.

    Why one writer: an MLflow model (:func:`run_folder`) and an exported file (its description,
    :mod:`medmtl.deploy.exported_run`) both carry a run record and the spec it trained with, and
    become a run folder the same way: the spec copy in ``spec/``, the record naming it, the weights
    in ``models/best.pt``, the run's choice files beside them.

    Args:
        dst: where the run folder goes.
        record: the run record (its ``data_spec`` is replaced by the spec copy's path).
        spec_name: the spec's file name (no folders).
        spec_text: the spec's content.
        write_weights: writes ``models/best.pt`` at the path it is given.
        files: further files of the run by name (``decisions.json`` ...; plain names, no folders).

    Raises:
        ModelFilesError: ``dst`` is not empty, or a name is not a plain file name.
    """
    dst = Path(dst)
    names = [spec_name, *files]
    if any(Path(name).name != name or name in ("", ".", "..") for name in names):
        raise ModelFilesError(f"the model's files are named {names}: expected plain file names, no folders")
    _require_empty(dst)
    (dst / WEIGHTS).parent.mkdir(parents=True)
    (dst / SPEC_FOLDER).mkdir()
    local_spec = dst / SPEC_FOLDER / spec_name
    local_spec.write_bytes(spec_text)
    record = json.loads(json.dumps(record))  # the caller's record stays as it is
    record["settings"]["data"]["data_spec"] = str(local_spec.resolve())
    (dst / "run_config.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    write_weights(dst / WEIGHTS)
    for name, content in files.items():
        (dst / name).write_bytes(content)
    return dst


@contextlib.contextmanager
def mlflow_settings(uri: str) -> Iterator[None]:
    """MLflow's fluent tracking (and registry) URI set to ``uri``, which MLflow's model functions read, and no
    progress bars (the artifact copies would draw them into a training's log); both restored after."""
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    previous = mlflow.get_tracking_uri() if is_tracking_uri_set() else None  # None: unset again after
    bar = os.environ.get(_PROGRESS_BAR)
    mlflow.set_tracking_uri(uri)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if bar is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = bar


def is_model_uri(model: str | os.PathLike) -> bool:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/model``: an MLflow model, not a folder."""
    return isinstance(model, str) and model.startswith(MODEL_URI_PREFIXES)


def download_model_folder(uri: str, dst: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """The MLflow model ``uri`` as a run folder in ``dst`` that ``medmtl predict`` and the bundles read.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/model``.
        dst: a new or empty folder.
        tracking_uri: the store holding the model (default ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``).

    Raises:
        ModelFilesError: ``uri`` cannot be found there, or is not a medmtl model.

    Example::

        with tempfile.TemporaryDirectory() as tmp:
            run = download_model_folder("models:/demo@champion", tmp)   # run_config.json, models/best.pt, ...
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from medmtl.tracking.store import default_tracking_uri

    store = tracking_uri or default_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="medmtl_mlflow_model_") as tmp, mlflow_settings(store):
        try:
            local = mlflow.artifacts.download_artifacts(uri, dst_path=tmp, tracking_uri=store, registry_uri=store)
        except (MlflowException, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelFilesError(
                f"MLflow model {uri} cannot be downloaded from {store} ({first}): check the name and alias "
                "(or run id), and set MLFLOW_TRACKING_URI to the store that holds it"
            ) from None
        try:
            artifacts = Model.load(local).flavors.get("python_function", {}).get("artifacts", {})
        except (MlflowException, OSError):
            artifacts = {}
        relative = artifacts.get(RUN_ARTIFACT, {}).get("path")
        if not relative:
            raise ModelFilesError(
                f"MLflow model {uri} is not a medmtl model (no '{RUN_ARTIFACT}' artifact in its MLmodel); "
                "give a model logged by a medmtl training (or medmtl.tracking.log_run_model)"
            )
        return run_folder(Path(local) / relative, dst)
