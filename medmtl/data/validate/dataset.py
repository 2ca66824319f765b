"""Validating a dataset: spec, case table and every file, into one report; and the bundles' gate on it."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from typing import Any

from medmtl.data.duplicates import find_duplicates
from medmtl.data.header_guard import max_image_bytes
from medmtl.data.problems import DataError, Problem, Severity
from medmtl.data.spec import DatasetSpec, SpecError, load_spec
from medmtl.data.splits import SPLIT_NAMES
from medmtl.data.tasks import TaskKind, present_key
from medmtl.data.validate.jobs import (
    _EMPTY_EXAMPLES,
    _WEAK_SUFFIX,
    DEFAULT_FILE_TIMEOUT_S,
    FILE_TIMEOUT_ENV,
    GeometryTolerance,
    _CaseJob,
    _MaskRule,
)
from medmtl.data.validate.pool import _run_jobs
from medmtl.data.validate.report import ValidationReport
from medmtl.data.validate.result_cache import ResultCache
from medmtl.data.validate.studies import mixed_label_studies

__all__ = ["validate_dataset", "DatasetInvalidError", "DatasetExit", "require_valid_dataset"]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# orchestration (main process)


def validate_dataset(
    spec: str | os.PathLike | DatasetSpec,
    root: str | os.PathLike | None = None,
    workers: int = 0,
    check_files: bool = True,
    tolerance: GeometryTolerance | None = None,
    progress: bool | None = None,
    spec_overrides: dict[str, Any] | None = None,
    *,
    max_image_bytes: int | str | None = None,
    file_timeout_s: float | None = None,
    duplicates: bool = True,
    cache: bool = True,
) -> ValidationReport:
    """Check a dataset spec, its case table and every file it names; collect every problem.

    Args:
        spec: a spec YAML file or a :class:`DatasetSpec`. Problems in the YAML (unknown keys, wrong
            types...) become problems of the report instead of exceptions.
        root: data root overriding the spec's.
        workers: processes opening files, this one included: ``0`` uses every core, ``1`` runs only in
            this process, ``N`` adds ``N - 1`` spawned workers.
        check_files: open every input and mask (``False``: only the spec and the case table).
        tolerance: how far the grids of one case may differ (default :class:`GeometryTolerance`).
        progress: show a progress bar on stderr; ``None`` shows it when stderr is a terminal.
        spec_overrides: top-level keys replacing those of the spec file (as :func:`load_spec` takes
            them, e.g. a bundle's ``splits``); ignored when ``spec`` is a :class:`DatasetSpec`.
        max_image_bytes: cap on one file's decoded size, in bytes or as ``"4G"`` (``None``: the
            ``MEDMTL_MAX_IMAGE_BYTES`` environment variable, else 2 GiB); bigger headers are reported
            (``image_too_large``), never read.
        file_timeout_s: longest wait for one file (``None``: ``MEDMTL_FILE_TIMEOUT_S``, else 120 s);
            slower files are reported as ``read_timeout`` (a stalled network mount) and the report goes on.
        duplicates: look for duplicate images once the files have no error (:mod:`medmtl.data.duplicates`):
            each pair is a warning (``duplicate_image``, ``duplicate_label_conflict``,
            ``duplicate_across_splits``) and ``report.duplicates`` holds them all.
        cache: reuse the error-free results of cases whose files have the same bytes as at an earlier
            validation with the same settings (:mod:`medmtl.data.validate.result_cache`); ``False``
            opens every file.

    Returns:
        A :class:`ValidationReport`; ``report.ok`` is ``False`` when any problem is an error.

    Raises:
        ValueError: ``workers`` is negative, or a limit (argument or environment variable) is not a
            positive number.

    Example::

        report = validate_dataset("data_specs/breast_ultrasound.yaml", root="/data/Dataset_BUSI_with_GT")
        print(report.format())
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: every core, 1: in-process), got {workers}")
    limits = _limits(max_image_bytes, file_timeout_s)
    start = time.perf_counter()
    report = ValidationReport(check_files=check_files)
    if isinstance(spec, DatasetSpec):
        loaded: DatasetSpec | None = spec
        report.spec_path = spec.spec_path
    else:
        report.spec_path = str(spec)
        try:
            loaded = load_spec(spec, **(spec_overrides or {}))
        except SpecError as err:
            loaded = None
            report.problems.extend(err.problems)
    if loaded is not None:
        report.dataset = loaded.name
        _validate_spec(
            loaded, root, workers, tolerance or GeometryTolerance(), progress, report, limits, duplicates, cache
        )
    report.duration_s = time.perf_counter() - start
    logger.debug(
        "validated %s: %d errors, %d warnings in %.1f s",
        report.dataset,
        len(report.errors),
        len(report.warnings),
        report.duration_s,
    )
    return report


