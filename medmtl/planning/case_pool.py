"""Reading the fingerprint's cases: in this process first, worker processes when the remaining work is worth it.

The validator's scheme (:func:`medmtl.data.case_pool.run_adaptive`): worker processes import torch
and MONAI before their first case, so small datasets are read faster without them.
"""

from __future__ import annotations

import logging
from typing import Any

from medmtl.data.case_pool import run_adaptive
from medmtl.data.problems import Problem
from medmtl.planning.case_stats import CaseJob, CaseResult, read_case

__all__ = ["run_cases"]


def run_cases(jobs: list[CaseJob], count: int, bar: Any) -> list[CaseResult]:
    """:func:`read_case` on every job, in job order: in this process, plus a ``spawn`` pool when worth it.

    Torch runs on one thread meanwhile: its thread pool on a busy machine costs more than it gains on
    one image (the cases are the parallelism), as in the workers.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_adaptive(jobs, read_case, _crashed, count, bar, initializer=_init_worker)[0]
    finally:
        torch.set_num_threads(threads)


def _init_worker() -> None:
    """One torch thread per worker (the processes are the parallelism); MONAI's info messages off."""
    import torch

    torch.set_num_threads(1)
    logging.getLogger("monai").setLevel(logging.ERROR)


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
