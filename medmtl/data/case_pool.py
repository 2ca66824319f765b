"""Per-case work in this process first, then a ``spawn`` pool when the remaining work is worth it.

Why: worker processes import torch and MONAI before their first case (seconds), so a small dataset
is read faster without them. Shared by the validator and the fingerprint: each case runs in this
process until the measured time per case says the rest would take longer than
:data:`POOL_WORTH_S`; then ``count - 1`` spawned workers take cases from the front while this
process keeps taking them from the back, until the two meet. A worker that dies (a reader crashing
on a damaged file takes the pool down) turns its unfinished cases into ``crashed(job)`` results.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

__all__ = ["POOL_WORTH_S", "run_adaptive"]

Job = TypeVar("Job")
Result = TypeVar("Result")

POOL_WORTH_S = 10.0
"""Estimated remaining in-process time above which worker processes are started."""


def run_adaptive(
    jobs: Sequence[Job],
    work: Callable[[Job], Result],
    crashed: Callable[[Job], Result],
    count: int,
    bar: Any,
    initializer: Callable[[], None] | None = None,
    adaptive: bool = True,
) -> tuple[list[Result], int]:
    """``work(job)`` for every job, in job order; returns the results and the processes used.

    Args:
        jobs: the cases' jobs (picklable).
        work: a module-level function (the workers import it by name).
        crashed: the result of a job whose worker died.
        count: processes allowed, this one included.
        bar: a progress bar (``update()`` per finished job).
        initializer: run once in each worker.
        adaptive: ``False`` starts the pool at once when ``count > 1`` (tests force the pool so).
    """
    results: list[Result] = []
    warm = 0.0
    while (adaptive or count <= 1) and len(results) < len(jobs):
        results.append(work(jobs[len(results)]))
        bar.update()
        done = len(results)
        if done == 1:  # the first case pays for lazy imports and reader set-up: not timed
            warm = time.perf_counter()
        elif count > 1 and (time.perf_counter() - warm) / (done - 1) * (len(jobs) - done) > POOL_WORTH_S:
            break
    if len(results) == len(jobs):
        return results, 1
    return results + _run_pool(list(jobs[len(results) :]), work, crashed, count, bar, initializer, adaptive), count


def _run_pool(
    jobs: list[Job],
    work: Callable[[Job], Result],
    crashed: Callable[[Job], Result],
    count: int,
    bar: Any,
    initializer: Callable[[], None] | None,
    adaptive: bool,
) -> list[Result]:
    context = multiprocessing.get_context("spawn")
    results: list[Result | None] = [None] * len(jobs)
    pool = ProcessPoolExecutor(max_workers=count - 1, mp_context=context, initializer=initializer)
    try:
        futures = [pool.submit(work, job) for job in jobs]
        for future in futures:
            future.add_done_callback(lambda f: f.cancelled() or bar.update())
        for index in range(len(jobs) - 1, -1, -1):
            if not adaptive or not futures[index].cancel():
                break
            results[index] = work(jobs[index])
            bar.update()
        for index, future in enumerate(futures):
            if results[index] is None:
                try:
                    results[index] = future.result()
                except BrokenProcessPool:
                    results[index] = crashed(jobs[index])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [r for r in results if r is not None]