def _validate_spec(
    spec: DatasetSpec,
    root: str | os.PathLike | None,
    workers: int,
    tolerance: GeometryTolerance,
    progress: bool | None,
    report: ValidationReport,
    limits: tuple[int | None, float] = (None, DEFAULT_FILE_TIMEOUT_S),
    duplicates: bool = True,
    cache: bool = True,
) -> None:
    try:
        table = spec.build_cases(root=root)
    except SpecError as err:  # e.g. an unset environment variable in the spec's root
        report.problems.extend(err.problems)
        return
    report.root = str(table.root)
    report.problems.extend(table.problems)
    report.problems.extend(mixed_label_studies(spec, table.cases))
    weak_masks = _weak_masks(spec, root, table.cases, report)
    report.num_cases = len(table.cases)
    report.split_counts = {s: n for s, n in sorted(table.split_counts().items(), key=lambda kv: _split_order(kv[0]))}
    splits = [s for s in SPLIT_NAMES if s in report.split_counts]
    report.label_counts = {s: table.label_counts(s) for s in (*splits, "all")} if table.cases else {}
    if not report.check_files or not table.cases:
        return
    jobs = [_job(spec, case, tolerance, weak_masks.get(case["case_id"], {})) for case in table.cases]
    jobs = [dataclasses.replace(j, max_image_bytes=limits[0], file_timeout_s=limits[1]) for j in jobs]
    results = _checked(jobs, workers, progress, report, ResultCache(report.root, enabled=cache))
    present_by_case: dict[str, dict[str, tuple[int, ...]]] = {}
    for result in results:
        report.problems.extend(result.problems)
        report.files_checked += result.files
        present_by_case[result.case_id] = result.classes_present
        for task in result.empty:
            report.empty_masks.setdefault(task, []).append(result.case_id)
    _add_segmentation_counts(spec, table.cases, present_by_case, report)
    for key, case_ids in report.empty_masks.items():
        examples = ", ".join(case_ids[:_EMPTY_EXAMPLES]) + (", ..." if len(case_ids) > _EMPTY_EXAMPLES else "")
        task, weak = key.removesuffix(_WEAK_SUFFIX), key.endswith(_WEAK_SUFFIX)
        if weak:
            labelled = sum(task in masks for masks in weak_masks.values())
        else:
            labelled = report.label_counts.get("all", {}).get(task, {}).get("labelled", len(case_ids))
        report.problems.append(
            Problem(
                "empty_mask",
                f"task '{task}': {len(case_ids)} of {labelled} {'weak ' if weak else ''}masks are all background "
                f"({examples})",
                "expected for negative cases; otherwise check the masks and the label's values/binarize "
                "(the --json report lists every case)",
                severity=Severity.WARNING,
            )
        )
    if duplicates and report.ok:
        _add_duplicates(spec, table, progress, report)


def _checked(
    jobs: list[_CaseJob], workers: int, progress: bool | None, report: ValidationReport, cache: ResultCache
) -> list:
    """Every job's result in job order: from the cache where the files are unchanged, else checked now."""
    keys, results, todo = cache.split(jobs)
    if todo:
        fresh = _run_jobs([jobs[i] for i in todo], workers, progress, report)
        results.update(zip(todo, fresh, strict=True))
    if results and len(todo) < len(jobs):
        logger.info(
            "validation: %d of %d cases unchanged since their last check, not opened", len(jobs) - len(todo), len(jobs)
        )
    ordered = [results[i] for i in range(len(jobs))]
    cache.store(keys, ordered)
    return ordered


def _add_duplicates(spec: DatasetSpec, table: Any, progress: bool | None, report: ValidationReport) -> None:
    """Duplicate images as warnings; those found while splitting (``duplicates: together``) are reused."""
    found = table.duplicates
    if found is None:
        found = find_duplicates(table.cases, spec, cache_name=table.root, progress=progress, labels=False)
    report.duplicates = found.with_splits(table.cases).with_labels(table.cases, spec)
    report.problems.extend(report.duplicates.problems())


