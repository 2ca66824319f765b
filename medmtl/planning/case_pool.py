"""Reading the fingerprint's cases: in this process first, worker processes when the remaining work is worth it.

The same scheme as :mod:`medmtl.data.validate`'s pool (whose helpers are private to it): worker processes
import torch and MONAI before their first case, so small datasets are read faster without them.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from medmtl.data.problems import Problem
from medmtl.planning.case_stats import CaseJob, CaseResult, read_case

__all__ = ["run_cases"]

_POOL_WORTH_S = 10.0
"""Estimated remaining in-process reading time above which worker processes are started (each one
imports torch and MONAI first: a few seconds)."""


def run_cases(jobs: list[CaseJob], count: int, bar: Any) -> list[CaseResult]:
    """:func:`read_case` on every job, in job order: in this process, plus a ``spawn`` pool when worth it.

    Torch runs on one thread meanwhile: its thread pool on a busy machine costs more than it gains on
    one image (the cases are the parallelism), as in the workers.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results: list[CaseResult] = []
        warm = 0.0
        while len(results) < len(jobs):
            results.append(read_case(jobs[len(results)]))
            bar.update()
            done = len(results)
            if done == 1:  # the first case pays for lazy imports and reader set-up: not timed
                warm = time.perf_counter()
            elif count > 1 and (time.perf_counter() - warm) / (done - 1) * (len(jobs) - done) > _POOL_WORTH_S:
                results += _run_pool(jobs[done:], count, bar)
        return results
    finally:
        torch.set_num_threads(threads)


def _init_worker() -> None:
    """One torch thread per worker (the processes are the parallelism); MONAI's info messages off."""
    import torch

    torch.set_num_threads(1)
    logging.getLogger("monai").setLevel(logging.ERROR)


def _run_pool(jobs: list[CaseJob], count: int, bar: Any) -> list[CaseResult]:
    """``count - 1`` spawned workers take jobs from the front, this process from the back, until they meet."""
    context = multiprocessing.get_context("spawn")
    results: list[CaseResult | None] = [None] * len(jobs)
    pool = ProcessPoolExecutor(max_workers=count - 1, mp_context=context, initializer=_init_worker)
    try:
        futures = [pool.submit(read_case, job) for job in jobs]
        for future in futures:
            future.add_done_callback(lambda f: f.cancelled() or bar.update())
        for index in range(len(jobs) - 1, -1, -1):
            if not futures[index].cancel():
                break
            results[index] = read_case(jobs[index])
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


def _crashed(job: CaseJob) -> CaseResult:
    """A worker died (a reader crashing on a damaged file takes the pool down): the case is reported."""
    problem = Problem(
        "fingerprint_crashed",
        "the reading process died before this case was read (a reader crashed on a damaged file of this or "
        "another case)",
        "run `medmtl validate` on the dataset and fix what it reports, then plan again",
        case_id=job.case_id,
    )
    return CaseResult(case_id=job.case_id, problems=[problem])
