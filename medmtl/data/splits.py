"""Train / val / test assignment that never moves a case: hashed per patient, frozen once written.

A hospital study grows: cases are added (and some removed) between runs. A split computed by
shuffling and cutting the whole list moves earlier cases when one is added (15 of 60 in issue 18,
some from test into training). Here a case's split depends only on its own unit (its group, i.e.
patient, when the spec has one, else its case id) and the seed: ``sha256(f"{seed}:{unit}")`` is
mapped to ``u`` in [0, 1) and compared with the cumulative fractions (k-fold: fold ``floor(u * k)``).
Adding or removing other cases never changes ``u``, so no earlier case moves, and a patient's images
share one ``u`` (no patient crosses splits). Class proportions (``stratify``) hold in expectation,
within binomial noise (sd ``sqrt(n f (1 - f))`` cases for a class of ``n``); they are no longer cut
exactly, and a rare class may miss a small split.

Trade-off for tiny datasets: a split (or fold) the hash leaves empty gets the unit whose ``u`` lies
nearest to its interval (deterministic; that one unit may move back once the dataset grows enough
to fill the split itself, which is one reason runs freeze their splits, below).

Once a run exists, its ``splits.json`` is the source of truth (nnU-Net's ``splits_final.json``):
recorded cases keep their recorded split whatever the hash says (a file from an older medmtl too),
and cases not in the file are *new*: reported, and placed per ``new_cases`` (``exclude`` by default:
split ``new``, outside train/val/test but still predictable; never silently into test). A new case
of a recorded patient joins its patient's split. Recorded cases that no longer exist stay in the
file. Cases without any label go to ``unlabelled`` and never to a supervised split.

Duplicate images (``duplicate_groups``, found by :mod:`medmtl.data.duplicates` when the spec's
``splits.duplicates`` is ``together``) join one unit with their patients: a unit is then the union
of the patient groups and duplicate groups that share a case, hashed under its smallest member key,
so cases outside any duplicate group keep their unit, and so their split (but for the tiny-dataset
fill below, which counts units).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from medmtl.atomic_io import atomic_write
from medmtl.data.problems import DataError, Problem, Severity
from medmtl.data.spec_model import DatasetSpecModel
from medmtl.data.tasks import present_key

__all__ = [
    "SPLIT_NAMES",
    "RECORDED_SPLITS",
    "NEW_CASES_OPTIONS",
    "NEW_SPLIT",
    "unit_position",
    "assign_splits",
    "read_splits",
    "record_splits",
    "write_splits",
]

logger = logging.getLogger(__name__)

NEW_SPLIT = "new"
"""Split of new cases left out of train/val/test (``new_cases="exclude"``); never written to the file."""
RECORDED_SPLITS = ("train", "val", "test", "unlabelled", "exclude")
"""Split names a ``splits.json`` may hold (``exclude``: a split field value mapped to ``exclude``)."""
SPLIT_NAMES = (*RECORDED_SPLITS, NEW_SPLIT)
NEW_CASES_OPTIONS = ("exclude", "train", "val", "test", "assign")
"""Where new cases go: ``exclude`` (split ``new``), a named split, or ``assign`` (the hash rule)."""
_SUPERVISED = ("train", "val", "test")
_GROUP_PRIORITY = ("test", "val", "train", "exclude")
"""A new case of a patient recorded in several splits joins the first of these (never leaks test)."""
_LISTED = 5
"""Case ids named per warning; the rest are counted."""
_FIELD_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def unit_position(unit: str, seed: int | str) -> float:
    """``u`` in [0, 1) of a unit (patient or case id): the first 64 bits of ``sha256(f"{seed}:{unit}")``."""
    digest = hashlib.sha256(f"{seed}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    cases: list[dict],
    spec: DatasetSpecModel,
    problems: list[Problem],
    splits_file: str | os.PathLike | None = None,
    new_cases: str = "exclude",
    duplicate_groups: Mapping[str, int] | None = None,
) -> None:
    """Set ``case["split"]`` for every case in place: the recorded split, else the spec's rule.

    Args:
        cases: the case dicts (``case_id``, ``<task>_present``, optional ``group`` and raw ``split`` field).
        spec: the dataset spec (its ``splits`` settings and tasks).
        problems: where problems are appended (a malformed ``splits_file`` is an error; new and
            vanished cases are warnings, also logged).
        splits_file: a run's ``splits.json``; cases recorded there keep their split. A path that
            does not exist yet means no run yet: every case gets the spec's rule.
        new_cases: where labelled cases missing from ``splits_file`` go, one of
            :data:`NEW_CASES_OPTIONS`.
        duplicate_groups: ``{case_id: duplicate group}``; the hash rule keeps each group in one split
            (recorded splits are never moved).

    Raises:
        ValueError: ``new_cases`` is not one of :data:`NEW_CASES_OPTIONS`.
    """
    if new_cases not in NEW_CASES_OPTIONS:
        raise ValueError(f"new_cases is {new_cases!r}; use one of {list(NEW_CASES_OPTIONS)}")
    path = Path(splits_file) if splits_file is not None else None
    frozen = path is not None and (path.exists() or path.is_symlink())
    labelled = []
    for case in cases:
        if any(case[present_key(t.name)] for t in spec.tasks):
            labelled.append(case)
        else:
            case["split"] = "unlabelled"
    for case, unit in _merged_units(labelled, duplicate_groups or {}):
        case["_unit"] = unit
    try:
        _apply_rule(labelled, spec, problems, fill=not frozen)
        if spec.splits.cv_folds is not None:
            _split_cv_fold(labelled, spec, fill=not frozen)
    finally:
        for case in labelled:
            case.pop("_unit", None)
    fix = "fix the split column so all cases of a patient share one split"
    if frozen:
        recorded = _read_recorded(path, problems)
        if recorded is None:
            return
        _apply_recorded(cases, recorded, path, new_cases, problems)
        fix = f"edit {path} so all cases of a patient share one split, or delete it to split afresh (new run)"
    _check_groups(cases, problems, fix)


# ---------------------------------------------------------------------------------------------
# the rule: hash per unit


def _apply_rule(cases: list[dict], spec: DatasetSpecModel, problems: list[Problem], fill: bool) -> None:
    settings = spec.splits
    if settings.method == "none":
        for case in cases:
            case["split"] = "train"
    elif settings.method == "fractions":
        _split_by_fractions(cases, dict(settings.fractions), spec, fill)
    elif settings.method == "kfold":
        _split_kfold(cases, spec, fill)
    else:
        _split_by_field(cases, spec, problems, fill)
    if fill and settings.stratify is not None and settings.method != "none":
        _log_missing_classes(cases, spec)


def _log_missing_classes(cases: list[dict], spec: DatasetSpecModel) -> None:
    """Say which split got no case of a class of the ``stratify`` task (the hash keeps classes only in expectation)."""
    name = spec.splits.stratify
    names = spec.task(name).class_names

    def label(value: object) -> str:
        return f"'{names[value]}'" if isinstance(value, int) and 0 <= value < len(names) else json.dumps(value)

    seen = {(c["split"], label(c[name])) for c in cases if c[present_key(name)]}
    classes = sorted({value for _, value in seen})
    missing = [
        f"'{split}' has no {value}"
        for split in sorted({c["split"] for c in cases} & set(_SUPERVISED))
        for value in classes
        if (split, value) not in seen
    ]
    if missing:
        logger.warning(
            "splits are hashed per patient, so a class of task '%s' may miss a small split: %s; its metrics there "
            "are undefined (too few cases of that class: consider k-fold, or more data)",
            name,
            ", ".join(missing),
        )


def _units(cases: list[dict]) -> dict[str, list[dict]]:
    """Cases gathered by group (patient, merged with duplicate groups); each case is its own unit otherwise."""
    units: dict[str, list[dict]] = defaultdict(list)
    for case in cases:
        units[case.get("_unit", case.get("group", case["case_id"]))].append(case)
    return units


def _merged_units(cases: list[dict], duplicate_groups: Mapping[str, int]) -> list[tuple[dict, str]]:
    """``(case, unit)`` for cases whose patient unit shares a duplicate group with another unit.

    The merged unit is named by its smallest member key, so it hashes like one of its patients.
    """
    if not duplicate_groups:
        return []
    from scipy.cluster.hierarchy import DisjointSet  # here: SciPy's clustering costs `medmtl --help` 0.3 s

    own = {id(case): case.get("group", case["case_id"]) for case in cases}
    keys = DisjointSet(sorted(set(own.values())))
    first: dict[int, str] = {}
    for case in cases:
        group = duplicate_groups.get(case["case_id"])
        if group is not None:
            keys.merge(first.setdefault(group, own[id(case)]), own[id(case)])
    merged = []
    for case in cases:
        members = keys.subset(own[id(case)])
        if len(members) > 1:
            merged.append((case, min(members)))
    return merged


def _bins(
    cases: list[dict],
    spec: DatasetSpecModel,
    bounds: Sequence[tuple[object, float, float]],
    fill: bool,
    seed: int | str | None = None,
) -> None:
    """Set ``case["_bin"]`` to the bin whose ``[low, high)`` holds the unit's ``u``; fill empty bins if asked."""
    units = _units(cases)
    seed = spec.splits.seed if seed is None else seed
    position = {key: unit_position(key, seed) for key in units}
    chosen: dict[str, object] = {}
    for key, u in position.items():
        chosen[key] = next((name for name, _, high in bounds if u < high), bounds[-1][0])
    if fill:
        _fill_empty_bins(units, position, chosen, bounds)
    for key, unit in units.items():
        for case in unit:
            case["_bin"] = chosen[key]


