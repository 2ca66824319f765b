"""Running the case checks: in this process first, then a ``spawn`` pool when the remaining work is worth it."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from medmtl.data.problems import Problem
from medmtl.data.validate.case_checks import _check_case, _init_worker
from medmtl.data.validate.jobs import _CaseJob, _CaseResult
from medmtl.data.validate.reading import _STALLED
from medmtl.data.validate.report import ValidationReport

__all__ = ["_run_jobs"]  # underscored: shared inside medmtl.data.validate only


_ADAPTIVE = True
"""Check cases in this process first and start worker processes only when the remaining work is worth
their start-up; this process keeps checking cases beside them (tests switch it off to force the pool)."""
_POOL_WORTH_S = 10.0
"""Estimated remaining in-process time above which worker processes are started (each one imports
torch and MONAI first: a few seconds)."""


def _run_jobs(jobs: list[_CaseJob], workers: int, progress: bool | None, report: ValidationReport) -> list[_CaseResult]:
    """Run :func:`_check_case` on every job, in this process and, when worth it, a ``spawn`` pool; in job order."""
    from tqdm import tqdm

    _STALLED.clear()  # a folder that stalled in an earlier validation gets one more chance

    from medmtl.data.readers import load_image  # noqa: F401 - imported before timing the first cases

    count = min(workers or os.cpu_count() or 1, len(jobs))
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(jobs), desc="validate", unit="case", file=sys.stderr, disable=not show, leave=False)
    results: list[_CaseResult] = []
    try:
        warm = 0.0
        while (_ADAPTIVE or count <= 1) and len(results) < len(jobs):
            results.append(_check_case(jobs[len(results)]))
            bar.update()
            done = len(results)
            if done == 1:  # the first case pays for lazy imports and reader set-up: not timed
                warm = time.perf_counter()
            elif count > 1 and (time.perf_counter() - warm) / (done - 1) * (len(jobs) - done) > _POOL_WORTH_S:
                break
        report.workers = 1
        if len(results) < len(jobs):
            report.workers = count
            results += _run_pool(jobs[len(results) :], count, bar)
        return results
    finally:
        bar.close()


def _run_pool(jobs: list[_CaseJob], count: int, bar: Any) -> list[_CaseResult]:
    """``count`` processes: this one and ``count - 1`` spawned workers.

    The workers take jobs from the front, this process takes them from the back (cancelling their
    futures) until the two meet.
    """
    context = multiprocessing.get_context("spawn")
    results: list[_CaseResult | None] = [None] * len(jobs)
    pool = ProcessPoolExecutor(max_workers=count - 1, mp_context=context, initializer=_init_worker)
    try:
        futures = [pool.submit(_check_case, job) for job in jobs]
        for future in futures:
            future.add_done_callback(lambda f: f.cancelled() or bar.update())
        for index in range(len(jobs) - 1, -1, -1):
            if not _ADAPTIVE or not futures[index].cancel():
                break
            results[index] = _check_case(jobs[index])
            bar.update()
        for index, future in enumerate(futures):
            if results[index] is None:
                try:
                    results[index] = future.result()
                except BrokenProcessPool:
                    results[index] = _crashed(jobs[index])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [r for r in results if r is not None]


def _crashed(job: _CaseJob) -> _CaseResult:
    """A worker process died (a reader crashing on a damaged file takes the whole pool down)."""
    return _CaseResult(
        case_id=job.case_id,
        problems=[
            Problem(
                "check_crashed",
                "the checker process died before this case was checked (a reader crashed on a damaged file "
                "of this or another case)",
                "fix the other errors and run again; if it persists, check this case's files one by one",
                case_id=job.case_id,
            )
        ],
    )