def _limits(max_bytes: int | str | None, timeout_s: float | None) -> tuple[int | None, float]:
    """``(max_image_bytes, file_timeout_s)`` checked here, once (``None`` bytes: each reader reads the environment)."""
    if max_bytes is not None:
        max_bytes = max_image_bytes(max_bytes)
    else:
        max_image_bytes()  # a malformed environment variable fails here, not in every worker
    where = "file_timeout_s"
    if timeout_s is None:
        raw = os.environ.get(FILE_TIMEOUT_ENV, "").strip()
        where = f"the environment variable {FILE_TIMEOUT_ENV}"
        timeout_s = raw or DEFAULT_FILE_TIMEOUT_S
    try:
        seconds = float(timeout_s)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{where} must be a positive number of seconds, got {timeout_s!r}")
    return max_bytes, seconds


def _weak_masks(
    spec: DatasetSpec, root: str | os.PathLike | None, cases: list[dict], report: ValidationReport
) -> dict[str, dict[str, str | list[str]]]:
    """``{case_id: {task: weak mask path(s)}}`` for tasks with a ``weak_label`` mask, and the weak labels' own problems.

    Weak-label pre-training reads these masks as training targets, so they get the same checks as the
    strong ones; the weak case table's problems that the strong one does not have (a weak mask outside
    the root, an invalid weak class label...) join the report.
    """
    if not any(t.weak_label is not None for t in spec.tasks):
        return {}
    try:
        weak = spec.build_cases(root=root, label_quality="weak")
    except SpecError:  # already reported by the strong table
        return {}
    known = set(report.problems)
    report.problems.extend(p for p in weak.problems if p not in known)
    tasks = [t.name for t in spec.tasks if t.weak_label is not None and t.weak_label.mask is not None]
    ids = {c["case_id"] for c in cases}
    return {
        c["case_id"]: {t: c[t] for t in tasks if c.get(present_key(t)) and t in c}
        for c in weak.cases
        if c["case_id"] in ids
    }


def _split_order(split: str) -> int:
    return SPLIT_NAMES.index(split) if split in SPLIT_NAMES else len(SPLIT_NAMES)


def _job(
    spec: DatasetSpec, case: dict, tolerance: GeometryTolerance, weak_masks: dict[str, str | list[str]]
) -> _CaseJob:
    """The picklable description of one case's files (paths and label rules, no spec object)."""

    def paths(value: str | list[str]) -> tuple[str, ...]:
        return (value,) if isinstance(value, str) else tuple(value)

    def rule(task: Any, label: Any, weak: bool) -> _MaskRule:
        return _MaskRule(
            task=task.name,
            num_classes=task.num_outputs,
            binarize=bool(label is not None and label.binarize),
            values=tuple(sorted((label.values or {}).items())) if label is not None else (),
            weak=weak,
            scaled=bool(label is not None and label.scaled_mask),
        )

    masks = []
    for task in spec.tasks:
        if task.kind != TaskKind.SEGMENTATION:
            continue
        if case.get(task.present_key) and task.name in case:
            masks.append((rule(task, task.label, False), paths(case[task.name])))
        if task.name in weak_masks:
            masks.append((rule(task, task.weak_label, True), paths(weak_masks[task.name])))
    return _CaseJob(
        case_id=case["case_id"],
        inputs=tuple((key, paths(case[key])) for key in spec.inputs if key in case),
        masks=tuple(masks),
        spatial_dims=spec.spatial_dims,
        same_grid_inputs=any(t.kind == TaskKind.SEGMENTATION for t in spec.tasks),
        tolerance=tolerance,
    )


def _add_segmentation_counts(
    spec: DatasetSpec,
    cases: list[dict],
    present_by_case: dict[str, dict[str, tuple[int, ...]]],
    report: ValidationReport,
) -> None:
    """Per segmentation class: labelled cases whose mask contains it, per split."""
    for task in spec.tasks:
        if task.kind != TaskKind.SEGMENTATION:
            continue
        for split, counts in report.label_counts.items():
            tally: Counter[int] = Counter()
            for case in cases:
                if split == "all" or case["split"] == split:
                    tally.update(present_by_case.get(case["case_id"], {}).get(task.name, ()))
            entry = counts.get(task.name)
            if entry is not None:
                for index, name in enumerate(task.class_names):
                    entry[name] = tally[index]