def _fill_empty_bins(
    units: dict[str, list[dict]],
    position: dict[str, float],
    chosen: dict[str, object],
    bounds: Sequence[tuple[object, float, float]],
) -> None:
    """Give every bin (split or fold) at least one unit when there are enough units.

    Why: on a tiny dataset the hash can leave a split empty, and an empty validation split silently
    disables checkpoint selection. The unit moved is the one whose ``u`` is nearest to the empty
    bin's interval (ties: unit key), taken from a bin that keeps at least one unit; it depends on
    the other cases only while a bin is empty, and datasets whose bins all fill naturally (beyond
    a few dozen units) are unaffected. Empty *classes* in a split are not filled: that would move
    the units of every rare class whenever the dataset grows.
    """
    if len(units) < len(bounds):
        return
    for name, low, high in bounds:
        if name in chosen.values():
            continue
        count: dict[object, int] = defaultdict(int)
        for bin_name in chosen.values():
            count[bin_name] += 1
        donors = [key for key in sorted(units) if count[chosen[key]] > 1]
        nearest = min(donors, key=lambda k: (max(low - position[k], position[k] - high, 0.0), k))
        logger.info("split %r got no unit from the hash; unit %r (hash-nearest) moved into it", name, nearest)
        chosen[nearest] = name


