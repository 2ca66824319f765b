"""The MLflow model of a trained run: a pyfunc that predicts image files or arrays as the run's inference does.

Why: MLflow registers, versions and serves models it can load by itself (``mlflow.pyfunc.load_model``,
``mlflow models serve``); a run folder and a bundle are not such a model. :class:`MedmtlModel`
carries the run's files (:mod:`medmtl.tracking.model_files`; logged by :mod:`medmtl.tracking.model_logging`)
and rebuilds the rest from the run record, as inference and ``medmtl export`` do: the network by
:func:`~medmtl.deploy.run_network.load_run_network`, the preprocessing and the inferer from the
recorded bundle configuration (``validate::preprocessing``, ``validate::inferer``: what the
inference bundle runs, with each bundle's own overrides). Nothing is restated, nothing unpickled.

Input: a DataFrame (or dict / list of rows) with a ``path`` column (an image file or DICOM series
folder on the machine that predicts) or an ``image`` column (an array as medmtl reads image files,
:func:`medmtl.data.readers.load_array`: MONAI's layout, 2D ``(W, H)``, colour channels last; no
geometry, so 1 mm voxels in RAS are assumed). Output: one row per input with the columns of the
inference bundle's ``predictions.csv`` (:func:`~medmtl.metrics.task_columns.image_level_columns`; ``<task>_voxels`` for
segmentation, per class too when a task has several), and with ``params={"return_masks": True}``
each segmentation's label map on the input's grid (``<task>_mask``, MONAI's layout). Masks go back to
the input's grid as the inference bundle's ``mask_resampling`` does: by default the logits are
interpolated and then the argmax taken; ``params={"mask_resampling": "nearest"}`` copies the label map
of the network's grid by nearest neighbour instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from medmtl.data.tasks import Task, TaskKind
from medmtl.inference.writer import DEFAULT_MASK_RESAMPLING, MASK_RESAMPLING, argmax_labels
from medmtl.metrics.calibration import CalibrationRecord
from medmtl.metrics.decisions import Decisions
from medmtl.metrics.task_columns import image_level_columns
from medmtl.tracking.model_files import RUN_ARTIFACT, run_folder
from medmtl.tracking.model_logging import IMAGE_COLUMN, MASK_RESAMPLING_PARAM, PATH_COLUMN, RETURN_MASKS

__all__ = ["MedmtlModel", "ModelInputError", "RunPredictor", "model_inputs"]

logger = logging.getLogger(__name__)

_PRED = "_medmtl_pred"
_SHOWN = 10  # inputs named in one error at most


class ModelInputError(ValueError):
    """Inputs the model cannot predict: every problem, one per input, in one message."""


def _missing(value: Any) -> bool:
    """An empty DataFrame cell (None, NaN, pandas' NA): any scalar that is not a number array."""
    return value is None or np.ndim(value) == 0


def model_inputs(model_input: Any) -> list[str | np.ndarray]:
    """The images of ``model_input``: a path (str) or an array each, in order.

    Takes a DataFrame or dict with ``path`` / ``image`` columns (a row uses its path when it has one),
    a list of such rows, paths or arrays, one path, or one array.

    Raises:
        ModelInputError: a row with neither, or an input of another type (all listed).
    """
    if isinstance(model_input, str | os.PathLike):
        return [os.fspath(model_input)]
    if isinstance(model_input, np.ndarray | torch.Tensor):
        return [np.asarray(model_input)]
    if isinstance(model_input, Mapping):
        values = {k: v if isinstance(v, list | tuple) else [v] for k, v in model_input.items()}
        model_input = pd.DataFrame(values)
    if isinstance(model_input, pd.DataFrame):
        rows = model_input.to_dict("records")
    elif isinstance(model_input, list | tuple):
        rows = list(model_input)
    else:
        raise ModelInputError(
            f"model input of type {type(model_input).__name__}: give a DataFrame with a '{PATH_COLUMN}' or "
            f"'{IMAGE_COLUMN}' column, a list of paths or arrays, a path, or an array"
        )
    found: list[str | np.ndarray] = []
    problems = []
    for i, row in enumerate(rows):
        if isinstance(row, str | os.PathLike):
            found.append(os.fspath(row))
        elif isinstance(row, np.ndarray | torch.Tensor):
            found.append(np.asarray(row))
        elif isinstance(row, Mapping) and isinstance(row.get(PATH_COLUMN), str | os.PathLike):
            found.append(os.fspath(row[PATH_COLUMN]))
        elif isinstance(row, Mapping) and not _missing(row.get(IMAGE_COLUMN)):
            found.append(np.asarray(row[IMAGE_COLUMN], dtype=np.float32))
        else:
            problems.append(f"input {i}: no '{PATH_COLUMN}' and no '{IMAGE_COLUMN}' (got {type(row).__name__})")
    if problems:
        raise ModelInputError("; ".join(problems))
    return found


def _array_meta(array: np.ndarray, spatial_dims: int) -> dict[str, Any]:
    """What medmtl's reader records for a file holding ``array`` (no geometry: identity affine)."""
    colour = spatial_dims == 2 and array.ndim == 3 and array.shape[-1] in (3, 4)
    if array.ndim != spatial_dims + int(colour):
        what = "a 2D image (W x H, grey, or colour channels last)" if spatial_dims == 2 else "a 3D volume"
        raise ModelInputError(f"the model takes {what}; this array has shape {tuple(array.shape)}")
    return {"original_channel_dim": -1 if colour else "no_channel", "filename_or_obj": "array"}


@dataclasses.dataclass
class RunPredictor:
    """A run's network with its recorded preprocessing, inferer, decisions and temperatures: images in, rows out.

    Built by :meth:`from_run_dir` (what :class:`MedmtlModel` does with its files); usable without MLflow.
    """

    network: torch.nn.Module
    tasks: tuple[Task, ...]
    input_key: str
    spatial_dims: int
    preprocessing: Any
    inferer: Any
    decisions: Decisions | None = None
    calibration: CalibrationRecord | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_run_dir(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None) -> RunPredictor:
        """Rebuild from a run folder (a training's ``--output_dir``, or :func:`~medmtl.tracking.model_files.run_folder`).

        Raises:
            RunNetworkError: the network cannot be rebuilt (no record, no checkpoint, other network).
            ModelInputError: a network with several inputs per case (one image per row here).
        """
        from monai.bundle import ConfigParser

        from medmtl.deploy.run_network import load_run_network, recorded_config
        from medmtl.engines.run_config import RunRecord
        from medmtl.metrics.calibration import read_calibration

        loaded = load_run_network(run_dir)
        if len(loaded.input_keys) != 1:
            raise ModelInputError(
                f"{run_dir}: the network takes {len(loaded.input_keys)} inputs per case ({', '.join(loaded.input_keys)}); "
                "the MLflow model predicts one image per row"
            )
        # the recorded configuration, read as load_run_network reads it: preprocessing and inferer as inference runs them
        record = RunRecord(loaded.record, str(loaded.checkpoint), explicit={}, purpose="MLflow model")
        parser = ConfigParser(recorded_config(loaded.record, record.source))
        parser["run_record"] = record
        parser["output_dir"] = str(loaded.run_dir)
        preprocessing = parser.get_parsed_content("validate::preprocessing")
        inferer = parser.get_parsed_content("validate::inferer")
        spatial_dims = int(parser.get_parsed_content("spec").spatial_dims)
        choices = loaded.choices
        target = torch.device(device) if device is not None else torch.device("cpu")
        return cls(
            network=loaded.network.to(target),
            tasks=loaded.tasks,
            input_key=loaded.input_keys[0],
            spatial_dims=spatial_dims,
            preprocessing=preprocessing,
            inferer=inferer,
            decisions=Decisions.load(choices["decisions"], loaded.tasks) if "decisions" in choices else None,
            calibration=read_calibration(choices["calibration"], loaded.tasks) if "calibration" in choices else None,
            device=target,
        )

    def _preprocess(self, item: str | np.ndarray) -> dict[str, Any]:
        if isinstance(item, str):
            return self.preprocessing({self.input_key: item})
        from monai.data import MetaTensor
        from monai.transforms import Compose, LoadImaged

        meta = _array_meta(item, self.spatial_dims)
        steps = [t for t in self.preprocessing.transforms if not isinstance(t, LoadImaged)]
        image = MetaTensor(torch.as_tensor(np.asarray(item, dtype=np.float32)), meta=meta)
        return Compose(steps)({self.input_key: image})

    def _problem(self, i: int, item: str | np.ndarray, err: Exception) -> str:
        if isinstance(item, str):
            from medmtl.deploy.inputs import check_input

            reason = check_input(item, self.spatial_dims, series_folder=Path(item).is_dir())
            return f"input {i} ({item}): {reason or ' '.join(str(err).split()) or type(err).__name__}"
        return f"input {i} (array {tuple(item.shape)}): {' '.join(str(err).split()) or type(err).__name__}"

    def _to_input_grid(self, values: torch.Tensor, image: Any, nearest: bool = False) -> torch.Tensor:
        """Values of the network's grid back on the input's grid through the preprocessing's invertible steps (as inference)."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd
        from monai.utils import convert_to_tensor

        invert = Invertd(_PRED, transform=self.preprocessing, orig_keys=self.input_key, nearest_interp=nearest)
        inverted = invert({self.input_key: image, _PRED: MetaTensor(values, meta=dict(image.meta))})[_PRED]
        return convert_to_tensor(inverted, track_meta=False)  # a plain tensor (MONAI drops the metadata)

    def _segmentation_columns(
        self, task: Task, logits: torch.Tensor, image: Any, masks: bool, mask_resampling: str = DEFAULT_MASK_RESAMPLING
    ) -> dict[str, Any]:
        if mask_resampling == "nearest":  # the label map of the network's grid, copied by nearest neighbour
            labels = argmax_labels(logits).float()
            mask = self._to_input_grid(labels, image, nearest=True)[0].round().to(torch.uint8)
        else:  # the logits interpolated, then the argmax (the writer's default)
            mask = argmax_labels(self._to_input_grid(logits, image))[0]
        counts = torch.bincount(mask.reshape(-1).long(), minlength=task.num_outputs).tolist()
        row: dict[str, Any] = {f"{task.name}_voxels": int(sum(counts[1:]))}
        if task.num_outputs > 2:
            row.update({f"{task.name}_{name}_voxels": counts[k] for k, name in enumerate(task.class_names) if k})
        if masks:
            row[f"{task.name}_mask"] = mask.numpy()
        return row

    def predict(
        self,
        inputs: Sequence[str | np.ndarray],
        return_masks: bool = False,
        mask_resampling: str = DEFAULT_MASK_RESAMPLING,
    ) -> list[dict[str, Any]]:
        """One row per input (see the module docstring).

        Raises:
            ModelInputError: naming every input that could not be read or preprocessed, with the reason,
                or a ``mask_resampling`` other than ``interpolate`` / ``nearest``.
        """
        if mask_resampling not in MASK_RESAMPLING:
            raise ModelInputError(
                f"{MASK_RESAMPLING_PARAM} {mask_resampling!r}: expected one of {', '.join(MASK_RESAMPLING)}"
            )
        samples, problems = [], []
        for i, item in enumerate(inputs):
            try:
                samples.append(self._preprocess(item))
            except Exception as err:  # noqa: BLE001 - every input's reason is reported, in one error
                problems.append(self._problem(i, item, err))
        if problems:
            shown = "; ".join(problems[:_SHOWN]) + (
                f"; {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
            )
            raise ModelInputError(f"{len(problems)} of {len(inputs)} input(s) cannot be predicted: {shown}")
        rows = []
        self.network.eval()
        for sample in samples:
            image = sample[self.input_key]
            with torch.no_grad():
                batch = (image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image))[None]
                outputs = self.inferer(batch.to(self.device), self.network)
            row: dict[str, Any] = {}
            for task in self.tasks:
                logits = torch.as_tensor(outputs[task.name])[0].detach().float().cpu()
                if task.kind == TaskKind.SEGMENTATION:
                    row.update(self._segmentation_columns(task, logits, image, return_masks, mask_resampling))
                else:
                    row.update(image_level_columns(task, logits, self.decisions, self.calibration))
            rows.append(row)
        return rows


class MedmtlModel(PythonModel):
    """The pyfunc of a medmtl run (see the module docstring); its ``run`` artifact holds the run's files."""

    def load_context(self, context: Any) -> None:
        files = Path(context.artifacts[RUN_ARTIFACT])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with tempfile.TemporaryDirectory(prefix="medmtl_model_run_") as tmp:  # only while the network loads
            self.predictor = RunPredictor.from_run_dir(run_folder(files, Path(tmp) / "run", link_weights=True), device)

    # a DataFrame hint: what MLflow passes after checking the signature (other hints make it infer one)
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        rows = self.predictor.predict(
            model_inputs(model_input),
            bool(params.get(RETURN_MASKS, False)),
            str(params.get(MASK_RESAMPLING_PARAM) or DEFAULT_MASK_RESAMPLING),
        )
        return pd.DataFrame(rows)
