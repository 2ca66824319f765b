"""``medmtl predict -i INPUT -o OUT -m MODEL``: new images through a trained model, no spec and no labels.

Why: inference through a bundle needs a dataset laid out as the training data; a folder of new
radiographs or volumes from the scanner has no such layout and no labels. ``predict`` finds the
images, checks each (:mod:`medmtl.deploy.inputs`), and runs the bundle's own inference workflow on
them (``--infer_files``), so the preprocessing, network, fold ensemble, decisions, temperatures and
postprocessing are exactly those the run recorded: one source of truth, nothing restated here.

MODEL is a training run folder (``run_config.json``, ``models/best.pt``) or a ``medmtl cv`` folder
(its fold ensemble with the out-of-fold choices). Outputs in OUT: masks in each input's own geometry
(NIfTI for volumes, PNG for 2D), ``predictions.csv``, ``inputs.json`` (what was predicted) and
``failed.csv`` (what was not, with the reason).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmtl.deploy.inputs import (
    FAILED_FILE,
    INPUTS_FILE,
    InputCase,
    check_input,
    find_inputs,
    write_failed,
    write_input_list,
)

__all__ = ["PredictError", "PredictResult", "TrainedModel", "predict", "resolve_model"]

logger = logging.getLogger(__name__)

#: what a previous prediction leaves in OUT: refused without ``overwrite``.
_OUTPUT_FILES = ("predictions.csv", INPUTS_FILE, FAILED_FILE)


class PredictError(ValueError):
    """A model, input or output folder ``medmtl predict`` cannot use; the message names it and the fix."""


@dataclass(frozen=True)
class TrainedModel:
    """A model folder as ``predict`` uses it.

    Args:
        folder: the training run or cross-validation folder given.
        bundle: the bundle it was trained with (from its record).
        record: the run record (``run_config.json``; fold 0's for a cross-validation).
    """

    folder: Path
    bundle: str
    record: Mapping[str, Any]

    @property
    def data_spec(self) -> str | None:
        return self.record.get("settings", {}).get("data", {}).get("data_spec")


@dataclass
class PredictResult:
    """What a prediction wrote: the cases predicted, the inputs that failed, the output folder."""

    output_dir: Path
    predicted: list[InputCase] = field(default_factory=list)
    failed: list[tuple[InputCase, str]] = field(default_factory=list)


def resolve_model(model: str | os.PathLike) -> TrainedModel:
    """The training run or cross-validation in ``model``, with its recorded bundle and configuration.

    Raises:
        PredictError: not a folder, or a folder without a run record (named, with how to get one).
    """
    from medmtl.engines.run_config import RUN_CONFIG_FILE, read_run_config_file
    from medmtl.experiments.cross_validation import fold_dir, is_cv_run

    folder = Path(model)
    if not folder.is_dir():
        raise PredictError(f"model {folder} is not a folder: give the --output_dir of a training run or of medmtl cv")
    record_dir = fold_dir(folder, 0) if is_cv_run(folder) else folder
    path = record_dir / RUN_CONFIG_FILE
    if not path.is_file():
        raise PredictError(
            f"model {folder} has no {RUN_CONFIG_FILE}: it is not a training run folder (or was trained before runs "
            "recorded their configuration); give the --output_dir of a training run or of medmtl cv, or train again"
        )
    record = read_run_config_file(path)
    bundle = record.get("bundle")
    if not isinstance(bundle, str) or not bundle:
        raise PredictError(f"{path} names no bundle; it was not written by a medmtl training")
    return TrainedModel(folder, bundle, record)


def _spec_of(model: TrainedModel, data_spec: str | None) -> Any:
    """The data spec the model was trained with (its tasks, input and preprocessing), no dataset needed."""
    from medmtl.data.spec import load_spec

    path = data_spec or model.data_spec
    if not path or not Path(path).is_file():
        raise PredictError(
            f"the data spec of {model.folder} ({path or 'not recorded'}) is not on this machine: give the spec it "
            "was trained with as --data_spec FILE (its tasks are checked against the run's)"
        )
    overrides = model.record.get("settings", {}).get("data", {}).get("spec_overrides") or {}
    return load_spec(path, **overrides)


def _check_output(out: Path, overwrite: bool) -> None:
    found = [name for name in _OUTPUT_FILES if (out / name).exists()]
    if found and not overwrite:
        raise PredictError(
            f"{out} already holds a prediction ({', '.join(found)}): give another -o folder, or --overwrite to "
            "replace it"
        )


def _run_medmtl(argv: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "medmtl.cli", *argv])


def predict(
    inputs: str | os.PathLike,
    output_dir: str | os.PathLike,
    model: str | os.PathLike,
    *,
    device: str | None = None,
    overwrite: bool = False,
    data_spec: str | None = None,
    overrides: Sequence[str] = (),
    runner: Callable[[list[str]], int] | None = None,
) -> PredictResult:
    """Predict every image of ``inputs`` with ``model`` into ``output_dir``.

    Args:
        inputs: an image file or a folder of images (searched recursively).
        output_dir: where masks, ``predictions.csv``, ``inputs.json`` and ``failed.csv`` go.
        model: a training run or ``medmtl cv`` folder.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: the bundle's, a GPU when there is one).
        overwrite: replace an earlier prediction in ``output_dir`` (refused otherwise).
        data_spec: the spec the model was trained with, when its recorded path is not on this machine.
        overrides: further bundle overrides (e.g. ``--tta_axes "[0]"``).
        runner: runs one ``medmtl`` argv and returns its exit status (default: a subprocess).

    Raises:
        PredictError: an unusable model, input or output folder; every input failing its check;
            the bundle's inference failing.
    """
    trained = resolve_model(model)
    spec = _spec_of(trained, data_spec)
    keys = list(spec.inputs)
    if len(keys) != 1:
        raise PredictError(
            f"the model's spec '{spec.name}' takes {len(keys)} inputs per case ({', '.join(keys)}); predict takes one "
            f"image per case: use medmtl run {trained.bundle} inference with a data spec for such data"
        )
    try:
        found = find_inputs(inputs)
    except (FileNotFoundError, ValueError) as err:
        raise PredictError(str(err)) from None
    out = Path(output_dir)
    _check_output(out, overwrite)
    result = PredictResult(out)
    for case in found:
        reason = check_input(case.path, spec.spatial_dims)
        if reason is None:
            result.predicted.append(case)
        else:
            logger.warning("%s: not predicted: %s", case.path, reason)
            result.failed.append((case, reason))
    out.mkdir(parents=True, exist_ok=True)
    if result.failed:
        write_failed(result.failed, out / FAILED_FILE)
    elif (out / FAILED_FILE).exists():
        (out / FAILED_FILE).unlink()  # from the prediction being overwritten
    if not result.predicted:
        raise PredictError(f"none of the {len(found)} inputs can be predicted: see {out / FAILED_FILE}")
    listed = write_input_list(result.predicted, keys[0], out / INPUTS_FILE)
    argv = ["run", trained.bundle, "inference", "--output_dir", str(trained.folder), "--infer_dir", str(out)]
    argv += ["--infer_files", str(listed), "--validate_data", "False"]
    if data_spec:
        argv += ["--data_spec", str(data_spec)]
    if device:
        argv += ["--device", f"$torch.device('{device}')"]
    logger.info("predicting %d input(s) with %s into %s", len(result.predicted), trained.folder, out)
    status = (runner or _run_medmtl)([*argv, *overrides])
    if status != 0:
        raise PredictError(f"the inference of {trained.bundle} failed (exit status {status}; its log is above)")
    return result