def _split_by_fractions(cases: list[dict], fractions: dict[str, float], spec: DatasetSpecModel, fill: bool) -> None:
    bounds, total = [], 0.0
    for name in _SUPERVISED:
        if fractions.get(name, 0) > 0:
            bounds.append((name, total, total + fractions[name]))
            total += fractions[name]
    _bins(cases, spec, bounds, fill)
    for case in cases:
        case["split"] = case.pop("_bin")


def _split_kfold(cases: list[dict], spec: DatasetSpecModel, fill: bool) -> None:
    """Fold ``floor(u * k)``: the same unit is in the same fold for every ``fold`` setting."""
    settings = spec.splits
    bounds = [(fold, fold / settings.folds, (fold + 1) / settings.folds) for fold in range(settings.folds)]
    _bins(cases, spec, bounds, fill)
    for case in cases:
        case["fold"] = case.pop("_bin")
        case["split"] = "val" if case["fold"] == settings.fold else "train"


def _split_cv_fold(cases: list[dict], spec: DatasetSpecModel, fill: bool) -> None:
    """Fold the development cases (``train`` + ``val``); fold ``cv_fold`` is ``val``. ``test`` stays as it is.

    The fold hash uses its own seed (``"<seed>:cv"``), independent of the train/test position, so the
    folds of a fractions split are as even as those of any other rule.
    """
    settings = spec.splits
    development = [case for case in cases if case["split"] in ("train", "val")]
    folds = settings.cv_folds or 0
    bounds = [(fold, fold / folds, (fold + 1) / folds) for fold in range(folds)]
    _bins(development, spec, bounds, fill, seed=f"{settings.seed}:cv")
    for case in development:
        case["fold"] = case.pop("_bin")
        case["split"] = "val" if case["fold"] == settings.cv_fold else "train"


