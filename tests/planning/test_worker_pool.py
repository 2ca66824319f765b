"""Trial workers started ahead: ready after their imports, one request each, idle ones stopped, failures reported."""

from __future__ import annotations

import pytest

from medmtl.planning.worker_pool import TrialWorkerPool

from .conftest import worker_children


def test_workers_started_ahead_wait_ready_and_are_stopped_when_unused() -> None:
    before = worker_children()
    pool = TrialWorkerPool()
    pool.start(2)
    try:
        pool.wait_ready()  # both imported and waiting for a request
        assert len(worker_children()) == len(before) + 2
    finally:
        pool.close()
    assert worker_children() == before


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
        assert worker_children() == []  # the worker that took the request is gone too
    finally:
        pool.close()
