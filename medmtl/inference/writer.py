"""Writing multi-task predictions: one mask file per segmentation task and case, one CSV for the rest.

Users want files they can open next to the input: masks in the input's geometry (NIfTI for
volumes, PNG for 2D images, written by MONAI's ``SaveImage`` from the image's metadata) and a table
of per-case probabilities and predicted classes that opens in a spreadsheet. Case ids are the data
spec's ids, never anything read from DICOM headers.

File names: a case's files are named after its id escaped by
:func:`medmtl.inference.case_files.case_file_stem` (``sub.01`` -> ``sub%2E01.nii.gz``, ``a/b`` ->
``a%2Fb.png``; names over 120 characters cut and ending in a hash), one name per id that never leaves
the output folder and never takes another case's file, from this run or an earlier one into the same
folder. ``predictions.csv`` keeps the mapping: its ``case_id`` column holds the id, its ``<task>_file``
columns the file's path relative to the CSV's folder. Every cell is spreadsheet-safe
(:func:`medmtl.csv_safety.csv_text`: an id such as ``=SUM(1,1)`` is written ``'=SUM(1,1)``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.transforms import Invertd, InvertibleTransform, SaveImage

from medmtl.atomic_io import atomic_write
from medmtl.csv_safety import csv_text
from medmtl.data.dicom import is_dicom_file
from medmtl.data.task_keys import SPREAD_KEYS, pred_key
from medmtl.data.tasks import Task, TaskKind, as_tasks
from medmtl.inference.case_files import CaseFileNames
from medmtl.inference.dicom_failures import DICOM_FAILED_FILE, DicomFailure, write_dicom_failures
from medmtl.inference.dicom_seg import has_highdicom, write_dicom_seg
from medmtl.inference.dicom_sr import SegmentFinding, image_level_finding, write_dicom_sr
from medmtl.metrics.calibration import CalibrationRecord, read_calibration
from medmtl.metrics.decisions import Decisions
from medmtl.metrics.postprocessing import Postprocessing, as_postprocessing
from medmtl.metrics.task_columns import image_level_columns, output_names

__all__ = ["DEFAULT_MASK_RESAMPLING", "MASK_RESAMPLING", "MultiTaskPredictionWriter", "argmax_labels"]

logger = logging.getLogger(__name__)
_PRED = "_medmtl_pred"
_SR_FOLDER = "dicom_sr"  # the SR files' folder and the table's column
_PNG_COMPRESS_LEVEL = 1  # zlib level of PNG masks and maps (PIL's default 6 only makes smaller files)
MASK_RESAMPLING = ("interpolate", "nearest")
"""How segmentation outputs are mapped back to the input grid (``MultiTaskPredictionWriter(mask_resampling=...)``)."""
DEFAULT_MASK_RESAMPLING = MASK_RESAMPLING[0]
"""The writer's, ``predict``'s and the MLflow model's default: exact interpolation of every class channel."""