def _split_by_field(cases: list[dict], spec: DatasetSpecModel, problems: list[Problem], fill: bool) -> None:
    settings = spec.splits
    mapping = settings.values or _FIELD_ALIASES
    train = []
    for case in cases:
        raw = case.get("split")  # the raw field value, stored by the datalist builder
        split = mapping.get(str(raw)) if raw is not None else None
        if split is None:
            problems.append(
                Problem(
                    "invalid_split",
                    f"split field '{settings.field}' is {raw!r}, not one of {sorted(mapping)}",
                    "add the value to splits.values in the spec",
                    case_id=case["case_id"],
                )
            )
            split = "exclude"
        case["split"] = split
        if split == "train":
            train.append(case)
    if settings.val_fraction > 0:
        fractions = {"train": 1 - settings.val_fraction, "val": settings.val_fraction}
        _split_by_fractions(train, fractions, spec, fill)


def _check_groups(cases: list[dict], problems: list[Problem], fix: str) -> None:
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        if "group" in case and case["split"] in _SUPERVISED:
            splits_of_group[case["group"]].add(case["split"])
    for group, splits in sorted(splits_of_group.items()):
        if len(splits) > 1:
            problems.append(
                Problem("group_crosses_splits", f"patient/group '{group}' has cases in {sorted(splits)}", fix)
            )


# ---------------------------------------------------------------------------------------------
# the frozen file


def _apply_recorded(
    cases: list[dict], recorded: dict[str, str], path: Path, new_cases: str, problems: list[Problem]
) -> None:
    """Recorded cases take their recorded split; new ones go with their patient, else per ``new_cases``."""
    by_group: dict[str, set[str]] = defaultdict(set)
    fresh = []
    for case in cases:
        split = recorded.get(case["case_id"])
        labelled = case["split"] != "unlabelled"
        if split is None or (split == "unlabelled" and labelled):
            fresh.append(case)
            continue
        if split != case["split"]:
            case.pop("fold", None)  # the hash fold no longer describes it
        case["split"] = split
        if "group" in case and split in _GROUP_PRIORITY:
            by_group[case["group"]].add(split)
    with_patient: list[dict] = []
    placed: list[dict] = []
    unlabelled: list[dict] = []
    for case in fresh:
        splits = by_group.get(case["group"], set()) if "group" in case else set()
        previous = case["split"]
        if case["split"] == "unlabelled":
            unlabelled.append(case)
        elif splits:
            case["split"] = next(s for s in _GROUP_PRIORITY if s in splits)
            with_patient.append(case)
        else:
            case["split"] = NEW_SPLIT if new_cases == "exclude" else previous if new_cases == "assign" else new_cases
            placed.append(case)
        if case["split"] != previous:
            case.pop("fold", None)
    _report_new(path, new_cases, with_patient, placed, unlabelled, recorded, problems)
    present = {case["case_id"] for case in cases}
    gone = sorted(set(recorded) - present)
    if gone:
        _warn(
            problems,
            Problem(
                "recorded_cases_missing",
                f"{len(gone)} case(s) recorded in the splits file are no longer in the dataset "
                f"({_first(gone)}); the file keeps them",
                "restore their files if they were removed by mistake; otherwise nothing to do",
                path=str(path),
                severity=Severity.WARNING,
            ),
        )


