"""The dataset fingerprint: what ``medmtl plan`` knows about a dataset before it chooses anything.

Like nnU-Net's ``dataset_fingerprint.json``, but for every task of a spec: per input its shapes,
spacings, orientations and intensities (over the foreground where a mask marks one), per task its
labelled cases and class frequencies, for segmentation tasks foreground sizes and connected components.
Every case is read once, in parallel, with the readers training uses (:mod:`medmtl.planning.case_stats`).

The fingerprint is cached by file content: given the previous ``fingerprint.json``, a case whose files
all have the recorded SHA-256 digests keeps its recorded statistics without being read, so planning
again on unchanged data costs one hash per file. Labels from tables and splits are always taken afresh
from the case table (a CSV edit changes no image).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medmtl.atomic_io import atomic_write
from medmtl.data.datalist import CaseTable
from medmtl.data.problems import DataError
from medmtl.data.spec import DatasetSpec, load_spec
from medmtl.data.tasks import TaskKind, present_key
from medmtl.planning.case_pool import run_cases
from medmtl.planning.case_stats import CaseJob, CaseResult, MaskRule, file_digest
from medmtl.planning.summary import summarise_inputs, summarise_tasks

__all__ = [
    "FINGERPRINT_VERSION",
    "FingerprintError",
    "compute_fingerprint",
    "read_fingerprint",
    "write_fingerprint",
]

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
"""Bumped whenever a statistic changes meaning: a cache of another version is never reused."""


class FingerprintError(ValueError):
    """A fingerprint file that cannot be used: unreadable, not a fingerprint, or of another version."""


def compute_fingerprint(
    spec: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    spec_overrides: dict | None = None,
    workers: int = 0,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    table: CaseTable | None = None,
) -> dict:
    """Read every case of a dataset once and return its fingerprint (a JSON-ready dict).

    Args:
        spec: the data spec YAML.
        root: data root overriding the spec's.
        spec_overrides: top-level spec keys replacing the file's (as :func:`~medmtl.data.spec.load_spec`).
        workers: processes reading files, this one included: ``0`` every core, ``1`` only this process.
        cache: an earlier ``fingerprint.json`` (usually the output path): cases whose files are unchanged
            (same SHA-256) keep their statistics without being read. Missing or unusable: ignored.
        progress: show a progress bar on stderr.
        table: the case table of ``spec`` already built by the caller (``medmtl plan``), so its splits
            and duplicate search are not done twice; ``None`` builds it.

    Returns:
        ``{"version", "spec", "root", "num_cases", "created", "inputs", "tasks", "splits", "cases", ...}``:
        the dataset summary (:mod:`medmtl.planning.summary`) and every case's statistics.

    Raises:
        SpecError: the spec is invalid.
        DataError: the case table has errors, or files cannot be read: every problem, after all cases.
        ValueError: ``workers`` is negative.

    Example::

        fingerprint = compute_fingerprint("data_specs/breast_ultrasound.yaml", root=busi, cache="fingerprint.json")
        write_fingerprint(fingerprint, "fingerprint.json")
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: every core, 1: in-process), got {workers}")
    start = time.perf_counter()
    overrides = dict(spec_overrides or {})
    if table is None:
        table = load_spec(spec, **overrides).build_cases(root=root)
    loaded = table.spec
    table.raise_for_errors()
    context = f"the fingerprint of dataset '{loaded.name}' under {table.root}"
    reading = _reading_key(loaded)
    jobs = [_job(loaded, case) for case in table.cases]
    cached = _cached_cases(cache, reading)
    count = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="fingerprint", unit="case", file=sys.stderr, disable=not progress, leave=False)
    try:
        reused, todo = _match_cache(jobs, cached, table.root, count, bar)
        results = run_cases(todo, count, bar)
    finally:
        bar.close()
    problems = [p for r in results for p in r.problems]
    if problems:
        raise DataError(problems, context)
    stats = {r.case_id: _case_stats(r, table.root) for r in results}
    stats.update(reused)
    cases = {case["case_id"]: _case_record(loaded, case, stats[case["case_id"]]) for case in table.cases}
    spec_path = Path(loaded.spec_path) if loaded.spec_path else Path(spec).resolve()
    fingerprint = {
        "version": FINGERPRINT_VERSION,
        "spec": {
            "name": loaded.name,
            "path": str(spec_path),
            "sha256": file_digest(spec_path),
            "overrides": json.loads(json.dumps(overrides, default=os.fspath)),
            "modality": loaded.modality,
            "spatial_dims": loaded.spatial_dims,
        },
        "root": str(table.root),
        "num_cases": len(cases),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reading": reading,
        "cache": {"reused": len(reused), "read": len(results)},
        "duration_s": round(time.perf_counter() - start, 3),
        "inputs": summarise_inputs(loaded.inputs, cases),
        "tasks": summarise_tasks(loaded.tasks, cases),
        "splits": table.split_counts(),
        "cases": cases,
    }
    logger.info(
        "fingerprint of %s: %d cases (%d read, %d from the cache) in %.1f s",
        loaded.name,
        len(cases),
        len(results),
        len(reused),
        fingerprint["duration_s"],
    )
    return fingerprint


def write_fingerprint(fingerprint: dict, path: str | os.PathLike) -> Path:
    """Write the fingerprint as JSON, atomically (a killed ``plan`` leaves the old file or the new one)."""
    return atomic_write(path, json.dumps(fingerprint, indent=1) + "\n")


