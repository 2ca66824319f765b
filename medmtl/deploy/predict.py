"""``medmtl predict -i INPUT -o OUT -m MODEL``: new images through a trained model, no spec and no labels.

Why: inference through a bundle needs a dataset laid out as the training data; a folder of new
radiographs or volumes from the scanner has no such layout and no labels. ``predict`` finds the
images, checks each (:mod:`medmtl.deploy.inputs`), and runs the bundle's own inference workflow on
them (``--infer_files``), so the preprocessing, network, fold ensemble, decisions, temperatures and
postprocessing are exactly those the run recorded: one source of truth, nothing restated here.

MODEL is a training run folder (``run_config.json``, ``models/best.pt``), a ``medmtl cv`` folder
(its fold ensemble with the out-of-fold choices), an MLflow model URI, or a file written by
``medmtl export`` (ONNX, torch.export, TorchScript): its description carries the run record, the data
spec and the applied choices, written back into a temporary run folder whose inference runs the
exported program (:mod:`medmtl.deploy.exported_run`). Outputs in OUT: masks in each input's own geometry
(NIfTI for volumes, PNG for 2D), ``predictions.csv``, ``inputs.json`` (what was predicted) and
``failed.csv`` (what was not, with the reason).

A model taking several images per case (the spec's ``inputs``: MRNet's three planes) gets them from one
sub-folder per input, paired by their path (``INPUT/axial/0001.npy`` with ``INPUT/coronal/0001.npy``...,
:mod:`medmtl.deploy.input_sets`); a case lacking an input is a row of ``failed.csv``.

DICOM files in INPUT (a PACS export, a study folder, one series) are grouped by study and series
from their headers; the series the model takes are chosen by the rules stored with it (the spec's
``dicom_series``, :mod:`medmtl.deploy.series_choice`; per input for a model with several,
:mod:`medmtl.deploy.input_series`) and the choice is written to ``series.csv``.
For DICOM cases the bundle also writes a DICOM SEG per mask and a DICOM SR of the findings
(``dicom_seg`` and ``dicom_sr``, with highdicom); those two carry the patient's identity, as the
standard requires (case ids and every other output do not). A SEG or SR that cannot be written for
a case is listed in ``dicom_failed.csv`` (the case's mask and row are kept), and predict reports it
as it reports failed inputs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmtl.deploy.input_sets import group_by_input, layout_hint
from medmtl.deploy.inputs import (
    FAILED_FILE,
    INPUTS_FILE,
    InputCase,
    check_input,
    find_inputs,
    write_failed,
    write_input_list,
)
from medmtl.deploy.series_choice import (
    SERIES_FILE,
    choose_series,
    dicom_cases,
    effective_rules,
    study_name,
    unmatched_reason,
    write_series_table,
)
from medmtl.experiments.commands import option_value, run_medmtl

if TYPE_CHECKING:
    from medmtl.data.dicom.studies import DicomStudy
    from medmtl.deploy.exported_run import ExportedRun
    from medmtl.inference.dicom_failures import DicomFailure

__all__ = ["PredictError", "PredictResult", "TrainedModel", "predict", "predict_with_folder", "resolve_model"]

logger = logging.getLogger(__name__)

#: folder of OUT holding links to the files of DICOM series that share a folder with others.
SERIES_LINKS = "dicom_series"
#: what a previous prediction leaves in OUT: refused without ``overwrite`` (and the inference's ``dicom_failed.csv``).
_OUTPUT_FILES = ("predictions.csv", INPUTS_FILE, FAILED_FILE, SERIES_FILE, SERIES_LINKS)
#: bundle options an exported program cannot serve (it has the task outputs only, in eval mode).
_NOT_EXPORTED = {"--save_saliency": "saliency maps", "--mc_dropout_samples": "MC dropout"}


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
    """What a prediction wrote: the cases predicted, the inputs that failed, the output folder, the DICOM
    cases, and the DICOM SEG / SR outputs that could not be written (``dicom_failed.csv``)."""

    output_dir: Path
    predicted: list[InputCase] = field(default_factory=list)
    failed: list[tuple[InputCase, str]] = field(default_factory=list)
    dicom: list[InputCase] = field(default_factory=list)
    dicom_failed: list[DicomFailure] = field(default_factory=list)


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
    from medmtl.inference.dicom_failures import DICOM_FAILED_FILE

    found = [name for name in (*_OUTPUT_FILES, DICOM_FAILED_FILE) if (out / name).exists()]
    if found and not overwrite:
        raise PredictError(
            f"{out} already holds a prediction ({', '.join(found)}): give another -o folder, or --overwrite to "
            "replace it"
        )


def _remove_previous(out: Path) -> None:
    """What an earlier prediction into ``out`` left that this one may not write again (``overwrite`` given)."""
    from medmtl.inference.dicom_failures import DICOM_FAILED_FILE

    if (out / SERIES_LINKS).is_dir() and not (out / SERIES_LINKS).is_symlink():
        shutil.rmtree(out / SERIES_LINKS)  # links and copies made by medmtl predict only
    for name in ("predictions.csv", FAILED_FILE, SERIES_FILE, DICOM_FAILED_FILE):  # a failed run leaves no old table
        if (out / name).is_file():
            (out / name).unlink()


def _is_dicom(path: Path) -> bool:
    from medmtl.data.dicom import is_dicom_file

    return is_dicom_file(path)


def _dicom_inputs(files: list[InputCase], spec: Any, out: Path) -> tuple[list[InputCase], list[tuple[InputCase, str]]]:
    """The cases of the DICOM files: grouped into studies and series, chosen by the spec's rules (``series.csv``).

    Returns the cases, and the files whose header cannot be read and the studies without a matching series
    (each with the reason).
    """
    from medmtl.data.dicom.studies import group_studies

    by_path = {str(c.path): c for c in files}
    studies, problems = group_studies(by_path)
    failed = [(by_path[str(p.path)], f"{p.message} ({p.fix})") for p in problems]
    if len(spec.inputs) > 1:
        cases, unmatched = _dicom_input_sets(studies, spec, out)
        return cases, failed + unmatched
    own = spec.dicom_series.for_input(next(iter(spec.inputs))) if spec.dicom_series is not None else None
    rules = effective_rules(own, spec.modality)
    choices = choose_series(studies, rules, spec.spatial_dims)
    write_series_table(choices, out / SERIES_FILE)
    for choice in choices:
        if not choice.chosen:
            reason = unmatched_reason(choice, rules, spec.spatial_dims)
            logger.warning("%s (%s): not predicted: %s", choice.name, choice.study.folder, reason)
            failed.append((InputCase(choice.name, choice.study.folder), reason))
    cases = dicom_cases(choices, spec.spatial_dims, out / SERIES_LINKS)
    logger.info("DICOM: %d stud(ies), %d case(s) chosen (%s)", len(studies), len(cases), out / SERIES_FILE)
    return cases, failed


def _dicom_input_sets(
    studies: list[DicomStudy], spec: Any, out: Path
) -> tuple[list[InputCase], list[tuple[InputCase, str]]]:
    """A model with several inputs: each study one case, one series per input (:mod:`medmtl.deploy.input_series`)."""
    from medmtl.deploy.input_series import choose_input_series, input_series_cases

    try:
        by_input = choose_input_series(studies, spec.dicom_series, spec.modality, list(spec.inputs), spec.spatial_dims)
    except ValueError as err:
        return [], [(InputCase(study_name(k), s.folder), str(err)) for k, s in enumerate(studies, start=1)]
    cases, failed = input_series_cases(
        by_input, spec.dicom_series, spec.modality, spec.spatial_dims, out / SERIES_LINKS
    )
    write_series_table(by_input, out / SERIES_FILE, {case.case_id: reason for case, reason in failed})
    for case, reason in failed:
        logger.warning("%s (%s): not predicted: %s", case.case_id, case.path, reason)
    logger.info("DICOM: %d stud(ies), %d case(s) chosen (%s)", len(studies), len(cases), out / SERIES_FILE)
    return cases, failed


def _input_sets(
    found: list[InputCase], root: Path, keys: list[str], *, refuse: bool
) -> tuple[list[InputCase], list[tuple[InputCase, str]]]:
    """``found`` as the model's cases: each image one case, or for several inputs the images paired by
    their input folders (:func:`~medmtl.deploy.input_sets.group_by_input`), with the images that pair into no case.

    Raises:
        PredictError: several inputs, no image in an input's folder, and ``refuse`` (no DICOM file to predict either).
    """
    if len(keys) == 1 or not found:
        return found, []
    try:
        return group_by_input(found, root, keys)
    except ValueError as err:
        if refuse:
            raise PredictError(str(err)) from None
        return [], [(case, str(err)) for case in found]


_ARRAY_SUFFIXES = (".npy", ".npz")


def _array_layout_mismatch(path: Path, pattern: str) -> str | None:
    """Why an image with a geometry (NIfTI, DICOM...) cannot stand in for the bare arrays an input was trained on.

    A ``.npy`` stack carries no orientation: the network learnt its axis order as stored (MRNet: slices, rows,
    columns), which a NIfTI or DICOM read in MONAI's layout does not share, so its answers would be silently wrong.
    """
    if not pattern.lower().endswith(_ARRAY_SUFFIXES) or path.name.lower().endswith(_ARRAY_SUFFIXES):
        return None
    return (
        f"the model was trained on bare NumPy arrays for this input ({pattern!r}), whose axis order an image with a "
        "geometry does not share; give it the arrays as trained (for knee planes: medmtl reformat-planes)"
    )


def _check_case(
    case: InputCase, keys: list[str], spatial_dims: int, *, series_folder: bool, patterns: dict[str, str] | None = None
) -> str | None:
    """Why ``case`` cannot be predicted (``None``: it can): :func:`~medmtl.deploy.inputs.check_input` on each image,
    and each image's format against the ``patterns`` the spec's inputs were trained from."""
    files = case.files(keys)
    patterns = patterns or {}
    found = {
        key: check_input(path, spatial_dims, series_folder=series_folder)
        or _array_layout_mismatch(Path(path), str(patterns.get(key, "")))
        for key, path in files.items()
    }
    reasons = [(key, reason) for key, reason in found.items() if reason is not None]
    if len(files) == 1 or not reasons:
        return reasons[0][1] if reasons else None
    return "; ".join(f"{key} ({files[key]}): {reason}" for key, reason in reasons)


def _dicom_outputs() -> list[str]:
    """The bundle overrides writing a DICOM SEG per mask and a DICOM SR per case (nothing without highdicom)."""
    from medmtl.inference.dicom_seg import has_highdicom

    if not has_highdicom:
        logger.warning("no DICOM SEG or SR written: they need highdicom (pip install 'medmtl[dicom-seg]')")
        return []
    return ["--dicom_seg", "True", "--dicom_sr", "True"]


def predict(
    inputs: str | os.PathLike,
    output_dir: str | os.PathLike,
    model: str | os.PathLike,
    **kwargs: Any,
) -> PredictResult:
    """Predict every image of ``inputs`` with ``model``: a run or CV folder, an MLflow model URI
    (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/model``: downloaded into a temporary run
    folder first, :func:`medmtl.tracking.model_files.download_model_folder`), or a file written by
    ``medmtl export`` (written back into a temporary run folder whose inference runs the exported program,
    :func:`medmtl.deploy.exported_run.exported_run_folder`). See :func:`predict_with_folder`.

    Raises:
        PredictError: see :func:`predict_with_folder`; also an exported file without its run record and
            spec (exported before files carried them: the message names the export command to run again).
    """
    if ":/" in str(model):  # the MLflow import only for a URI: predict on a folder stays light
        from medmtl.tracking.model_files import download_model_folder, is_model_uri

        if is_model_uri(model):
            with tempfile.TemporaryDirectory(prefix="medmtl_model_") as tmp:
                folder = download_model_folder(str(model), Path(tmp) / "run")
                return predict_with_folder(inputs, output_dir, folder, **kwargs)
    if Path(model).is_file():
        from medmtl.deploy.exported_run import ExportedRunError, exported_run_folder

        with tempfile.TemporaryDirectory(prefix="medmtl_exported_") as tmp:
            try:
                exported = exported_run_folder(model, Path(tmp) / "run")
            except ExportedRunError as err:
                raise PredictError(str(err)) from None
            return predict_with_folder(inputs, output_dir, exported.folder, exported=exported, **kwargs)
    return predict_with_folder(inputs, output_dir, model, **kwargs)


def _refuse_for_exported(model: Path, overrides: Sequence[str]) -> None:
    """Saliency maps and MC dropout need the PyTorch network: one line naming the option, for an exported file."""
    for option, what in _NOT_EXPORTED.items():
        value = option_value(overrides, option)
        if value is not None and value.strip().lower() not in ("false", "0", "none", ""):
            raise PredictError(
                f"{option} {value}: {what} need the PyTorch network, and {model.name} is an exported program "
                "(task outputs only); give the training run folder as -m, or leave the option out"
            )


def _check_exported_tasks(exported: ExportedRun, spec: Any, data_spec: str | None) -> None:
    """Refuse a spec whose tasks are not those the file was exported for, naming both lists."""
    from medmtl.deploy.exported_run import tasks_text

    def summary(tasks: Any) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(t.name, t.kind.value, tuple(t.class_names)) for t in tasks]

    if summary(spec.task_list) != summary(exported.tasks):
        where = f"--data_spec {data_spec}" if data_spec else f"the spec inside {exported.model.name}"
        fix = (
            "give the spec the model was trained with (or leave --data_spec out: the file carries it)"
            if data_spec
            else "export the run again with medmtl export"
        )
        raise PredictError(
            f"{exported.model.name} was exported for the tasks {tasks_text(exported.tasks)}; {where} declares "
            f"{tasks_text(spec.task_list)}: {fix}"
        )


def predict_with_folder(
    inputs: str | os.PathLike,
    output_dir: str | os.PathLike,
    model: str | os.PathLike,
    *,
    device: str | None = None,
    overwrite: bool = False,
    data_spec: str | None = None,
    overrides: Sequence[str] = (),
    runner: Callable[[list[str]], int] | None = None,
    exported: ExportedRun | None = None,
) -> PredictResult:
    """Predict every image of ``inputs`` with ``model`` into ``output_dir``.

    Args:
        inputs: an image file or a folder of images (searched recursively; for a model with several
            inputs, one sub-folder per input); DICOM files are grouped into studies and series, and the
            series chosen by the spec's ``dicom_series`` rules.
        output_dir: where masks, ``predictions.csv``, ``inputs.json``, ``failed.csv`` (and for DICOM
            input ``series.csv``, DICOM SEG and SR files) go.
        model: a training run or ``medmtl cv`` folder.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: the bundle's, a GPU when there is one).
        overwrite: replace an earlier prediction in ``output_dir`` (refused otherwise).
        data_spec: the spec the model was trained with, when its recorded path is not on this machine.
        overrides: further bundle overrides (e.g. ``--tta_axes "[0]"``).
        runner: runs one ``medmtl`` argv and returns its exit status (default: a subprocess).
        exported: the :class:`~medmtl.deploy.exported_run.ExportedRun` whose run folder ``model`` is:
            the inference runs its exported program (on the CPU unless ``device`` says otherwise).

    Raises:
        PredictError: an unusable model, input or output folder; a spec whose tasks are not the
            exported file's; every input failing its check; the bundle's inference failing.
    """
    trained = resolve_model(model)
    spec = _spec_of(trained, data_spec)
    if exported is not None:
        _refuse_for_exported(exported.model, overrides)
        _check_exported_tasks(exported, spec, data_spec)
        device = device or "cpu"  # the program runs on the CPU: no GPU round trip by default
    keys = list(spec.inputs)
    if len(keys) > 1 and Path(inputs).is_file():
        raise PredictError(
            f"the model's spec '{spec.name}' takes {len(keys)} images per case ({', '.join(keys)}) and {inputs} is "
            f"one file: give a folder with {layout_hint(keys)}"
        )
    try:
        found = find_inputs(inputs)
    except (FileNotFoundError, ValueError) as err:
        raise PredictError(str(err)) from None
    out = Path(output_dir)
    found = [c for c in found if not c.path.resolve().is_relative_to(out.resolve())]  # OUT inside INPUT
    if not found:
        raise PredictError(f"every image of {inputs} is inside the output folder {out}: give another -o folder")
    is_dicom = [_is_dicom(c.path) for c in found]
    candidates = [c for c, d in zip(found, is_dicom, strict=True) if not d]
    dicom_files = [c for c, d in zip(found, is_dicom, strict=True) if d]
    candidates, failed = _input_sets(candidates, Path(inputs), keys, refuse=not dicom_files)
    _check_output(out, overwrite)
    _remove_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    result = PredictResult(out, failed=failed)
    if dicom_files:
        result.dicom, failed = _dicom_inputs(dicom_files, spec, out)
        result.failed += failed
        candidates += result.dicom
    dicom = set(result.dicom)
    for case in candidates:
        reason = _check_case(case, keys, spec.spatial_dims, series_folder=case in dicom, patterns=dict(spec.inputs))
        if reason is None:
            result.predicted.append(case)
        else:
            logger.warning("%s: not predicted: %s", case.path, reason)
            result.failed.append((case, reason))
    if result.failed:
        write_failed(result.failed, out / FAILED_FILE)
    if not result.predicted:
        raise PredictError(f"none of the {len(found)} inputs can be predicted: see {out / FAILED_FILE}")
    listed = write_input_list(result.predicted, keys, out / INPUTS_FILE)
    argv = ["run", trained.bundle, "inference", "--output_dir", str(trained.folder), "--infer_dir", str(out)]
    argv += ["--infer_files", str(listed), "--validate_data", "False"]
    if any(case in dicom for case in result.predicted):
        argv += _dicom_outputs()
    if data_spec:
        argv += ["--data_spec", str(data_spec)]
    if device:
        argv += ["--device", f"$torch.device('{device}')"]
    if exported is not None:
        argv += exported.overrides()
    shown = exported.model if exported is not None else trained.folder
    logger.info("predicting %d input(s) with %s into %s", len(result.predicted), shown, out)
    status = (runner or run_medmtl)([*argv, *overrides])
    if status != 0:
        raise PredictError(f"the inference of {trained.bundle} failed (exit status {status}; its log is above)")
    from medmtl.inference.dicom_failures import DICOM_FAILED_FILE, read_dicom_failures

    if (out / DICOM_FAILED_FILE).is_file():  # SEG / SR outputs the inference could not write; the rest was
        result.dicom_failed = read_dicom_failures(out / DICOM_FAILED_FILE)
    return result
