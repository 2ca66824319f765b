"""Per-case validation results cached by file content: a run on unchanged files opens none of them.

Why: every bundle run validates its dataset before training (``require_valid_dataset`` in
``initialize``), which decodes every image and mask again: 2 s on BUSI, minutes on large 3D sets,
for files that have not changed since the last run. Each case's result depends only on the bytes of
its files and on how they are checked (the job: paths, label rules, tolerances, limits), so it is
kept under a sha256 of exactly those (file bytes hashed with
:func:`~medmtl.data.image_signatures.content_digest`, as the duplicate search does) in
``$MEDMTL_CACHE_DIR/validation`` (see :func:`~medmtl.data.image_signatures.cache_dir`), one JSON per
dataset folder; nothing is pickled. A file whose path, size, modification time and inode are
unchanged since it was hashed is not read again (:class:`~medmtl.data.file_digests.FileDigests`,
its records next to the results), so validating unchanged data reads no image at all. A changed,
added or renamed file changes the key and is read again. Only results without errors are kept: an error may come from the moment (a stalled mount, a
crashed reader) and is checked afresh each time; :data:`RESULT_VERSION` changes drop every entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import medmtl
from medmtl.atomic_io import atomic_write
from medmtl.data.file_digests import FileDigests
from medmtl.data.image_signatures import CACHE_ENV, cache_dir
from medmtl.data.problems import Problem, Severity
from medmtl.data.validate.jobs import _CaseJob, _CaseResult

__all__ = ["ResultCache", "RESULT_VERSION"]

logger = logging.getLogger(__name__)

RESULT_VERSION = 1
"""Bumped whenever a check changes what it finds: older entries are then ignored."""


def _job_key(job: _CaseJob, files: FileDigests) -> str | None:
    """sha256 of the job's description and of the bytes of every file it names; ``None`` if one is unreadable."""
    paths = [p for _, names in job.inputs for p in names] + [p for _, names in job.masks for p in names]
    if not all(os.path.isfile(p) or os.path.isdir(p) for p in paths):
        return None  # missing, or not a regular file (a FIFO would block the read): the checks report it
    try:
        digests = [files.digest(p) for p in paths]
    except OSError:  # missing or unreadable: the checks report it, nothing to reuse
        return None
    description = json.dumps(
        {"job": dataclasses.asdict(job), "files": digests, "version": RESULT_VERSION, "medmtl": medmtl.__version__},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(description.encode()).hexdigest()


def _to_json(result: _CaseResult) -> dict[str, Any]:
    return {
        "case_id": result.case_id,
        "problems": [p.to_dict() for p in result.problems],
        "files": result.files,
        "classes_present": {k: list(v) for k, v in result.classes_present.items()},
        "empty": list(result.empty),
    }


def _from_json(entry: dict[str, Any]) -> _CaseResult:
    problems = [Problem(**{**p, "severity": Severity(p["severity"])}) for p in entry["problems"]]
    return _CaseResult(
        case_id=entry["case_id"],
        problems=problems,
        files=int(entry["files"]),
        classes_present={k: tuple(v) for k, v in entry["classes_present"].items()},
        empty=tuple(entry["empty"]),
    )


class ResultCache:
    """The cached case results of one dataset folder.

    Args:
        root: the dataset's root folder (names the cache file).
        enabled: ``False`` reads and writes nothing (every case is checked).
    """

    def __init__(self, root: str, enabled: bool = True) -> None:
        self.enabled = enabled
        name = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        self.path = cache_dir() / "validation" / f"v{RESULT_VERSION}-{name}.json"
        self.files = FileDigests(self.path.with_name(f"v{RESULT_VERSION}-{name}.files.json") if enabled else None)
        self._entries: dict[str, Any] = {}
        if enabled and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                self._entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError) as err:  # a damaged cache is ignored and rewritten, never trusted
                logger.warning("ignoring the unreadable validation cache %s (%s)", self.path, err)

    def split(self, jobs: list[_CaseJob]) -> tuple[list[str | None], dict[int, _CaseResult], list[int]]:
        """``(key per job, cached results by job index, indices of the jobs still to check)``."""
        keys = [_job_key(job, self.files) for job in jobs] if self.enabled else [None] * len(jobs)
        cached: dict[int, _CaseResult] = {}
        for index, key in enumerate(keys):
            entry = self._entries.get(key) if key is not None else None
            if entry is not None:
                try:
                    cached[index] = _from_json(entry)
                except (KeyError, TypeError, ValueError):  # an entry of another layout: check again
                    continue
        return keys, cached, [i for i in range(len(jobs)) if i not in cached]

    def store(self, keys: list[str | None], results: list[_CaseResult]) -> None:
        """Keep the error-free results of this run's jobs (entries of files no longer named are dropped)."""
        if not self.enabled:
            return
        self.files.save()
        entries = {
            key: _to_json(result)
            for key, result in zip(keys, results, strict=True)
            if key is not None and not any(p.severity == Severity.ERROR for p in result.problems)
        }
        if entries == self._entries:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(entries).encode())
            self._entries = entries
        except OSError as err:  # a read-only home must not stop a validation or a run
            logger.warning(
                "cannot write the validation cache %s (%s); set %s to a writable folder", self.path, err, CACHE_ENV
            )