def read_fingerprint(path: str | os.PathLike) -> dict:
    """A fingerprint written by :func:`write_fingerprint`, checked to be one of this version.

    Raises:
        FingerprintError: the file is missing, not JSON, not a fingerprint, or of another version.
    """
    path = Path(path)
    fix = "run `medmtl plan` again: it writes a new fingerprint"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FingerprintError(f"{path}: fingerprint file not found; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FingerprintError(f"{path}: cannot read the fingerprint ({type(err).__name__}: {err}); {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict) or "version" not in data:
        raise FingerprintError(f"{path}: not a medmtl fingerprint (no 'version' and 'cases'); {fix}")
    if data["version"] != FINGERPRINT_VERSION:
        raise FingerprintError(
            f"{path}: fingerprint version {data['version']!r}, this medmtl reads version {FINGERPRINT_VERSION}; {fix}"
        )
    return data


# ---------------------------------------------------------------------------------------------
# cases, jobs and the cache


def _reading_key(spec: DatasetSpec) -> str:
    """Digest of what decides the statistics of given file contents: a cache of another key is not reused."""
    masks = [
        (t.name, t.label.model_dump(mode="json"), t.num_outputs)
        for t in spec.tasks
        if t.kind == TaskKind.SEGMENTATION and t.label is not None
    ]
    text = json.dumps([FINGERPRINT_VERSION, spec.spatial_dims, spec.inputs, masks], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _paths(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else (str(value),)


def _job(spec: DatasetSpec, case: dict) -> CaseJob:
    masks = []
    for task in spec.tasks:
        if task.kind != TaskKind.SEGMENTATION or not case.get(present_key(task.name)) or task.label is None:
            continue
        values = tuple(sorted((task.label.values or {}).items()))
        rule = MaskRule(task.name, task.num_outputs, task.label.binarize, values)
        masks.append((rule, _paths(case[task.name])))
    return CaseJob(
        case_id=case["case_id"],
        inputs=tuple((key, _paths(case[key])) for key in spec.inputs),
        masks=tuple(masks),
        spatial_dims=spec.spatial_dims,
    )


def _relative(path: str, root: Path) -> str:
    """The path relative to the data root (the cache survives moving the data), absolute outside it."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _case_stats(result: CaseResult, root: Path) -> dict:
    files = {_relative(p, root): d for p, d in result.files.items()}
    return {"files": files, "inputs": result.inputs or {}, "masks": result.masks or {}}


def _case_record(spec: DatasetSpec, case: dict, stats: dict) -> dict:
    """One case of the fingerprint: split, file digests, input statistics, and per task its label or mask stats."""
    tasks: dict[str, dict] = {}
    for task in spec.tasks:
        labelled = bool(case.get(present_key(task.name)))
        if task.kind == TaskKind.SEGMENTATION:
            found = stats["masks"].get(task.name) if labelled else None
            tasks[task.name] = {"labelled": labelled, **(found or {})}
        else:
            tasks[task.name] = {"labelled": labelled, "label": case.get(task.name) if labelled else None}
    return {"split": case.get("split"), "files": stats["files"], "inputs": stats["inputs"], "tasks": tasks}


def _cached_cases(cache: str | os.PathLike | None, reading: str) -> dict[str, dict]:
    """The cases of an earlier fingerprint made with the same reading settings; ``{}`` when none is usable."""
    if cache is None or not Path(cache).is_file():
        return {}
    try:
        earlier = read_fingerprint(cache)
    except FingerprintError as err:
        logger.info("fingerprint cache not used: %s", err)
        return {}
    if earlier.get("reading") != reading:
        logger.info("fingerprint cache %s not used: made with other reading settings (spec changed)", cache)
        return {}
    return earlier["cases"]


def _match_cache(
    jobs: list[CaseJob], cached: dict[str, dict], root: Path, count: int, bar: Any
) -> tuple[dict[str, dict], list[CaseJob]]:
    """Cases whose files all have their cached digests (their cached stats), and the jobs left to read.

    Only cases with a cached entry are hashed here, in threads (hashing releases the GIL); the others are
    hashed by the job that reads them.
    """
    candidates = [job for job in jobs if job.case_id in cached]
    if not candidates:
        return {}, jobs

    def digests(job: CaseJob) -> dict[str, str] | None:
        paths = [p for _, group in (*job.inputs, *job.masks) for p in group]
        try:
            return {_relative(p, root): file_digest(p) for p in paths}
        except OSError:  # a file gone or unreadable: the reading job reports it
            return None

    reused: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=max(2, count)) as pool:
        for job, found in zip(candidates, pool.map(digests, candidates), strict=True):
            entry = cached[job.case_id]
            masks = {
                rule.task: {k: v for k, v in entry.get("tasks", {}).get(rule.task, {}).items() if k != "labelled"}
                for rule, _ in job.masks
            }
            usable = (
                found is not None
                and found == entry.get("files")
                and set(entry.get("inputs") or {}) == {key for key, _ in job.inputs}
                and all("classes" in m for m in masks.values())
            )
            if usable:
                reused[job.case_id] = {"files": found, "inputs": entry["inputs"], "masks": masks}
                bar.update()
    return reused, [job for job in jobs if job.case_id not in reused]