class DatasetInvalidError(DataError):
    """:func:`require_valid_dataset` found errors; ``str()`` is the whole report, ``report`` the findings.

    A :class:`~medmtl.data.problems.DataError` (so a ``ValueError``) whose text is exactly what
    ``medmtl validate`` prints: every problem on its own line with the file and the fix, the counts per
    check and the ``FAILED`` line.
    """

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.problems, f"dataset '{report.dataset}' under {report.root}")
        self.args = (report.format(),)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):
        """Rebuild from the report, so the error survives process pools."""
        return (type(self), (self.report,))


class DatasetExit(SystemExit):
    """:func:`require_valid_dataset` with ``exit_on_error=True`` found errors: exit with the report, no traceback.

    Python prints a ``SystemExit``'s text to stderr and exits with status 1 without a traceback, and
    MONAI's bundle runner lets it through (``ConfigExpression.evaluate`` wraps every ``Exception`` in a
    ``RuntimeError`` whose traceback buries the report; ``SystemExit`` is not an ``Exception``).
    """

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.format())


def require_valid_dataset(
    spec: str | os.PathLike | DatasetSpec,
    root: str | os.PathLike | None = None,
    workers: int = 0,
    *,
    spec_overrides: dict[str, Any] | None = None,
    exit_on_error: bool = False,
    max_image_bytes: int | str | None = None,
    file_timeout_s: float | None = None,
    check_files: bool = True,
    cache: bool = True,
) -> ValidationReport:
    """Validate before a run starts: stop with the whole report on any error, else log the warnings.

    What bundles call in ``initialize``, so a bad case stops the run before the first epoch (with
    the file and the fix), never half-way through training. Pass the spec *file* (and the bundle's
    overrides) rather than a loaded spec, so mistakes in the YAML are reported the same way instead
    of failing while the config is parsed.

    Args:
        spec: a spec YAML file, or a loaded :class:`DatasetSpec`.
        root: data root overriding the spec's.
        workers: processes opening files (see :func:`validate_dataset`).
        spec_overrides: top-level keys replacing the spec file's (what the bundle passes to ``load_spec``).
        exit_on_error: raise :class:`DatasetExit` (a ``SystemExit``: the report on stderr, exit status 1,
            no traceback) instead of :class:`DatasetInvalidError`; for bundle configs run with
            ``python -m monai.bundle run``.
        max_image_bytes, file_timeout_s: limits of :func:`validate_dataset` (default: environment, 2 GiB, 120 s).
        check_files: open every file (``False``: only the spec and the case table, which still stops a
            run on a missing file or a bad table without a traceback; an inference bundle's
            ``--validate_data false``).
        cache: skip cases whose files are unchanged since they last passed (see :func:`validate_dataset`).

    Returns:
        The report, when it has no error.

    Raises:
        DatasetInvalidError: some problem is an error (the report is logged at ERROR level first).
        DatasetExit: the same, with ``exit_on_error=True`` (not logged: Python prints it).

    Example (bundle ``initialize``; no ``@spec``/``@cases`` in this expression, even in an ``else``:
    MONAI resolves every reference of an expression first, and loading a broken spec there fails with a
    traceback)::

        "$medmtl.data.validate.require_valid_dataset(@data_spec, @dataset_dir,
            spec_overrides=@spec_overrides, exit_on_error=True) if @validate_data else None",
        "$@cases.raise_for_errors()",
    """
    report = validate_dataset(
        spec,
        root=root,
        workers=workers,
        progress=False,
        spec_overrides=spec_overrides,
        check_files=check_files,
        max_image_bytes=max_image_bytes,
        file_timeout_s=file_timeout_s,
        duplicates=False,  # a run's splits keep duplicates together already; `medmtl validate` reports them
        cache=cache,
    )
    if not report.ok:
        if exit_on_error:
            raise DatasetExit(report)
        logger.error("%s", report.format())
        raise DatasetInvalidError(report)
    for problem in report.warnings:
        logger.warning("%s", problem)
    logger.info(
        "dataset %s: %d cases, no errors, %d warning(s)", report.dataset, report.num_cases, len(report.warnings)
    )
    return report
