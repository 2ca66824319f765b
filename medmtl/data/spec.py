"""Data specs: one YAML file describes a dataset's on-disk layout, its tasks, labels and splits.

A spec is declarative so that the same code reads BUSI, MRNet, MURA, JSRT, nerve ultrasound and a
hospital's own NIfTI folders; adding a dataset means writing YAML, not Python. Specs are checked
up front (unknown keys, wrong types, labels for undeclared tasks...) and every problem is reported
at once with the file name.

Layout of a spec (see ``data_specs/*.yaml`` for complete examples)::

    name: busi
    root: ${MEDMTL_DATA_DIR:-../../shared/data}/busi/Dataset_BUSI_with_GT  # relative to this file
    cases:                       # one source or a list of sources
      glob: "*/*.png"            # files (or folders) relative to root
      regex: '^(?P<cls>\\w+)/(?P<stem>(?P=cls) \\((?P<num>\\d+)\\))\\.png$'   # named groups -> fields
    case_id: "{cls}_{num}"       # templates use the fields
    group: null                  # e.g. "{patient}": no patient crosses splits, or a CSV lookup
                                 # {file: labels.csv, key_column: case_id, value_column: patient_id}
    inputs: {image: "{path}"}    # or named views: {axial: ..., coronal: ...}
    tasks:
      - name: lesion
        kind: segmentation
        classes: [background, lesion]
        label: {mask: "{cls}/{stem}_mask*.png", binarize: true}   # several files are OR-ed
      - name: diagnosis
        kind: multiclass
        classes: [normal, benign, malignant]
        label: {field: cls}
    splits: {method: fractions, fractions: {train: 0.7, val: 0.15, test: 0.15}, seed: 0, stratify: diagnosis}

Fields available to every template: those of the case source (regex groups, CSV columns,
Decathlon entry keys) plus ``path`` (the matched path relative to root), ``name`` (file name),
``stem`` (name without extensions) and ``parent`` (parent folder name).
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medmtl.data.datalist import CaseTable, build_cases
from medmtl.data.problems import Problem
from medmtl.data.spec_model import (
    CsvCases,
    CsvLookup,
    DatasetSpecModel,
    DecathlonCases,
    DicomSeriesRules,
    GlobCases,
    LabelSource,
    SpecError,
    SplitSpec,
    TaskSpec,
    clash_message,
)
from medmtl.resources import resolve_resource

__all__ = [
    "GlobCases",
    "CsvCases",
    "DecathlonCases",
    "CsvLookup",
    "LabelSource",
    "TaskSpec",
    "SplitSpec",
    "DatasetSpec",
    "load_spec",
    "SpecError",
]


class DatasetSpec(DatasetSpecModel):
    """A whole dataset: where the files are, what the tasks are, how labels and splits are found.

    Build with :func:`load_spec` (YAML) or directly; ``datalist(split)`` gives MONAI-style dicts.
    """

    # ---- data ------------------------------------------------------------------------------
    def build_cases(
        self,
        root: str | os.PathLike | None = None,
        label_quality: str = "strong",
        splits_file: str | os.PathLike | None = None,
        new_cases: str = "exclude",
    ) -> CaseTable:
        """Every case with its inputs, labels and split (see :mod:`medmtl.data.datalist`).

        ``splits_file``: a run's ``splits.json`` whose recorded splits are kept (when it exists);
        ``new_cases``: where labelled cases it lacks go (see :mod:`medmtl.data.splits`).
        """
        return build_cases(self, root=root, label_quality=label_quality, splits_file=splits_file, new_cases=new_cases)

    def datalist(
        self, split: str = "all", root: str | os.PathLike | None = None, label_quality: str = "strong"
    ) -> list[dict]:
        """MONAI-style dicts for one split (``train``, ``val``, ``test``, ``unlabelled`` or ``all``).

        Each dict has ``case_id``, the input keys (``image`` or named views, absolute paths), one key
        per labelled task and ``<task>_present`` (1/0) for every task. A label the case lacks is left
        out (never replaced by an empty mask). Raises :class:`DataError` listing every problem.
        """
        return self.build_cases(root=root, label_quality=label_quality).datalist(split)


def load_spec(path: str | os.PathLike, **overrides: Any) -> DatasetSpec:
    """Read and validate a spec YAML; raises :class:`SpecError` listing every problem with the file name.

    Args:
        path: the YAML file.
        overrides: top-level keys replacing those of the file (e.g. ``root=...``).
    """
    path = resolve_resource(path)  # a bundle's "data_specs/x.yaml" is found from any working folder
    if not path.is_file():
        raise SpecError([Problem("missing_file", "spec file not found", "check the path", path=str(path))], str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError([Problem("yaml_syntax", str(err), "fix the YAML syntax", path=str(path))], str(path)) from err
    if not isinstance(raw, dict):
        problem = Problem(
            "yaml_structure", f"expected a mapping at top level, got {type(raw).__name__}", path=str(path)
        )
        raise SpecError([problem], str(path))
    raw.update({k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in overrides.items()})
    raw["spec_path"] = str(path.resolve())
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as err:
        problems = [_problem_from_pydantic(e, path, raw) for e in err.errors()]
        if all(e["loc"] for e in err.errors()):  # field errors stop pydantic before the cross-field checks
            problems += _cross_field_problems(raw, path)
        raise SpecError(problems, str(path)) from None


def _cross_field_problems(raw: dict, path: Path) -> list[Problem]:
    """``DatasetSpec._consistent`` checks that can be made on the raw YAML, so they come with the field errors."""
    tasks = raw.get("tasks")
    if not isinstance(tasks, list):
        return []
    names = [t.get("name") for t in tasks if isinstance(t, dict)]
    found = []
    inputs = raw.get("inputs")
    clash = sorted(set(inputs) & {n for n in names if isinstance(n, str)}) if isinstance(inputs, dict) else []
    if clash:
        found.append(Problem("name_clash", clash_message(clash), _FIXES["name_clash"], path=str(path)))
    splits = raw.get("splits")
    if isinstance(splits, dict) and splits.get("stratify") is not None and splits["stratify"] not in names:
        message = f"'splits.stratify': names task {splits['stratify']!r}, which is not one of {names}"
        found.append(Problem("invalid_value", message, "name one of the spec's classification tasks", path=str(path)))
    return found


_README = "data_specs/README.md describes every key"
_FIXES = {
    "literal_error": "use one of the allowed values",
    "enum": "use one of the allowed values",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "int_from_float": "write a whole number",
    "float_parsing": "write a number",
    "float_type": "write a number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write a text value (quote it if YAML reads it as a number or a list)",
    "list_type": "write a list, e.g. [a, b]",
    "tuple_type": "write a list, e.g. [a, b]",
    "dict_type": "write a mapping, e.g. {key: value}",
    "model_type": "write a mapping, e.g. {key: value}",
    "name_clash": "rename the input or the task (and the bundle configs that name it)",
}
_RENAME = {
    "tasks": "rename the task (and the bundle configs and overrides that name it)",
    "inputs": "rename the input (and the bundle configs that name it)",
}


@lru_cache(maxsize=1)
def _known_keys() -> tuple[str, ...]:
    """Every key a spec may use, at any level (for "did you mean" on a misspelt one)."""
    models = (DatasetSpec, TaskSpec, LabelSource, CsvLookup, SplitSpec, GlobCases, CsvCases, DecathlonCases)
    models += (DicomSeriesRules,)
    return tuple(sorted({name for model in models for name in model.model_fields if name != "spec_path"}))


def _located(error: dict, raw: dict | None) -> tuple[str, str | None]:
    """``("tasks.0.kind", "lesion")``: the key path, and the task's name when the key is in a named task."""
    parts = [p for p in error["loc"] if not str(p).startswith(("function-after", "tagged-union")) and p != "[key]"]
    location = ".".join(str(p) for p in parts)
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    if len(parts) > 1 and parts[0] == "tasks" and isinstance(parts[1], int) and isinstance(tasks, list):
        task = tasks[parts[1]] if parts[1] < len(tasks) else None
        if isinstance(task, dict) and isinstance(task.get("name"), str):
            return location, task["name"]
    return location, None


