"""From a spec to a table of cases: find files, read label tables, resolve templates, split.

Everything a spec describes is resolved here, once, with every problem collected (duplicate ids,
ids that are empty or hold control characters, unmapped label values, missing CSV columns, paths and
label tables escaping the data root, tables that are folders, FIFOs, not UTF-8 or not comma-separated...),
plus warnings for what silently shrinks a dataset: a mask template that finds no file for any case (a
typo), masks that no case has (their image lost), a case without the mask all others have (its mask
lost), case-table rows the cases regex skips. Reading image
contents is left to :mod:`medmtl.data.validate` and the MONAI loaders; the only files opened here
are label tables and, for ``mask_nonempty`` labels, the masks themselves.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import glob as globlib
import io
import json
import math
import os
import re
import stat
import string
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.duplicates import Duplicates, find_duplicates
from medmtl.data.problems import DataError, Problem, Severity
from medmtl.data.selection import select_cases
from medmtl.data.spec_model import (
    STUDY_KEY,
    CsvCases,
    CsvLookup,
    DatasetSpecModel,
    DecathlonCases,
    GlobCases,
    LabelSource,
    TaskSpec,
)
from medmtl.data.splits import SPLIT_NAMES, assign_splits
from medmtl.data.tasks import LabelQuality, TaskKind, present_key

__all__ = ["CaseTable", "build_cases", "stem_of"]

_MISSING_VALUES = {"", "nan", "na", "n/a", "none", "null", "?", "-"}


def stem_of(name: str) -> str:
    """File name without its extension(s): ``case_01.nii.gz`` -> ``case_01``, ``benign (3).png`` -> ``benign (3)``."""
    stem, suffix = os.path.splitext(name)
    if suffix.lower() in {".gz", ".bz2", ".xz", ".zip"}:
        stem = os.path.splitext(stem)[0]
    return stem


@dataclass
class CaseTable:
    """Every case of a dataset with inputs, labels and split; problems found while building it.

    ``cases`` holds one dict per case in datalist form plus ``split`` (and ``group`` when the spec
    groups cases by patient, ``study`` when it has ``aggregate_by``). ``duplicates`` holds the duplicate images found when the splits were
    computed afresh with ``splits.duplicates: together`` (``None`` when they were not looked for).
    """

    spec: DatasetSpecModel
    root: Path
    cases: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    duplicates: Duplicates | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == Severity.ERROR]

    def raise_for_errors(self) -> None:
        if self.errors:
            raise DataError(self.problems, f"dataset '{self.spec.name}' under {self.root}")

    def datalist(self, split: str = "all") -> list[dict]:
        """The cases of one split as MONAI dicts (without ``split`` and ``fold``; ``group`` stays); raises on errors.

        ``fold`` is the case table's record of the hash fold; a case moved by a run's ``splits.json`` has
        none, and a batch mixing cases with and without a key cannot be collated.
        """
        self.raise_for_errors()
        if split not in (*SPLIT_NAMES, "all", "labelled"):
            raise ValueError(f"unknown split '{split}': use one of {[*SPLIT_NAMES, 'labelled', 'all']}")
        keep = [
            c
            for c in self.cases
            if split == "all" or c["split"] == split or (split == "labelled" and c["split"] != "unlabelled")
        ]
        return [{k: v for k, v in c.items() if k not in ("split", "fold")} for c in keep]

    def study_of(self, split: str = "all") -> dict[str, str] | None:
        """``{case_id: study id}`` of one split's cases, or ``None`` when the spec has no ``aggregate_by``.

        What the evaluation groups images by (:mod:`medmtl.metrics.studies`); raises on errors, as :meth:`datalist`.
        """
        if self.spec.aggregate_by is None:
            return None
        return {c["case_id"]: c[STUDY_KEY] for c in self.datalist(split)}

    def label_counts(self, split: str = "all") -> dict[str, dict[str, int]]:
        """Per task: labelled cases and cases per class (segmentation: labelled cases only)."""
        rows = self.cases if split == "all" else [c for c in self.cases if c["split"] == split]
        counts: dict[str, dict[str, int]] = {}
        for task in self.spec.tasks:
            labelled = [c for c in rows if c[present_key(task.name)]]
            entry = {"labelled": len(labelled), "missing": len(rows) - len(labelled)}
            if task.kind != TaskKind.SEGMENTATION:
                for i, cls in enumerate(task.class_names):
                    if task.kind == TaskKind.MULTILABEL:
                        entry[cls] = sum(int(c[task.name][i]) for c in labelled)
                    elif task.kind == TaskKind.BINARY:
                        entry[cls] = sum(int(c[task.name]) == i for c in labelled)
                    else:
                        entry[cls] = sum(c[task.name] == i for c in labelled)
            counts[task.name] = entry
        return counts

    def split_counts(self) -> dict[str, int]:
        return dict(Counter(c["split"] for c in self.cases))

    def pos_weights(self, split: str = "train") -> dict[str, list[float]]:
        """``negatives / positives`` per binary/multilabel task, counted on ``split`` (MRNet's weighting).

        Tasks whose spec sets a number keep it; a label with no positive gets 1.0. Why our own:
        scikit-learn has no ``pos_weight`` (``BCEWithLogitsLoss``'s ratio), only per-class weights.
        """
        rows = [c for c in self.cases if c["split"] == split]
        weights: dict[str, list[float]] = {}
        for task in self.spec.tasks:
            if task.kind not in (TaskKind.BINARY, TaskKind.MULTILABEL) or task.pos_weight is None:
                continue
            if task.pos_weight != "auto":
                given = task.pos_weight
                weights[task.name] = list(given) if isinstance(given, tuple) else [float(given)] * task.num_outputs
                continue
            labels = np.array(
                [np.atleast_1d(c[task.name]) for c in rows if c[present_key(task.name)]], dtype=float
            ).reshape(-1, task.num_outputs)
            pos = labels.sum(axis=0)
            neg = len(labels) - pos
            weights[task.name] = [float(n / p) if p > 0 else 1.0 for n, p in zip(neg, pos, strict=True)]
        return weights

    def class_weights(self, split: str = "train") -> dict[str, list[float]]:
        """Per multiclass task with ``class_weights: auto``: ``n / (K * n_k)`` counted on ``split``.

        That is scikit-learn's ``compute_class_weight("balanced")`` with K all the task's classes;
        tasks whose spec gives numbers keep them; a class absent from the split gets weight 1.0.
        """
        rows = [c for c in self.cases if c["split"] == split]
        weights: dict[str, list[float]] = {}
        for task in self.spec.tasks:
            if task.class_weights is None:
                continue
            if task.class_weights != "auto":
                weights[task.name] = list(task.class_weights)
                continue
            if task.kind != TaskKind.MULTICLASS:
                raise ValueError(
                    f"class_weights 'auto' is counted for multiclass tasks; task '{task.name}' is {task.kind.value}"
                )
            from sklearn.utils.class_weight import compute_class_weight  # here: scikit-learn imports pandas

            labels = np.array([int(c[task.name]) for c in rows if c[present_key(task.name)]], dtype=np.int64)
            seen, k = np.unique(labels), task.num_outputs
            # scikit-learn divides by the classes seen (it refuses absent ones); rescaled to all K classes
            balanced = compute_class_weight("balanced", classes=seen, y=labels) * (len(seen) / k) if len(seen) else []
            by_class = dict(zip(seen.tolist(), balanced, strict=True))
            weights[task.name] = [float(by_class.get(i, 1.0)) for i in range(k)]
        return weights


# ---------------------------------------------------------------------------------------------
# building


def build_cases(
    spec: DatasetSpecModel,
    root: str | os.PathLike | None = None,
    label_quality: str = "strong",
    splits_file: str | os.PathLike | None = None,
    new_cases: str = "exclude",
) -> CaseTable:
    """Resolve a spec against its data root: every case, label and split, every problem collected.

    Args:
        spec: the dataset spec.
        root: data root overriding the spec's.
        label_quality: ``strong`` uses each task's ``label``; ``weak`` uses ``weak_label`` where a task
            has one (weak-label pre-training), ``label`` otherwise.
        splits_file: a run's ``splits.json``: recorded cases keep their split (ignored while the
            file does not exist); see :mod:`medmtl.data.splits`.
        new_cases: where labelled cases missing from ``splits_file`` go: ``exclude`` (split ``new``),
            ``train``, ``val``, ``test`` or ``assign`` (the spec's rule).
    """
    quality = LabelQuality(label_quality)
    root_path = spec.resolved_root(root)
    table = CaseTable(spec=spec, root=root_path)
    if not root_path.is_dir():
        table.problems.append(
            Problem(
                "missing_root",
                "data root folder does not exist",
                "pass --root DIR or set the spec's root",
                path=str(root_path),
            )
        )
        return table
    resolver = _Resolver(root_path, table.problems)
    census = [_MaskCensus(t.name, which, source.mask) for t, which, source in _mask_sources(spec)]
    seen: dict[str, _Origin] = {}
    for source, fields, origin in _iter_records(spec, root_path, table.problems):
        masks = _take_census(spec, source, fields, resolver, census)
        case = _build_case(spec, source, fields, resolver, quality, table.problems, masks, origin)
        if case is None:
            continue
        if case["case_id"] in seen:
            first = seen[case["case_id"]]
            table.problems.append(
                Problem(
                    "duplicate_case_id",
                    f"case id '{case['case_id']}' is produced by both {str(first)!r} and {str(origin)!r}",
                    "make the spec's case_id template unique (add the folder or split field), "
                    "or remove the duplicate entry",
                    path=str(root_path / origin.file),
                    case_id=case["case_id"],
                )
            )
            continue
        seen[case["case_id"]] = origin
        table.cases.append(case)
        labelled = any(case[present_key(t.name)] for t in spec.tasks)
        for entry in census:
            entry.count(case, source, labelled)
    # no case read because of errors (an unreadable case table): every mask would look stray, and the
    # advice to delete stray masks would destroy the labels; the errors say what to fix first
    census = census if table.cases or not table.errors else []
    for entry in census:
        if entry.which == "label":  # a case with only the weak mask is weakly labelled, not a lost file
            for weak in (e for e in census if e.task == entry.task and e.which == "weak_label"):
                entry.excuse(weak.hits)
        table.problems += entry.problems(root_path, resolver.used)
    if not table.cases and not table.errors:
        patterns = [
            getattr(s, "glob", None) or getattr(s, "csv", None) or getattr(s, "decathlon", None)
            for s in spec.case_sources
        ]
        table.problems.append(
            Problem(
                "no_cases",
                f"no case found with {patterns}",
                "check the root and the cases glob/regex",
                path=str(root_path),
            )
        )
    table.problems[:] = _collapse(table.problems)
    table.duplicates = _find_duplicates(table, splits_file)
    groups = table.duplicates.group_of() if table.duplicates is not None else None
    assign_splits(
        table.cases, spec, table.problems, splits_file=splits_file, new_cases=new_cases, duplicate_groups=groups
    )
    if table.duplicates is not None:
        table.duplicates = table.duplicates.with_splits(table.cases)
    if spec.select is not None:
        _select(table)
    return table


def _select(table: CaseTable) -> None:
    """Keep the cases the spec's ``select`` names (after the splits: a kept case keeps its split)."""
    before = len(table.cases)
    table.cases[:] = select_cases(table.cases, table.spec.select, table.spec.tasks)
    if before and not table.cases and not table.errors:
        table.problems.append(
            Problem(
                "select_empty",
                f"select {dict(table.spec.select)} keeps none of the {before} cases",
                "name a class that some cases are labelled with (data_specs/README.md, 'select')",
                path=str(table.root),
            )
        )


def _find_duplicates(table: CaseTable, splits_file: str | os.PathLike | None) -> Duplicates | None:
    """Duplicate images, looked for only when the splits are hashed afresh and keep duplicates together.

    Not when a ``splits.json`` exists (recorded cases never move), nor while the table has errors
    (they stop any use of it first), nor with fewer than two labelled cases.
    """
    spec = table.spec
    if spec.splits.duplicates != "together" or spec.splits.method not in ("fractions", "kfold"):
        return None
    if splits_file is not None and (Path(splits_file).exists() or Path(splits_file).is_symlink()):
        return None
    labelled = [c for c in table.cases if any(c[present_key(t.name)] for t in spec.tasks)]
    if table.errors or len(labelled) < 2:
        return None
    return find_duplicates(table.cases, spec, cache_name=table.root, progress=None, labels=False)


def _collapse(problems: list[Problem]) -> list[Problem]:
    """Identical problems once, with their count: a template wrong for every record is one finding, not 60 lines."""
    counts = Counter(problems)
    out = []
    for problem in dict.fromkeys(problems):
        n = counts[problem]
        out.append(problem if n == 1 else dataclasses.replace(problem, message=f"{problem.message} ({n} records)"))
    return out


@dataclass(frozen=True)
class _Origin:
    """Where a case record comes from: a matched file or folder, or a line of a case table."""

    file: str
    """Relative to the root: the matched path, or the case CSV / ``dataset.json``."""
    line: int | None = None
    """CSV line (1-based, header included) or ``dataset.json`` entry (1-based)."""
    unit: str = "line"

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file} {self.unit} {self.line}"


def _iter_records(
    spec: DatasetSpecModel, root: Path, problems: list[Problem]
) -> Iterator[tuple[Any, dict[str, str], _Origin]]:
    """Yield ``(source, fields, origin)`` for every entry of every case source that matches its regex.

    Table rows (CSV, ``dataset.json``) that the regex skips are reported as a warning: unlike files
    found by a glob (where skipping ``_mask`` files is the point), a listed case is meant to be used.
    """
    for source in spec.case_sources:
        if isinstance(source, GlobCases):
            patterns = (source.glob,) if isinstance(source.glob, str) else source.glob
            entries = sorted({p for pattern in patterns for p in root.glob(pattern)})
            raw = [(_Origin(p.relative_to(root).as_posix()), {"path": p.relative_to(root).as_posix()}) for p in entries]
        elif isinstance(source, CsvCases):
            raw = [(_Origin(source.csv, line), row) for line, row in _read_case_csv(root, source, problems)]
        else:
            entries = _read_decathlon(root, source, problems)
            raw = [(_Origin(source.decathlon, i + 1, "entry"), row) for i, row in enumerate(entries)]
        skipped: list[_Origin] = []
        for origin, fields in raw:
            path = fields.get("path", "")
            if source.regex is not None:
                match = re.fullmatch(source.regex, path)
                if match is None:
                    if origin.line is not None:
                        skipped.append(origin)
                    continue
                fields.update({k: v for k, v in match.groupdict().items() if v is not None})
            if path:
                name = path.rstrip("/").split("/")[-1]
                fields.setdefault("name", name)
                fields.setdefault("stem", stem_of(name))
                fields.setdefault("parent", path.rstrip("/").split("/")[-2] if "/" in path.rstrip("/") else "")
            fields.update(source.fields)
            yield source, fields, origin
        if skipped:
            first = skipped[0]
            problems.append(
                Problem(
                    "skipped_rows",
                    f"{len(skipped)} {first.unit}(s) of the case table do not match the spec's cases regex and are "
                    f"left out (e.g. {first.unit} {first.line}: path {_path_of(raw, first)!r})",
                    "fix the paths in the table, or widen the cases regex; remove the rows if they are meant "
                    "to be left out",
                    path=str(root / first.file),
                    severity=Severity.WARNING,
                )
            )


def _path_of(raw: list[tuple[_Origin, dict[str, str]]], origin: _Origin) -> str:
    return next((fields.get("path", "") for o, fields in raw if o == origin), "")


def _read_case_csv(root: Path, source: CsvCases, problems: list[Problem]) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` of every row of a case CSV; ``path`` set from ``path_column``."""
    path = root / source.csv
    rows = _read_csv(path, source.header, problems, root, "case table")
    if rows is None:
        return []
    if source.path_column is not None:
        if rows and source.path_column not in rows[0][1]:
            problems.append(_missing_column(path, source.path_column, rows[0][1]))
            return []
        for _, row in rows:
            row["path"] = row[source.path_column].strip().removeprefix("./")
    return rows


def _read_decathlon(root: Path, source: DecathlonCases, problems: list[Problem]) -> list[dict[str, str]]:
    path = root / source.decathlon
    text = _read_text(path, root, "case list", problems, suffix=".json")
    if text is None:
        return []
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        problems.append(Problem("corrupt_file", f"not valid JSON: {err}", "fix the JSON syntax", path=str(path)))
        return []
    entries = content.get(source.section) if isinstance(content, dict) else None
    if not isinstance(entries, list):
        keys = sorted(content) if isinstance(content, dict) else f"a {type(content).__name__}, not a mapping"
        problems.append(
            Problem(
                "missing_key",
                f"no list '{source.section}' in dataset.json",
                f"keys are {keys}",
                path=str(path),
            )
        )
        return []
    rows = []
    for entry in entries:
        entry = {"image": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, dict) else {}
        row = {k: str(v).removeprefix("./") for k, v in entry.items()}
        row["path"] = row.get("image", "")
        rows.append(row)
    return rows


def _outside_root(path: Path, root: Path, case_id: str | None = None) -> Problem | None:
    """A ``path_outside_root`` problem when ``path`` (symlinks and ``..`` followed) leaves the data root."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        return Problem(
            "unreadable_file",
            f"the path cannot be resolved: {err}",
            "fix or remove the symlink",
            path=str(path),
            case_id=case_id,
        )
    if resolved.is_relative_to(root):
        return None
    return Problem(
        "path_outside_root",
        f"resolves to {resolved}, outside the data root {root}",
        "copy the file under the data root (symlinks and '..' may not leave it)",
        path=str(path),
        case_id=case_id,
    )


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _read_text(path: Path, root: Path, what: str, problems: list[Problem], suffix: str = ".csv") -> str | None:
    """The UTF-8 text of a table under the data root, or ``None`` with one problem naming the file and the fix.

    The file type is checked with ``os.stat`` before anything opens it: opening a FIFO waits for a
    writer, forever, and a folder or a device is no table.
    """
    outside = _outside_root(path, root)
    if outside is not None:
        problems.append(outside)
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        problems.append(
            Problem("missing_file", f"the {what} was not found", "check the path in the spec", path=str(path))
        )
        return None
    except OSError as err:
        problems.append(_unreadable(path, what, err))
        return None
    if stat.S_ISDIR(mode):
        inside = sorted(p.name for p in path.glob(f"*{suffix}"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        problems.append(
            Problem(
                "not_a_file",
                f"the {what} is a folder, not a {suffix} file{hint}",
                "point the spec at the file itself (the folder's name is not a table)",
                path=str(path),
            )
        )
        return None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
        problems.append(
            Problem(
                "not_a_file",
                f"the {what} is {kind}, not a regular file: reading it could wait forever",
                "replace it with a regular file holding the table (copy the data into it)",
                path=str(path),
            )
        )
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        problems.append(_unreadable(path, what, err))
        return None
    return _decode(data, path, what, problems, suffix)


def _unreadable(path: Path, what: str, err: OSError) -> Problem:
    return Problem(
        "unreadable_file",
        f"the {what} cannot be read: {err.strerror or err}",
        "make it readable by this user (e.g. chmod a+r) and check that its disk is mounted",
        path=str(path),
    )


_NOT_TEXT = (
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook?)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel .xls workbook"),
    (b"\xff\xfe", "UTF-16 text (Excel's 'Unicode Text')"),
    (b"\xfe\xff", "UTF-16 text (Excel's 'Unicode Text')"),
)


def _decode(data: bytes, path: Path, what: str, problems: list[Problem], suffix: str) -> str | None:
    """``data`` as UTF-8 text (a BOM is dropped), or ``None`` with a problem saying what the file is instead."""
    kind = next((name for magic, name in _NOT_TEXT if data.startswith(magic)), None)
    if kind is None and b"\x00" in data[:4096]:
        kind = "binary data (it holds NUL bytes)"
    if kind is not None:
        problems.append(
            Problem(
                "not_text",
                f"the {what} is {kind}, not {'UTF-8 CSV' if suffix == '.csv' else 'UTF-8'} text",
                "export it from the spreadsheet as 'CSV UTF-8 (comma delimited)' and point the spec at that file"
                if suffix == ".csv"
                else "save it as UTF-8 text",
                path=str(path),
            )
        )
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        problems.append(
            Problem(
                "not_utf8",
                f"the {what} is not UTF-8 text: byte 0x{data[err.start]:02x} on line {line} cannot be decoded "
                "(saved as Windows-1252 / Latin-1?)",
                "save it as UTF-8 (Excel: 'CSV UTF-8'; or convert it: iconv -f cp1252 -t utf-8 OLD > NEW)",
                path=str(path),
            )
        )
        return None


_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def _foreign_delimiter(text: str) -> str | None:
    """The delimiter of a CSV whose columns are not separated by commas (European Excel: ``;``), if any.

    Read as comma-separated, such a file has one column holding whole lines, and every column the
    spec names would be reported missing for every row; one clear problem replaces them.
    """
    lines = [line for line in text[:65536].splitlines()[:20] if line.strip()]
    if not lines or "," in lines[0]:
        return None
    for delimiter in _DELIMITERS:
        if delimiter in lines[0] and len({line.count(delimiter) for line in lines[:5]}) == 1:
            return delimiter
    return None


def _read_csv(
    path: Path, header: bool, problems: list[Problem], root: Path, what: str = "label table"
) -> list[tuple[int, dict[str, str]]] | None:
    """``(line, row)`` pairs (the line where the row ends, header included), or None with a problem."""
    text = _read_text(path, root, what, problems)
    if text is None:
        return None
    delimiter = _foreign_delimiter(text)
    if delimiter is not None:
        first = next(line for line in text[:65536].splitlines() if line.strip())
        problems.append(
            Problem(
                "csv_delimiter",
                f"the {what} is separated by {_DELIMITERS[delimiter]} ({delimiter!r}), not commas: its first line "
                f"{first[:80]!r} reads as a single column",
                "save it comma-separated (Excel: 'CSV UTF-8 (comma delimited)'), or replace the "
                f"{_DELIMITERS[delimiter]} between columns with commas",
                path=str(path),
            )
        )
        return None
    try:
        rows = _parse_csv(text, header)
    except csv.Error as err:
        problems.append(
            Problem("corrupt_file", f"cannot parse CSV: {err}", "save it as UTF-8 comma-separated text", path=str(path))
        )
        return None
    return [(line, dict(r)) for line, r in rows]


@lru_cache(maxsize=64)
def _parse_csv(text: str, header: bool) -> tuple[tuple[int, dict[str, str]], ...]:
    """Rows of a CSV text, cached by the text itself: a file edited between two builds is parsed again, never
    served stale (as a cache keyed by path or modification time can be), and an unchanged table read again
    (validation's weak-label build, a bundle's next datalist) is not parsed twice."""
    handle = io.StringIO(text, newline="")
    if header:
        reader = csv.DictReader(handle)
        return tuple((reader.line_num, {(k or "").strip(): (v or "") for k, v in row.items()}) for row in reader)
    plain = csv.reader(handle)
    return tuple((plain.line_num, {f"col{i}": v for i, v in enumerate(row)}) for row in plain if row)


def _missing_column(path: Path, column: str | int, example_row: dict[str, str]) -> Problem:
    return Problem(
        "missing_column",
        f"column {column!r} not in CSV (columns: {list(example_row)})",
        "fix the column name in the spec or add the column to the CSV",
        path=str(path),
    )


def _column_name(column: str | int) -> str:
    return f"col{column}" if isinstance(column, int) else column


class _Resolver:
    """Turns templates into paths under the root, reporting paths that escape it.

    Every path it finds is remembered in ``used`` (so masks no case uses can be found afterwards),
    and lookups are memoised, so resolving a template twice (the mask census does) costs nothing.
    """

    def __init__(self, root: Path, problems: list[Problem]):
        self.root = root
        self.problems = problems
        self.used: set[Path] = set()
        self._tables: dict[tuple[str, str, bool], dict[str, dict[str, str]] | None] = {}
        self._rows: dict[tuple[Path, bool], list[tuple[int, dict[str, str]]] | None] = {}
        self._found: dict[tuple[str, bool], list[Path]] = {}

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Resolve without reporting (the findings are reported by the build that uses the result)."""
        kept, self.problems = self.problems, []
        try:
            yield
        finally:
            self.problems = kept

    def format(self, template: str, fields: dict[str, str], case_id: str | None, escape: bool = False) -> str | None:
        values = {k: globlib.escape(v) for k, v in fields.items()} if escape else fields
        try:
            return template.format_map(values)
        except KeyError as err:
            self.problems.append(
                Problem(
                    "unknown_field",
                    f"template {template!r} uses field {err} but the case has only {sorted(fields)}",
                    "add a named group to the cases regex or fix the template",
                    case_id=case_id,
                )
            )
            return None

    def find(self, template: str, fields: dict[str, str], case_id: str | None) -> list[Path] | None:
        """Existing files/folders the template names, wherever they are; None on a bad template."""
        literal = "".join(part[0] for part in string.Formatter().parse(template))
        magic = globlib.has_magic(literal)
        name = self.format(template, fields, case_id, escape=magic)
        if name is None:
            return None
        found = self._found.get((name, magic))
        if found is None:
            if magic:
                found = (
                    sorted(self.root.glob(name))
                    if not Path(name).is_absolute()
                    else sorted(map(Path, globlib.glob(name)))
                )
            else:
                candidate = self.root / name
                # an empty field (blank CSV cell) must not turn into the root folder itself
                found = [candidate] if name.strip() and (candidate.exists() or candidate.is_symlink()) else []
            self._found[(name, magic)] = found
        self.used.update(found)
        return found

    def paths(self, template: str, fields: dict[str, str], case_id: str) -> list[Path] | None:
        """Existing files/folders the template names (a glob may name several); None on a bad template."""
        found = self.find(template, fields, case_id)
        if found is None:
            return None
        inside = []
        for path in found:
            outside = _outside_root(path, self.root, case_id)
            if outside is not None:
                self.problems.append(outside)
            else:
                inside.append(path)
        if len(inside) < len(found):
            return None
        return inside

    def lookup(self, spec: CsvLookup, fields: dict[str, str], case_id: str) -> str | list[str] | None:
        """A case's value(s) in a label table; ``None`` when the table has no row for it."""
        file = self.format(spec.file, fields, case_id)
        key = self.format(spec.key, fields, case_id)
        if file is None or key is None:
            return None
        table = self._table(self.root / file, spec)
        if table is None:
            return None
        row = table.get(_normalise_key(key))
        if row is None:
            return None
        columns = spec.value_column if isinstance(spec.value_column, tuple) else (spec.value_column,)
        values = [row.get(_column_name(c)) for c in columns]
        return values if isinstance(spec.value_column, tuple) else values[0]

    def _report(self, problem: Problem) -> None:
        """Add a table problem once (a table read for two columns, e.g. patient and label, finds it twice)."""
        if problem not in self.problems:
            self.problems.append(problem)

    def _table(self, path: Path, spec: CsvLookup) -> dict[str, dict[str, str]] | None:
        cache_key = (str(path), str((spec.key_column, spec.value_column)), spec.header)
        if cache_key in self._tables:
            return self._tables[cache_key]
        table = None
        if (path, spec.header) not in self._rows:  # read once per build, whatever columns are asked
            self._rows[path, spec.header] = _read_csv(path, spec.header, self.problems, self.root)
        rows = self._rows[path, spec.header]
        if rows is not None:
            key_col = _column_name(spec.key_column)
            value_cols = spec.value_column if isinstance(spec.value_column, tuple) else (spec.value_column,)
            missing = [c for c in (key_col, *map(_column_name, value_cols)) if rows and c not in rows[0][1]]
            if missing:
                for column in missing:
                    self._report(_missing_column(path, column, rows[0][1]))
            else:
                table = {}
                lines: dict[str, int] = {}
                for line, row in rows:
                    key = _normalise_key(row[key_col])
                    if key in table:
                        self._report(
                            Problem(
                                "duplicate_case_id",
                                f"key {row[key_col]!r} appears twice in column {key_col!r} (lines {lines[key]} "
                                f"and {line}); only the last row is used",
                                "remove the duplicate row, keeping the right one",
                                path=str(path),
                            )
                        )
                    table[key] = row
                    lines[key] = line
        self._tables[cache_key] = table
        return table


def _normalise_key(key: str) -> str:
    """Keys compare as text, except that numbers ignore leading zeros (MRNet ``0007`` == ``7``)."""
    key = key.strip()
    return str(int(key)) if key.isdigit() else key


def _mask_sources(spec: DatasetSpecModel) -> list[tuple[TaskSpec, str, LabelSource]]:
    """Every mask template of the spec: ``(task, "label" | "weak_label", source)``."""
    return [
        (task, which, source)
        for task in spec.tasks
        for which, source in (("label", task.label), ("weak_label", task.weak_label))
        if source is not None and source.mask is not None
    ]


@dataclass
class _MaskCensus:
    """Which files one mask template finds, over all cases: for the "matches nothing" and "no case uses
    this mask" warnings (a typo in a template, or an image lost while its mask stayed)."""

    task: str
    which: str
    template: str
    cases: int = 0
    found: int = 0
    example: Path | None = None
    hits: set[str] = field(default_factory=set)
    """Case ids whose record found a file (set by :func:`_take_census`, read by :meth:`count`)."""
    expected: dict[str, str] = field(default_factory=dict)
    """Where the template looked for the case ids it found nothing for (relative to the root)."""
    labelled: int = 0
    lacking: list[str] = field(default_factory=list)
    """Cases with some label (of any task) but without a file here, in case order."""

    def count(self, case: dict, source: Any, labelled: bool = True) -> None:
        if getattr(source, "unlabelled", False):
            return
        self.cases += 1
        self.labelled += labelled
        if case["case_id"] in self.hits:
            self.found += 1
        elif labelled:  # a case without any label is an unlabelled case, not one that lost a file
            self.lacking.append(case["case_id"])

    def problems(self, root: Path, used: set[Path]) -> list[Problem]:
        found: list[Problem] = []
        label = "label" if self.which == "label" else "weak label"
        if self.cases and not self.found:
            example = _rel(self.example, root) if self.example is not None else self.template
            found.append(
                Problem(
                    "no_mask_found",
                    f"task '{self.task}': its {label} template {self.template!r} matched no file for any of the "
                    f"{self.cases} case(s) (e.g. {example}{_near_miss(root, self.example)})",
                    "check the template's folder and file names against the files under the data root "
                    "(spelling, upper/lower case, suffix); if the dataset has no such masks, remove the "
                    f"task's {self.which}",
                    path=str(root),
                    severity=Severity.WARNING,
                )
            )
        found += self._lacking(root)
        pattern = "".join(
            text + ("*" if name is not None else "") for text, name, _, _ in string.Formatter().parse(self.template)
        )
        if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            return found
        stray = sorted(p for p in root.glob(pattern) if p not in used and p.is_file())
        for path in stray[:_STRAY_LISTED]:
            found.append(
                Problem(
                    "orphan_mask",
                    f"matches the {label} template {self.template!r} of task '{self.task}' but no case has it: "
                    "its image is missing, misnamed, or left out by the spec's cases glob/regex",
                    "restore the case's image (or fix its name), or delete the stray mask",
                    path=str(path),
                    severity=Severity.WARNING,
                )
            )
        if len(stray) > _STRAY_LISTED:
            found.append(
                Problem(
                    "orphan_mask",
                    f"... and {len(stray) - _STRAY_LISTED} more masks of task '{self.task}' that no case has",
                    "restore their images, or delete the stray masks",
                    path=str(root),
                    severity=Severity.WARNING,
                )
            )
        return found

    def excuse(self, case_ids: set[str]) -> None:
        """Cases that have another mask of the task (a weak one) lack this one on purpose: weakly labelled."""
        kept = [c for c in self.lacking if c not in case_ids]
        self.labelled -= len(self.lacking) - len(kept)
        self.lacking = kept

    def _lacking(self, root: Path) -> list[Problem]:
        """One warning per case without the mask all other cases have (a BUSI image whose mask file was lost)."""
        if not self.lacking or len(self.lacking) > _RARE_SHARE * self.labelled:
            return []
        label = "label" if self.which == "label" else "weak label"
        context = f"although {self.found} of {self.cases} cases have one"
        fix = (
            "restore the case's mask (or fix its file name); if the case has no such label on purpose, "
            "nothing to do: it is used without it"
        )
        found = [
            Problem(
                "missing_mask",
                f"task '{self.task}': no {label} file ({self.expected.get(case_id, self.template)}), {context}",
                fix,
                path=str(root / self.expected[case_id]) if case_id in self.expected else str(root),
                case_id=case_id,
                severity=Severity.WARNING,
            )
            for case_id in self.lacking[:_LACKING_LISTED]
        ]
        rest = self.lacking[_LACKING_LISTED:]
        if rest:
            found.append(
                Problem(
                    "missing_mask",
                    f"... and {len(rest)} more cases without a {label} file of task '{self.task}' "
                    f"(e.g. {', '.join(map(repr, rest[:5]))}), {context}",
                    fix,
                    path=str(root),
                    severity=Severity.WARNING,
                )
            )
        return found


_STRAY_LISTED = 10
"""Stray masks named one by one per template; the rest are counted."""
_LACKING_LISTED = 20
"""Cases without a usual mask named one by one per template; the rest are counted."""
_RARE_SHARE = 0.1
"""A mask that all labelled cases but a few have (at most this share of them) is one the layout normally
has: each of the few gets a warning. More cases without it is partly labelled data (a layout of its own,
e.g. the demo data: 17 % without the strong mask), counted in the label table only."""


def _take_census(
    spec: DatasetSpecModel, source: Any, fields: dict[str, str], resolver: _Resolver, census: list[_MaskCensus]
) -> list[Path]:
    """Resolve every mask template for one record, quietly; returns the masks it has (any task, any quality).

    Quiet because the build that uses a label reports its problems; this only marks the files as used
    (also for records dropped for a missing image, and unlabelled sources) and counts the hits.
    """
    found: list[Path] = []
    with resolver.quiet():
        case_id = resolver.format(spec.case_id, fields, None)
        if case_id is None:
            return found
        record = {**fields, "case_id": case_id}
        for entry in census:
            paths = resolver.find(entry.template, record, case_id)
            if paths:
                entry.hits.add(case_id)
                found += paths
            elif paths is not None and not getattr(source, "unlabelled", False):
                example = resolver.format(entry.template, record, case_id)
                if example:
                    entry.expected.setdefault(case_id, example)
                if entry.example is None:
                    entry.example = resolver.root / example if example else None
    return found


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _near_miss(root: Path, expected: Path | None) -> str:
    """``": there is no folder 'labelsWeak' in the data root; did you mean 'labels_weak'?"`` for a path not found."""
    if expected is None:
        return ""
    parent = expected
    while not parent.parent.exists() and parent.parent != parent:
        parent = parent.parent
    if parent.parent == parent or not parent.parent.is_dir():
        return ""
    try:
        names = [p.name for p in parent.parent.iterdir() if not p.name.startswith(".")]
    except OSError:
        return ""
    close = difflib.get_close_matches(parent.name, names, n=1, cutoff=0.6)
    where = _rel(parent.parent, root) if parent.parent != root else "the data root"
    kind = "file" if parent == expected else "folder"
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f": there is no {kind} {parent.name!r} in {where}{hint}"


def _build_case(
    spec: DatasetSpecModel,
    source: Any,
    fields: dict[str, str],
    resolver: _Resolver,
    quality: LabelQuality,
    problems: list[Problem],
    masks: Sequence[Path] = (),
    origin: _Origin | None = None,
) -> dict | None:
    case_id = resolver.format(spec.case_id, fields, None)
    if case_id is None:
        return None
    reason = _case_id_error(case_id)
    if reason is not None:
        problems.append(_invalid_case_id(spec, resolver.root, case_id, reason, origin))
        return None
    fields = {**fields, "case_id": case_id}
    case: dict[str, Any] = {"case_id": case_id}
    if spec.splits.method == "field":
        case["split"] = fields.get(spec.splits.field)  # raw value, mapped by assign_splits
    if isinstance(spec.group, CsvLookup):  # patient id from a table (hospital labels.csv)
        group = resolver.lookup(spec.group, fields, case_id)
        case["group"] = str(group).strip() if group is not None and str(group).strip() else case_id
    elif spec.group is not None:
        group = resolver.format(spec.group, fields, case_id)
        if group is None:
            return None
        case["group"] = group
    if spec.aggregate_by is not None:  # the study (exam) the case's image belongs to: evaluation scores per study
        study = resolver.format(spec.aggregate_by, fields, case_id)
        if study is None:
            return None
        case[STUDY_KEY] = study
    for key, template in spec.inputs.items():
        paths = resolver.paths(template, fields, case_id)
        if paths is None:
            return None
        if not paths:
            has = f", although the case has a mask ({_rel(masks[0], resolver.root)})" if masks else ""
            problems.append(
                Problem(
                    "missing_file",
                    f"input '{key}' not found ({template!r}){has}",
                    "restore the file, or fix the spec's inputs template",
                    path=str(resolver.root / (resolver.format(template, fields, case_id) or template)),
                    case_id=case_id,
                )
            )
            return None
        case[key] = str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
    for task in spec.tasks:
        source_label = task.weak_label if quality == LabelQuality.WEAK and task.weak_label is not None else task.label
        value = None
        if source_label is not None and not getattr(source, "unlabelled", False):
            value = _label_value(task, source_label, fields, resolver, case_id, problems)
        case[present_key(task.name)] = int(value is not None)
        if value is not None:
            case[task.name] = value
    return case


_ID_CHARACTERS = {
    "\t": "tab",
    "\n": "line feed",
    "\r": "carriage return",
    "\x00": "NUL",
    "\x1b": "escape",
    "\x7f": "delete",
    "\x85": "next line",
    "\u2028": "line separator",
    "\u2029": "paragraph separator",
}


_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Invisible characters that reorder the text around them: an id holding one displays as another id."""


def _bad_character(text: str) -> str | None:
    """The first control character, line/paragraph separator or bidirectional control in ``text``.

    These break a line or a file name, or (bidirectional controls) make the id display as a different one.
    """
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI_CONTROLS), None)


def _case_id_error(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a case, or ``None``: ids become output file names and CSV cells."""
    if not case_id.strip():
        return "is empty"
    bad = _bad_character(case_id)
    if bad is not None:
        what = "bidirectional text control" if bad in _BIDI_CONTROLS else "control character"
        return f"contains the control character U+{ord(bad):04X} ({_ID_CHARACTERS.get(bad, what)})"
    return None


def _invalid_case_id(spec: DatasetSpecModel, root: Path, case_id: str, reason: str, origin: _Origin | None) -> Problem:
    """An ``invalid_case_id`` error naming where the id comes from; nothing in it breaks the report's line."""
    where = root / origin.file if origin is not None else root
    while _bad_character(str(where)) is not None and where != root:  # a file name holding the bad character
        where = where.parent
    source = f" from {str(origin)!r}" if origin is not None else ""
    listed = origin is not None and origin.line is not None
    fix = (
        f"fix the id in {origin} " if listed else "rename the file or folder "
    ) + f"or change the spec's case_id template {spec.case_id!r}: a case id names output files and CSV rows, so it "
    return Problem(
        "invalid_case_id",
        f"case id {case_id!r}{source} {reason}",
        fix + "may not be empty or hold line breaks, tabs or other control characters",
        path=str(where),
    )


def _label_value(
    task: TaskSpec,
    source: LabelSource,
    fields: dict[str, str],
    resolver: _Resolver,
    case_id: str,
    problems: list[Problem],
) -> Any:
    """The task's label for one case: a path (or paths) for masks, a number/list for classes, or None."""
    if source.mask is not None:
        paths = resolver.paths(source.mask, fields, case_id)
        if not paths:
            return None
        return str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
    if source.mask_nonempty is not None:
        paths = resolver.paths(source.mask_nonempty, fields, case_id)
        if not paths:
            return None
        from medmtl.data.readers import diagnose_unreadable, load_array  # here: MONAI only when masks are read

        for path in paths:
            try:
                if np.any(load_array(str(path))):
                    return 1
            except Exception as err:  # noqa: BLE001 - any reader failure is reported, not raised
                found = getattr(err, "problems", None)
                message, fix = (found[0].message, found[0].fix) if found else diagnose_unreadable(path, err)
                problems.append(
                    Problem(
                        "unreadable_file",
                        f"cannot read the mask that gives task '{task.name}' its label (mask_nonempty): {message}",
                        fix,
                        path=str(path),
                        case_id=case_id,
                    )
                )
                return None
        return 0
    if source.field is not None:
        if source.field not in fields:
            problems.append(
                Problem(
                    "unknown_field",
                    f"label field '{source.field}' of task '{task.name}' is not among the case fields {sorted(fields)}",
                    "add a named group to the cases regex or a column to the case CSV",
                    case_id=case_id,
                )
            )
            return None
        raw: Any = fields[source.field]
    else:
        raw = resolver.lookup(source.csv, fields, case_id)
    if raw is None:
        return None
    return _convert(task, source, raw, case_id, problems)


def _convert(task: TaskSpec, source: LabelSource, raw: Any, case_id: str, problems: list[Problem]) -> Any:
    """Raw table/field text -> class index (multiclass), 0/1 (binary) or multi-hot list (multilabel)."""
    if isinstance(raw, list):
        items = [_convert_one(task, source, r, case_id, problems, binary=True) for r in raw]
        if any(i is None for i in items):
            return None
        return items
    if task.kind == TaskKind.MULTILABEL:
        text = str(raw).strip()
        if text.lower() in _MISSING_VALUES:
            return None
        names = [n.strip() for n in re.split(r"[;|]", text) if n.strip()]
        unknown = [n for n in names if n not in task.class_names]
        if unknown:
            problems.append(
                _bad_label(task, raw, case_id, f"label names {unknown} are not in {list(task.class_names)}")
            )
            return None
        return [int(c in names) for c in task.class_names]
    return _convert_one(task, source, raw, case_id, problems, binary=task.kind == TaskKind.BINARY)


def _convert_one(
    task: TaskSpec, source: LabelSource, raw: Any, case_id: str, problems: list[Problem], binary: bool
) -> Any:
    text = str(raw).strip()
    if text.lower() in _MISSING_VALUES:
        return None
    value: Any = text
    if source.map is not None:
        if text not in source.map:
            problems.append(
                _bad_label(task, raw, case_id, f"value {text!r} is not in the spec's map {sorted(source.map)}")
            )
            return None
        value = source.map[text]
    if isinstance(value, str) and value in task.class_names:
        return task.class_names.index(value)
    if isinstance(value, str) and binary and value.lower() in {"true", "false", "yes", "no"}:
        return int(value.lower() in {"true", "yes"})
    try:
        number = float(value)
    except (TypeError, ValueError):
        problems.append(
            _bad_label(
                task, raw, case_id, f"value {text!r} is neither a class name {list(task.class_names)} nor a number"
            )
        )
        return None
    if math.isnan(number):
        return None
    limit = 2 if binary else task.num_outputs
    if number != int(number) or not 0 <= number < limit:
        problems.append(_bad_label(task, raw, case_id, f"value {text!r} is outside the classes 0..{limit - 1}"))
        return None
    return int(number)


def _bad_label(task: TaskSpec, raw: Any, case_id: str, message: str) -> Problem:
    return Problem(
        "invalid_label",
        f"task '{task.name}': {message}",
        "fix the label, or add the value to the task's classes / label map in the spec",
        case_id=case_id,
    )
