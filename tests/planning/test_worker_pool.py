"""Trial workers started ahead: ready after their imports, one request each, idle ones stopped, failures reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medmtl.planning.worker_pool import TrialWorkerPool


def _worker_children() -> list[int]:
    """Live child processes of this test running the trial worker (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"medmtl.planning.trial_worker" in command:
            found.append(int(stat.parent.name))
    return found


def test_workers_started_ahead_wait_ready_and_are_stopped_when_unused() -> None:
    before = _worker_children()
    pool = TrialWorkerPool()
    pool.start(2)
    try:
        pool.wait_ready()  # both imported and waiting for a request
        assert len(_worker_children()) == len(before) + 2
    finally:
        pool.close()
    assert _worker_children() == before


def test_a_failed_trial_names_the_bundle_and_shows_the_workers_error() -> None:
    pool = TrialWorkerPool()  # none started ahead: the request starts one
    request = {
        "bundle": "no_such_bundle",
        "overrides": {},
        "batch_sizes": [1],
        "memory_budget": 1 << 30,
        "steps": 1,
        "min_seconds": 0.0,
        "sample_cases": 1,
    }
    try:
        with pytest.raises(RuntimeError, match=r"(?s)trial steps of bundle no_such_bundle failed:\n.*no_such_bundle"):
            pool.run(request)
        assert _worker_children() == []  # the worker that took the request is gone too
    finally:
        pool.close()