def _problem_from_pydantic(error: dict, path: Path, raw: dict | None = None) -> Problem:
    location, task = _located(error, raw)
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = f": task '{task}' has no such key" if task else ""
        close = difflib.get_close_matches(location.rsplit(".", 1)[-1], _known_keys(), n=1, cutoff=0.75)
        fix = f"did you mean '{close[0]}'? Otherwise remove it" if close else "remove it or check its spelling"
        return Problem("unknown_key", f"unknown key '{location}'{owner}", fix, path=str(path))
    if kind == "missing":
        owner = f" from task '{task}'" if task else ""
        return Problem(
            "missing_key", f"required key '{location}' is missing{owner}", f"add it ({_README})", path=str(path)
        )
    if kind in ("reserved_name", "name_clash"):
        where = f"'{location}'{f' (task {task!r})' if task else ''}: " if location else ""
        fix = _RENAME[location.split(".")[0]] if kind == "reserved_name" else _FIXES[kind]
        return Problem(kind, where + error["msg"], fix, path=str(path))
    received = error.get("input")
    owner = f" (task '{task}')" if task else ""
    text = f"'{location}'{owner}: {error['msg'].replace('a valid tuple', 'a list')}" + (
        f" (got {received!r})" if not isinstance(received, dict | list) else ""
    )
    fix = _FIXES.get(kind, "")
    return Problem("invalid_value", text, f"{fix}; {_README}" if fix else _README, path=str(path))
