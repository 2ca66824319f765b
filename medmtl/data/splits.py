"""Train / val / test assignment: seeded, stratified by a task, grouped by patient.

The unit of assignment is the group (patient) when the spec has one, so no patient's images leak
between training and test (MURA, nerve ultrasound and BUSI all have several images per patient).
Within each stratum (class of the stratifying task, or "missing") groups are shuffled with the seed
and cut by the fractions, so every split keeps the class proportions. Cases without any label go to
``unlabelled`` (for semi-supervised training) and never to a supervised split.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path

from medmtl.data.problems import Problem
from medmtl.data.spec import DatasetSpec
from medmtl.data.tasks import present_key

__all__ = ["SPLIT_NAMES", "assign_splits", "write_splits", "read_splits"]

SPLIT_NAMES = ("train", "val", "test", "unlabelled")
_FIELD_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def assign_splits(cases: list[dict], spec: DatasetSpec, problems: list[Problem]) -> None:
    """Set ``case["split"]`` for every case in place, following ``spec.splits``."""
    settings = spec.splits
    labelled = []
    for case in cases:
        if any(case[present_key(t.name)] for t in spec.tasks):
            labelled.append(case)
        else:
            case["split"] = "unlabelled"
    if settings.method == "none":
        for case in labelled:
            case["split"] = "train"
    elif settings.method == "fractions":
        _split_by_fractions(labelled, dict(settings.fractions), spec, settings.seed)
    elif settings.method == "kfold":
        _split_kfold(labelled, spec)
    else:
        _split_by_field(labelled, spec, problems)
    _check_groups(cases, problems)


def _units(cases: list[dict], spec: DatasetSpec) -> dict[str, list[dict]]:
    """Cases gathered by group (patient); each case is its own unit without a group template."""
    units: dict[str, list[dict]] = defaultdict(list)
    for case in cases:
        units[case.get("group", case["case_id"])].append(case)
    return units


def _stratum(unit: list[dict], spec: DatasetSpec) -> str:
    name = spec.splits.stratify
    if name is None:
        return ""
    for case in unit:
        if case[present_key(name)]:
            return json.dumps(case[name])
    return "missing"


def _strata(cases: list[dict], spec: DatasetSpec, seed: int) -> list[list[list[dict]]]:
    """Units per stratum, each stratum shuffled with the seed (sorted first so order on disk does not matter)."""
    by_stratum: dict[str, list[list[dict]]] = defaultdict(list)
    units = _units(cases, spec)
    for key in sorted(units):
        by_stratum[_stratum(units[key], spec)].append(units[key])
    rng = random.Random(seed)
    strata = []
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        rng.shuffle(members)
        strata.append(members)
    return strata


def _split_by_fractions(cases: list[dict], fractions: dict[str, float], spec: DatasetSpec, seed: int) -> None:
    names = [n for n in ("train", "val", "test") if fractions.get(n, 0) > 0]
    assigned: dict[str, list[list[dict]]] = {name: [] for name in names}
    for members in _strata(cases, spec, seed):
        bounds, total = [], 0.0
        for name in names:
            total += fractions[name]
            bounds.append(round(total * len(members)))
        start = 0
        for name, end in zip(names, bounds, strict=True):
            assigned[name] += members[start:end]
            start = end
    _fill_empty_splits(assigned)
    for name, units in assigned.items():
        for unit in units:
            for case in unit:
                case["split"] = name


def _fill_empty_splits(assigned: dict[str, list[list[dict]]]) -> None:
    """Give a split with a non-zero fraction at least one unit, taken from the largest split.

    Why: rounding per stratum can leave a small split empty (10 cases in 2 strata at 0.7/0.15/0.15
    round to 4/0/1 per stratum), and an empty validation split silently disables checkpoint
    selection. Larger datasets are unaffected (no split is empty there).
    """
    for units in assigned.values():
        donor = max(assigned, key=lambda n: len(assigned[n]))
        if not units and len(assigned[donor]) > 1:
            units.append(assigned[donor].pop())


def _split_kfold(cases: list[dict], spec: DatasetSpec) -> None:
    """Round-robin over strata so folds get equal sizes and equal class proportions."""
    settings = spec.splits
    position = 0
    for members in _strata(cases, spec, settings.seed):
        for unit in members:
            fold = position % settings.folds
            position += 1
            for case in unit:
                case["split"] = "val" if fold == settings.fold else "train"
                case["fold"] = fold


def _split_by_field(cases: list[dict], spec: DatasetSpec, problems: list[Problem]) -> None:
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
        _split_by_fractions(train, fractions, spec, settings.seed)


def _check_groups(cases: list[dict], problems: list[Problem]) -> None:
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        if "group" in case and case["split"] in ("train", "val", "test"):
            splits_of_group[case["group"]].add(case["split"])
    for group, splits in sorted(splits_of_group.items()):
        if len(splits) > 1:
            problems.append(
                Problem(
                    "group_crosses_splits",
                    f"patient/group '{group}' has cases in {sorted(splits)}",
                    "fix the split column so all cases of a patient share one split",
                )
            )


def write_splits(cases: list[dict], path: str | os.PathLike) -> Path:
    """Save ``{split: [case_id, ...]}`` as JSON (nnU-Net's splits_final.json idea: fixed once, reused)."""
    out: dict[str, list[str]] = defaultdict(list)
    for case in cases:
        out[case["split"]].append(case["case_id"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({k: sorted(v) for k, v in sorted(out.items())}, indent=2))
    os.replace(tmp, path)
    return path


def read_splits(path: str | os.PathLike) -> dict[str, str]:
    """``{case_id: split}`` from a file written by :func:`write_splits`."""
    content = json.loads(Path(path).read_text())
    return {case_id: split for split, ids in content.items() for case_id in ids}
