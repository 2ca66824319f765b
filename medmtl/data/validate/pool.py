"""Running the case checks: in this process first, then a ``spawn`` pool when the remaining work is worth it."""

from __future__ import annotations

import os
import sys

from medmtl.data.case_pool import run_adaptive
from medmtl.data.problems import Problem
from medmtl.data.validate.case_checks import _check_case, _init_worker
from medmtl.data.validate.jobs import _CaseJob, _CaseResult
from medmtl.data.validate.reading import _STALLED
from medmtl.data.validate.report import ValidationReport

__all__ = ["_run_jobs"]  # underscored: shared inside medmtl.data.validate only


_ADAPTIVE = True
"""Check cases in this process first and start worker processes only when the remaining work is worth
their start-up (:func:`medmtl.data.case_pool.run_adaptive`); tests switch it off to force the pool."""


def _run_jobs(jobs: list[_CaseJob], workers: int, progress: bool | None, report: ValidationReport) -> list[_CaseResult]:
    """Run :func:`_check_case` on every job, in this process and, when worth it, a ``spawn`` pool; in job order."""
    from tqdm import tqdm

    _STALLED.clear()  # a folder that stalled in an earlier validation gets one more chance

    from medmtl.data.readers import load_image  # noqa: F401 - imported before timing the first cases

    count = min(workers or os.cpu_count() or 1, len(jobs))
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(jobs), desc="validate", unit="case", file=sys.stderr, disable=not show, leave=False)
    try:
        results, report.workers = run_adaptive(
            jobs, _check_case, _crashed, count, bar, initializer=_init_worker, adaptive=_ADAPTIVE
        )
        return results
    finally:
        bar.close()


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