def _report_new(
    path: Path,
    new_cases: str,
    with_patient: list[dict],
    placed: list[dict],
    unlabelled: list[dict],
    recorded: dict[str, str],
    problems: list[Problem],
) -> None:
    if with_patient:
        ids = [f"{c['case_id']} -> {c['split']}" for c in with_patient]
        _warn(
            problems,
            Problem(
                "new_cases",
                f"{len(with_patient)} new case(s) not in the splits file belong to a patient/group already "
                f"recorded there and join that patient's split, so no patient crosses splits ({_first(ids)})",
                "nothing to do, if they are the same patients; otherwise give them their own patient ids",
                path=str(path),
                severity=Severity.WARNING,
            ),
        )
    if placed:
        now_labelled = sum(recorded.get(c["case_id"]) == "unlabelled" for c in placed)
        counts = defaultdict(int)
        for case in placed:
            counts[case["split"]] += 1
        where = ", ".join(f"{n} in '{s}'" for s, n in sorted(counts.items()))
        also = f", {now_labelled} of them recorded as unlabelled and labelled since" if now_labelled else ""
        if new_cases == "exclude":
            action = (
                f"left out of train/val/test (split '{NEW_SPLIT}', still predicted with infer_split "
                f"'{NEW_SPLIT}' or 'all')"
            )
            fix = (
                "to use them, choose where they go: new_cases train / val / test / assign (hash rule); "
                "in a bundle: --new_cases train"
            )
        else:
            action = f"placed by new_cases={new_cases!r}: {where}"
            fix = "nothing to do if this is intended; the splits file records them from this run on"
        _warn(
            problems,
            Problem(
                "new_cases",
                f"{len(placed)} new labelled case(s) are not in the splits file{also} "
                f"({_first([c['case_id'] for c in placed])}): {action}",
                fix,
                path=str(path),
                severity=Severity.WARNING,
            ),
        )
    if unlabelled:
        logger.info("%d new unlabelled case(s) not in %s go to 'unlabelled'", len(unlabelled), path)


def _first(ids: Sequence[str]) -> str:
    shown = ", ".join(str(i) for i in ids[:_LISTED])
    return f"first: {shown}" + (f" and {len(ids) - _LISTED} more" if len(ids) > _LISTED else "")


def _warn(problems: list[Problem], problem: Problem) -> None:
    """Warnings about the splits file also go to the log: a bundle shows no warning-only problem list."""
    problems.append(problem)
    logger.warning("%s", problem)


_FILE_FIX = (
    "restore the file (e.g. from the run's MLflow artifacts), correct it by hand (a JSON object "
    "{split: [case ids]} with splits in " + str(list(RECORDED_SPLITS)) + ", each id once), or delete it "
    "to assign splits afresh (the test set may change: start a new run)"
)


def _read_recorded(path: Path, problems: list[Problem]) -> dict[str, str] | None:
    """``{case_id: split}`` from ``path``, or None with one error listing everything wrong with it."""
    if path.exists() and not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file (a pipe, device or socket)"
        return _bad_file(problems, path, f"cannot read the splits file: it is {what}, not opened")
    try:
        content = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKeyError as err:
        return _bad_file(
            problems, path, f"the splits file is malformed: split {err} appears twice (JSON keeps the last)"
        )
    except OSError as err:
        return _bad_file(problems, path, f"cannot read the splits file: {err.strerror or err}")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return _bad_file(problems, path, f"the splits file is not valid JSON ({err})")
    if not isinstance(content, dict):
        return _bad_file(
            problems, path, f"the splits file holds a JSON {type(content).__name__}, not an object {{split: [ids]}}"
        )
    found: list[str] = []
    unknown = sorted(str(name) for name in content if name not in RECORDED_SPLITS)
    if unknown:
        found.append(f"unknown split name(s) {unknown} (known: {list(RECORDED_SPLITS)})")
    recorded: dict[str, str] = {}
    twice: list[str] = []
    for split, ids in content.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            found.append(f"split '{split}' is not a list of case id strings")
            continue
        for case_id in ids:
            if recorded.setdefault(case_id, split) != split:
                twice.append(f"{case_id} ({recorded[case_id]}, {split})")
    if twice:
        found.append(f"{len(twice)} case id(s) in two splits ({_first(twice)})")
    if found:
        return _bad_file(problems, path, "the splits file is malformed: " + "; ".join(found))
    return recorded