class MultiTaskPredictionWriter:
    """Evaluator handler writing ``<output_dir>/<task>/<case>.<ext>`` masks and ``predictions.csv``.

    Expects flat per-sample outputs (attach :class:`medmtl.engines.FlattenTaskOutputsd` first).
    ``<case>`` is the case id as a safe file name (see the module docstring); the table's
    ``<task>_file`` columns give each file's path relative to ``output_dir``.

    Args:
        tasks: the tasks.
        output_dir: where to write.
        image_key: output key of the input image (its metadata gives geometry and file name).
        mask_ext: ``.nii.gz``, ``.png``... ; ``None`` picks ``.png`` for 2D inputs, ``.nii.gz`` otherwise.
        threshold: decision threshold for binary / multilabel tasks.
        resample: let ``SaveImage`` resample masks to the input file's affine (only for chains
            that change the affine without recording it; prefer ``invert_transform``).
        invert_transform: the preprocessing ``Compose`` the inputs went through. Segmentation logits
            are mapped back through its invertible steps (MONAI ``Invertd``: resize, pad/crop,
            spacing, orientation), interpolated as logits before the argmax, so masks come out on the
            input file's grid with its affine. All tasks' channels (and the ``maps``) go through one
            inversion per case: one resampling grid, the costly part, instead of one per task.
        dicom_seg: also write each segmentation mask of a case read from DICOM (a series folder or a
            DICOM file, found from the image's ``filename_or_obj``) as a DICOM Segmentation of its
            source, ``<output_dir>/<task>/<case>_seg.dcm``, listed in a ``<task>_dicom_seg``
            column (see :func:`medmtl.inference.dicom_seg.write_dicom_seg`; needs the
            ``medmtl[dicom-seg]`` extra). The mask must be on the input grid (give
            ``invert_transform`` when the preprocessing resamples). A SEG or SR that cannot be
            written is logged with the case id and listed in ``<output_dir>/dicom_failed.csv``
            (:attr:`dicom_failures`); the case's mask and row are kept. **These files contain the
            patient's identity** (the standard makes a SEG copy its source's patient and study): they
            are meant to go back to the PACS, hence off by default.
        dicom_sr: also write, per case read from DICOM, a Comprehensive 3D SR measurement report
            (TID 1500) of its findings: the image-level tasks' probabilities and decisions as in the
            table, each segmentation class's volume (referencing its SEG when ``dicom_seg`` is on),
            ``<output_dir>/dicom_sr/<case>_sr.dcm``, listed in a ``dicom_sr`` column (see
            :func:`medmtl.inference.dicom_sr.write_dicom_sr`). Like the SEG, **it contains the
            patient's identity**; off by default.
        model_name: the model named in the SR (its device observer and algorithm identification).
        maps: extra spatial network outputs to write next to the masks, e.g. ``("saliency",)`` from
            :class:`~medmtl.networks.SaliencyBridgeNet` with ``return_saliency=True`` (where the
            classifier looked), mapped to the input grid like the masks: ``<output_dir>/<map>/<case>``
            as float32 NIfTI, or an 8-bit PNG (0-1 scaled to 0-255) in 2D.
        postprocessing: a ``postprocessing.json`` path (or record, :mod:`medmtl.metrics.postprocessing`)
            whose operation per segmentation task (chosen on out-of-fold Dice) is applied to each mask
            on the input grid before it is written; the table gets a ``<task>_postprocessing`` column.
            ``None`` (default): the argmax as is.
        mask_resampling: how segmentation outputs go back to the input grid when ``invert_transform``
            resamples. ``"interpolate"`` (default, exact): every class channel is interpolated as
            logits (bilinear), then the argmax is taken on the input grid. ``"nearest"``: the argmax
            is taken on the network's (preprocessed) grid and only the label map is mapped back, by
            nearest neighbour (``Invertd(nearest_interp=True)``); one channel instead of every class,
            much faster for large 3D volumes, but borders follow the network's voxels (masks differ
            from the default near borders). ``<task>_voxels``, the DICOM SEG and the SR volumes count
            the mask written; what needs every class channel is computed on the network's grid
            instead of the input's: ``<task>_mean_entropy`` is the mean voxel entropy inside the
            argmax mask there (after the task's postprocessing, which there counts network voxels: a
            component-size threshold covers more of the input's volume when the network's voxels are
            larger; ``None`` when the written mask is empty), and the ``uncertainty_maps`` are the network grid's entropy, mapped back with the
            label map (one more channel, only when asked for). ``maps`` are interpolated in both
            modes. Without ``invert_transform`` nothing is resampled and both modes write the same.

    Raises:
        ValueError: ``mask_resampling`` not in :data:`MASK_RESAMPLING`; ``maps`` naming a task.
    """

    def __init__(
        self,
        tasks: Sequence[Task | Mapping[str, Any]],
        output_dir: str | os.PathLike,
        image_key: str = "image",
        mask_ext: str | None = None,
        threshold: float = 0.5,
        resample: bool = False,
        invert_transform: InvertibleTransform | None = None,
        dicom_seg: bool = False,
        maps: Sequence[str] = (),
        postprocessing: Postprocessing | str | os.PathLike | None = None,
        decisions: Decisions | str | os.PathLike | None = None,
        calibration: CalibrationRecord | str | os.PathLike | None = None,
        uncertainty_maps: bool = False,
        dicom_sr: bool = False,
        model_name: str = "medmtl model",
        mask_resampling: str = DEFAULT_MASK_RESAMPLING,
    ) -> None:
        self.tasks = list(as_tasks(tasks, owner=type(self).__name__))
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        # as SaveImage spells it (lower case, leading dot): the file written is the path recorded
        self.mask_ext = f".{mask_ext.lower().lstrip('.')}" if mask_ext else None
        self.threshold = threshold
        self.resample = resample
        self.invert = (
            Invertd(_PRED, transform=invert_transform, orig_keys=image_key, nearest_interp=False, to_tensor=True)
            if invert_transform is not None
            else None
        )
        if mask_resampling not in MASK_RESAMPLING:
            raise ValueError(
                f"mask_resampling {mask_resampling!r}: expected one of {', '.join(MASK_RESAMPLING)} "
                "(bundle key mask_resampling, e.g. --mask_resampling nearest)"
            )
        self.mask_resampling = mask_resampling
        # "nearest": the label maps (and their voxel entropy) go back by nearest neighbour instead of the logits
        self.invert_labels = (
            Invertd(_PRED, transform=invert_transform, orig_keys=image_key, nearest_interp=True, to_tensor=True)
            if invert_transform is not None and mask_resampling == "nearest"
            else None
        )
        self.dicom_seg = dicom_seg
        self.dicom_sr = dicom_sr
        self.model_name = model_name
        if (dicom_seg or dicom_sr) and not has_highdicom:
            raise ImportError(
                "MultiTaskPredictionWriter(dicom_seg=True or dicom_sr=True) needs highdicom: "
                "pip install 'medmtl[dicom-seg]'"
            )
        self.postprocessing = as_postprocessing(postprocessing, self.tasks)
        self.maps = tuple(maps)
        clash = [m for m in self.maps if m in {t.name for t in self.tasks}]
        if clash:
            raise ValueError(f"maps {clash} are task names; maps are extra network outputs such as 'saliency'")
        self.decisions = (
            Decisions.load(decisions, self.tasks) if isinstance(decisions, str | os.PathLike) else decisions
        )
        self.calibration = (
            read_calibration(calibration, self.tasks) if isinstance(calibration, str | os.PathLike) else calibration
        )
        self.uncertainty_maps = uncertainty_maps
        segmentation = [t.name for t in self.tasks if t.kind == TaskKind.SEGMENTATION]
        folders = (
            segmentation + list(self.maps) + ([_entropy_folder(n) for n in segmentation] if uncertainty_maps else [])
        ) + ([_SR_FOLDER] if dicom_sr else [])
        self.names = CaseFileNames(self.output_dir, folders)
        self.rows: list[dict[str, Any]] = []
        self.dicom_failures: list[DicomFailure] = []

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.write_iteration, IterationEvents.MODEL_COMPLETED):
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self.write_iteration)
        engine.add_event_handler(Events.COMPLETED, self.write_table)

    def _start(self, engine: Engine | None = None) -> None:
        self.rows.clear()
        self.dicom_failures.clear()
        self.names.reset()  # rescan the folders: files written since belong to their cases

    @property
    def table_path(self) -> Path:
        return self.output_dir / "predictions.csv"

    def write_iteration(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for sample in outputs:
            self.rows.append(self.write_sample(sample))

    def write_sample(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Masks of one case to disk; its classification results as a table row."""
        image = sample.get(self.image_key)
        case_id = str(sample.get("case_id", _stem(image)))
        row: dict[str, Any] = {"case_id": case_id}
        dicom_out = self.dicom_seg or self.dicom_sr
        dicom_source = _dicom_source(image) if dicom_out else None
        if dicom_out and dicom_source is None:
            logger.warning("case %s was not read from DICOM, no DICOM SEG or SR written for it", case_id)
        segments: list[SegmentFinding] = []
        reported: list[Task] = []  # the image-level tasks of the row
        preds = sample.get("pred")
        on_grid = self._spatial_outputs_on_input_grid(sample, preds, image)
        for task in self.tasks:
            logits = sample.get(pred_key(task.name))
            if logits is None:
                continue
            logits = torch.as_tensor(logits).detach().float().cpu()
            if task.kind == TaskKind.SEGMENTATION:
                grid = on_grid[task.name]  # the logits, or ("nearest") the label map and entropy, on the input grid
                mask = self._mask(task, grid)
                row[f"{task.name}_file"] = self._relative(self._save_mask(task, grid, image, case_id, mask))
                found = mask[0] > 0
                row[f"{task.name}_voxels"] = int(found.sum())
                if self.postprocessing is not None:
                    row[f"{task.name}_postprocessing"] = self.postprocessing[task.name].op.name
                entropy, inside = self._entropy(task, grid, logits, found)
                row[f"{task.name}_mean_entropy"] = round(inside, 6) if inside is not None else None
                if entropy is not None:
                    name = _entropy_folder(task.name)
                    entropy_map = (
                        MetaTensor(entropy[None], meta=dict(grid.meta))
                        if isinstance(grid, MetaTensor)
                        else entropy[None]
                    )
                    row[f"{name}_file"] = self._relative(self._save_map(name, entropy_map, image, case_id))
                seg_path = None
                if dicom_source is not None and self.dicom_seg:
                    seg_path = self._dicom_output(
                        case_id, f"{task.name} DICOM SEG", self._save_dicom_seg, task, grid, image, dicom_source,
                        case_id, mask,
                    )  # fmt: skip
                    row[f"{task.name}_dicom_seg"] = self._relative(seg_path) if seg_path is not None else None
                if dicom_source is not None and self.dicom_sr:
                    counts = torch.bincount(mask.reshape(-1).long(), minlength=task.num_outputs).tolist()
                    segments += [SegmentFinding(task, k, counts[k], seg_path) for k in range(1, task.num_outputs)]
            else:
                row.update(self._image_level_columns(task, logits, preds))
                reported.append(task)
        for name in self.maps:
            value = preds.get(name) if isinstance(preds, Mapping) else None
            if value is None:
                continue
            grid = on_grid[name]
            row[f"{name}_file"] = self._relative(self._save_map(name, grid, image, case_id))
        if dicom_source is not None and self.dicom_sr:
            findings = [image_level_finding(t, row) for t in reported]
            sr_path = self._dicom_output(
                case_id, "DICOM SR", write_dicom_sr, dicom_source, self.names.path(_SR_FOLDER, case_id, "_sr.dcm"),
                findings, segments, model_name=self.model_name,
            )  # fmt: skip
            row[_SR_FOLDER] = self._relative(sr_path) if sr_path is not None else None
        return row

    def _dicom_output(self, case_id: str, output: str, write: Any, *args: Any, **kwargs: Any) -> Path | None:
        """``write(*args, **kwargs)``: one DICOM file of a case, or ``None`` with the failure logged and kept."""
        try:
            return write(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - highdicom, pydicom and the checks raise many types; one case
            reason = f"{type(err).__name__}: {' '.join(str(err).split()) or 'no message'}"
            logger.error("case %s: %s not written (%s); its other outputs are kept", case_id, output, reason)
            self.dicom_failures.append(DicomFailure(case_id, output, reason))
            return None

    def _image_level_columns(self, task: Task, logits: torch.Tensor, preds: Any) -> dict[str, Any]:
        """Probabilities, decision and entropy columns of one image-level task of one case (shared with the MLflow
        model: :func:`~medmtl.metrics.task_columns.image_level_columns`), then the members' spread columns."""
        row = image_level_columns(task, logits, self.decisions, self.calibration, self.threshold, decimals=6)
        multiclass = task.kind == TaskKind.MULTICLASS
        for key, stem in SPREAD_KEYS.items():
            members = preds.get(key) if isinstance(preds, Mapping) else None
            member_logits = members.get(task.name) if isinstance(members, Mapping) else None
            if member_logits is None:
                continue
            member_logits = torch.as_tensor(member_logits).detach().float().cpu()  # (members, C)
            p = torch.softmax(member_logits, -1) if multiclass else torch.sigmoid(member_logits)
            std = p.std(dim=0, unbiased=False).double().numpy()
            if multiclass:  # the spread of the decided class
                row[f"{task.name}_{stem}_std"] = round(float(std[task.class_names.index(row[task.name])]), 6)
            else:
                for i, name in enumerate(output_names(task)):
                    row[f"{name}_{stem}_std"] = round(float(std[i]), 6)
        return row

    def _relative(self, path: Path) -> str:
        """``path`` relative to ``output_dir`` (where ``predictions.csv`` is), with ``/``: the folder can move."""
        return path.relative_to(self.output_dir).as_posix()

    def _to_input_grid(self, values: torch.Tensor, image: Any, invert: Invertd) -> torch.Tensor:
        """``values`` back on the input file's grid (``invert`` undoing the preprocessing's spatial steps)."""
        if not isinstance(image, MetaTensor) or not image.applied_operations:
            raise ValueError(
                f"cannot invert the preprocessing: the output's {self.image_key!r} carries no transform history; "
                "keep MetaTensor tracking on (monai.data.set_track_meta(True)) in inference"
            )
        return invert({self.image_key: image, _PRED: MetaTensor(values, meta=dict(image.meta))})[_PRED]

    def _spatial_outputs_on_input_grid(self, sample: Mapping[str, Any], preds: Any, image: Any) -> dict[str, Any]:
        """The case's segmentation logits and requested maps, by task / map name, on the input file's grid.

        Mapped back in one inversion per spatial shape, their channels stacked: the resampling grid
        (most of the cost of mapping a volume back, and the same for every channel) is then computed
        once per case instead of once per task. Interpolation works channel by channel, so each output
        gets the values it would get mapped back alone (masks are the argmax of these logits: every
        class channel is needed for the exact argmax and the mean entropy inside the mask).

        With ``mask_resampling="nearest"`` a segmentation task is instead its argmax label map (and,
        with ``uncertainty_maps``, its voxel entropy), computed on the network's grid and mapped back
        by nearest neighbour (in one inversion of their own; the maps are still interpolated).
        """
        arrays: dict[str, torch.Tensor] = {}  # interpolated
        labels: dict[str, torch.Tensor] = {}  # nearest neighbour
        for task in self.tasks:
            logits = sample.get(pred_key(task.name))
            if task.kind == TaskKind.SEGMENTATION and logits is not None:
                logits = torch.as_tensor(logits).detach().float().cpu()
                if self.invert_labels is not None:
                    labels[task.name] = _labels_to_map_back(_plain(logits), self.uncertainty_maps)
                else:
                    arrays[task.name] = logits
        for name in self.maps:  # only the maps asked for
            value = preds.get(name) if isinstance(preds, Mapping) else None
            if value is not None:
                arrays[name] = torch.as_tensor(value).detach().float().cpu()
        if self.invert is None:
            return arrays
        out = self._invert_stacked(arrays, image, self.invert)
        if self.invert_labels is not None:
            out.update(self._invert_stacked(labels, image, self.invert_labels))
        return out

    def _invert_stacked(self, arrays: Mapping[str, torch.Tensor], image: Any, invert: Invertd) -> dict[str, Any]:
        """``arrays`` on the input grid, by name: their channels stacked, one ``invert`` call per spatial shape."""
        by_shape: dict[tuple[int, ...], list[str]] = {}
        for name, array in arrays.items():
            by_shape.setdefault(tuple(array.shape[1:]), []).append(name)
        out: dict[str, Any] = {}
        for names in by_shape.values():
            inverted = self._to_input_grid(torch.cat([_plain(arrays[n]) for n in names]), image, invert)
            start = 0
            for name in names:
                stop = start + arrays[name].shape[0]
                out[name] = inverted[start:stop]
                start = stop
        return out

    def _mask(self, task: Task, grid: torch.Tensor) -> torch.Tensor:
        """The ``(1, *spatial)`` uint8 label map (argmax, or the mapped-back labels), then the task's postprocessing."""
        if self.invert_labels is not None:  # channel 0: the label map, copied by nearest neighbour (whole numbers)
            mask = _plain(grid)[:1].round().to(torch.uint8)
        else:
            mask = argmax_labels(_plain(grid))
        return self._postprocess(task, mask)

    def _postprocess(self, task: Task, mask: torch.Tensor) -> torch.Tensor:
        return self.postprocessing[task.name].apply(mask) if self.postprocessing is not None else mask

    def _entropy(
        self, task: Task, grid: torch.Tensor, logits: torch.Tensor, found: torch.Tensor
    ) -> tuple[torch.Tensor | None, float | None]:
        """The voxel entropy map on the input grid when it is written (else ``None``) and the mask's mean entropy.

        ``grid``: the task's outputs on the input grid, ``logits`` on the network's, ``found`` the
        written mask's voxels. Default mode: both from the interpolated logits, the mean over ``found``.
        ``"nearest"``: the map is channel 1 of ``grid``; the mean is taken on the network's grid,
        inside its (postprocessed) argmax mask, as the class channels are not mapped back.
        """
        if self.invert_labels is not None:
            entropy = _plain(grid)[1] if self.uncertainty_maps else None
            if not found.any():
                return entropy, None
            data = _plain(logits)
            inside = self._postprocess(task, argmax_labels(data))[0] > 0
            return entropy, float(_voxel_entropy(_voxels(data, inside)).mean()) if inside.any() else None
        # the entropy map only when it is written; the column needs the voxels inside the mask
        entropy = _voxel_entropy(grid) if self.uncertainty_maps else None
        values = entropy[found] if entropy is not None else _voxel_entropy(_voxels(grid, found))
        return entropy, float(values.mean()) if found.any() else None

    def _save_mask(self, task: Task, grid: torch.Tensor, image: Any, case_id: str, mask: torch.Tensor) -> Path:
        spatial_dims = mask.ndim - 1
        ext = self.mask_ext or (".png" if spatial_dims == 2 else ".nii.gz")
        meta = dict(grid.meta) if isinstance(grid, MetaTensor) else {}
        if not meta and isinstance(image, MetaTensor):
            meta = dict(image.meta)
        saver = SaveImage(
            output_ext=ext,
            resample=self.resample,
            output_dtype=torch.uint8,
            scale=255 if ext == ".png" and task.num_outputs == 2 else None,
            print_log=False,
        )
        return _save(saver, MetaTensor(mask, meta=meta), self.names.path(task.name, case_id, ext))

    def _save_map(self, name: str, values: torch.Tensor, image: Any, case_id: str) -> Path:
        """A float map (a saliency map in [0, 1]) on the input grid: NIfTI float32, or an 8-bit PNG in 2D."""
        ext = ".png" if values.ndim - 1 == 2 else ".nii.gz"
        meta = dict(values.meta) if isinstance(values, MetaTensor) else {}
        if not meta and isinstance(image, MetaTensor):
            meta = dict(image.meta)
        png = ext == ".png"
        saver = SaveImage(
            output_ext=ext,
            resample=self.resample,
            output_dtype=torch.uint8 if png else torch.float32,
            scale=255 if png else None,
            print_log=False,
        )
        data = values.as_tensor() if isinstance(values, MetaTensor) else values
        return _save(
            saver, MetaTensor(data.clamp(0, 1) if png else data, meta=meta), self.names.path(name, case_id, ext)
        )

    def _save_dicom_seg(
        self, task: Task, grid: torch.Tensor, image: Any, source: Path, case_id: str, mask: torch.Tensor
    ) -> Path:
        """The mask as a DICOM-SEG of its source series; the affine check catches masks off the source grid."""
        # the mask's grid: the inverted outputs' (input file's) grid, else the preprocessed image's
        on = grid if self.invert is not None else image
        affine = on.affine if isinstance(on, MetaTensor) else None
        return write_dicom_seg(
            mask[0],
            source,
            self.names.path(task.name, case_id, "_seg.dcm"),
            task,
            affine=affine,
        )

    def write_table(self, engine: Engine | None = None) -> Path:
        """``predictions.csv`` with one row per case (written atomically)."""
        columns: list[str] = []
        for row in self.rows:
            columns += [c for c in row if c not in columns]
        # backslashreplace: an id from a non-UTF-8 file name must not fail the table after the whole run
        atomic_write(self.table_path, csv_text(columns, self.rows).encode("utf-8", errors="backslashreplace"))
        logger.info("wrote %d predictions to %s", len(self.rows), self.table_path)
        failed = self.output_dir / DICOM_FAILED_FILE
        if self.dicom_failures:
            write_dicom_failures(self.dicom_failures, failed)
            logger.warning("%d DICOM output(s) not written: see %s", len(self.dicom_failures), failed)
        elif failed.is_file():  # an earlier run's: this table has none
            failed.unlink()
        return self.table_path


def _entropy_folder(task_name: str) -> str:
    return f"{task_name}_entropy"


def _voxel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Voxel-wise entropy of the softmax over the classes, divided by its maximum (``log C``): ``[0, 1]``."""
    p = torch.softmax(logits.as_tensor() if isinstance(logits, MetaTensor) else logits, 0)
    h = torch.special.entr(p).sum(0)
    return h / math.log(p.shape[0]) if p.shape[0] > 1 else h


def _voxels(logits: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``(C, n)``: the class logits of the ``n`` voxels where ``inside`` is true, in ``h[inside]`` order.

    Entropy is voxel by voxel, so ``_voxel_entropy(_voxels(x, m))`` is ``_voxel_entropy(x)[m]``
    without computing it over the whole volume (``index_select`` of the flat voxel indices: about
    twice as fast as boolean indexing on a CPU).
    """
    data = _plain(logits)
    return data.reshape(data.shape[0], -1).index_select(1, inside.reshape(-1).nonzero().squeeze(1))


def _labels_to_map_back(logits: torch.Tensor, entropy: bool) -> torch.Tensor:
    """Float channels of ``(C, *spatial)`` logits, same grid: the argmax label map, then the voxel entropy if asked."""
    label = argmax_labels(logits).float()
    return torch.cat([label, _voxel_entropy(logits)[None].float()]) if entropy else label


def _plain(data: torch.Tensor) -> torch.Tensor:
    return data.as_tensor() if isinstance(data, MetaTensor) else data


def argmax_labels(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(0, keepdim=True)`` as uint8, computed one class at a time.

    The same answer (the first class wins a tie), but elementwise passes: torch's argmax over the
    first axis of a ``(C, *spatial)`` tensor reads it with a stride and takes 10-30x as long on a CPU
    (about 0.7 s for a 181x217x181 brain with 4 classes). NaN logits or more classes than uint8
    holds take torch's argmax as before.
    """
    classes = logits.shape[0]
    if classes > 256 or bool(torch.isnan(logits).any()):
        return logits.argmax(0, keepdim=True).to(torch.uint8)
    best = logits[0]
    index = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for c in range(1, classes):
        index.masked_fill_(logits[c] > best, c)
        best = torch.maximum(best, logits[c])
    return index[None]


def _save(saver: SaveImage, data: MetaTensor, path: Path) -> Path:
    """``data`` written by ``saver`` to exactly ``path`` (``saver``'s own naming would cut ``sub.01`` to ``sub``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if saver.output_ext == ".png":  # lossless at any level: the fastest one (NIfTI: nibabel's gzip is at 1 already)
        saver.set_options(write_kwargs={"compress_level": _PNG_COMPRESS_LEVEL})
    saver(data, filename=str(path)[: -len(saver.output_ext)])
    return path


def _dicom_source(image: Any) -> Path | None:
    """The DICOM series folder or file ``image`` was read from (its ``filename_or_obj``), else None."""
    name = getattr(image, "meta", {}).get("filename_or_obj")
    if isinstance(name, (list, tuple)):  # several inputs stacked as channels: the grid is the first one's
        name = name[0] if name else None
    if not name or not isinstance(name, (str, os.PathLike)):
        return None
    path = Path(name)
    return path if path.is_dir() or is_dicom_file(path) else None


def _stem(image: Any) -> str:
    name = str(getattr(image, "meta", {}).get("filename_or_obj", "case"))
    base = os.path.basename(name)
    for ext in (".nii.gz", ".nii", ".png", ".jpg", ".npy", ".dcm", ".tif"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base