class _DuplicateKeyError(ValueError):
    """A JSON object with one key twice: ``json`` would silently keep the last value."""


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKeyError(repr(key))
    return dict(pairs)


def _bad_file(problems: list[Problem], path: Path, message: str) -> None:
    problems.append(Problem("invalid_splits_file", message, _FILE_FIX, path=str(path)))
    return None


def read_splits(path: str | os.PathLike) -> dict[str, str]:
    """``{case_id: split}`` from a file written by :func:`record_splits` (JSON only, nothing executed).

    Raises:
        DataError: the file cannot be read or is malformed (one error naming the file and the fix).
    """
    problems: list[Problem] = []
    recorded = _read_recorded(Path(path), problems)
    if recorded is None:
        raise DataError(problems, f"splits file {path}")
    return recorded


def record_splits(cases: list[dict], path: str | os.PathLike) -> int:
    """Write ``splits.json`` when it is missing; otherwise add the cases it lacks, keeping every entry.

    Cases in split ``new`` (left out by ``new_cases="exclude"``) are not recorded, so a later run can
    still place them. The only entry that changes is a case recorded ``unlabelled`` that has since
    got labels and was placed in a split. Written atomically; an unchanged file is not rewritten.

    Args:
        cases: the cases built with ``splits_file=path`` (``CaseTable.cases``).
        path: the run's ``splits.json``.

    Returns:
        How many cases were added (or moved out of ``unlabelled``): 0 when the file was up to date.

    Raises:
        DataError: the file is malformed, or records another split for a case than ``cases`` give
            (the cases were not built from this file).
    """
    path = Path(path)
    existing = path.exists() or path.is_symlink()
    recorded = read_splits(path) if existing else {}
    changed, conflicts = {}, []
    for case in cases:
        before, split = recorded.get(case["case_id"]), case["split"]
        if split == NEW_SPLIT or before == split:
            continue
        if before is None or before == "unlabelled":
            changed[case["case_id"]] = split
        else:
            conflicts.append(f"{case['case_id']} ({before} in the file, {split} now)")
    if conflicts:
        problem = Problem(
            "splits_file_conflict",
            f"the splits file records other splits for {len(conflicts)} case(s) ({_first(conflicts)}); it is not "
            "overwritten",
            "build the cases from this file (build_cases(..., splits_file=path)) so recorded splits are kept",
            path=str(path),
        )
        raise DataError([problem], f"splits file {path}")
    if existing and not changed:
        return 0
    write_splits({**recorded, **changed}, path)
    return len(changed)


def write_splits(assignment: list[dict] | dict[str, str], path: str | os.PathLike) -> Path:
    """Save ``{split: [case_id, ...]}`` as JSON atomically (overwrites: runs use :func:`record_splits`).

    Args:
        assignment: case dicts with ``case_id`` and ``split``, or ``{case_id: split}``.
        path: the file to (over)write.
    """
    pairs = assignment.items() if isinstance(assignment, dict) else ((c["case_id"], c["split"]) for c in assignment)
    out: dict[str, list[str]] = defaultdict(list)
    for case_id, split in pairs:
        if split != NEW_SPLIT:  # unplaced new cases stay unrecorded, so a later run can place them
            out[split].append(case_id)
    text = json.dumps({k: sorted(v) for k, v in sorted(out.items())}, indent=2)
    return atomic_write(path, text, mode=0o644)  # not mkstemp's 0600: colleagues evaluating the run read it
