"""One case's check: open every input and mask, compare their grids; top level so a worker can run it."""

from __future__ import annotations

import logging

from medmtl.data.problems import Problem
from medmtl.data.validate.jobs import _CaseJob, _CaseResult, _Grid
from medmtl.data.validate.reading import _describe, _inspect
from medmtl.data.validate.values import _compare

__all__ = ["_check_case", "_init_worker"]  # underscored: shared inside medmtl.data.validate only


def _init_worker() -> None:
    """Worker set-up: one torch thread per process (the pool provides the parallelism)."""
    import torch

    torch.set_num_threads(1)
    logging.getLogger("monai").setLevel(logging.ERROR)


def _check_case(job: _CaseJob) -> _CaseResult:
    """Open every input and mask of one case and check them; returns findings, never arrays."""
    result = _CaseResult(case_id=job.case_id, problems=[])
    try:
        _run_case_checks(job, result)
    except Exception as err:  # noqa: BLE001 - a checker bug must not hide the other cases' findings
        result.problems.append(
            Problem(
                "check_failed",
                f"the checker failed on this case: {_describe(err)}",
                "report this as a medmtl bug (with the file), and check the case's files by hand",
                case_id=job.case_id,
            )
        )
    return result


def _run_case_checks(job: _CaseJob, result: _CaseResult) -> None:
    problems = result.problems
    reference: _Grid | None = None
    for key, paths in job.inputs:
        for path in paths:
            grid, _, _ = _inspect(path, f"input '{key}'", job, None, problems)
            result.files += 1
            if grid is None:
                continue
            if reference is None:
                reference = grid
            elif job.same_grid_inputs:
                _compare(grid, reference, "shape_mismatch", job, problems)
    first_mask: _Grid | None = None
    present: dict[str, tuple[int, ...]] = {}
    empty: list[str] = []
    for rule, paths in job.masks:
        task_first: _Grid | None = None
        classes: set[int] = set()
        readable = 0
        any_foreground = False
        unchecked = False  # a file whose values could not be read (colour mask): emptiness unknown
        for path in paths:
            grid, found, foreground = _inspect(path, rule.role, job, rule, problems)
            result.files += 1
            if grid is None:
                continue
            readable += 1
            classes |= found
            any_foreground = any_foreground or bool(foreground)
            unchecked = unchecked or foreground is None
            if task_first is None:
                task_first = grid
                against = reference or first_mask
                if against is not None:
                    check = "shape_mismatch" if against is reference else "mask_shape_mismatch"
                    _compare(grid, against, check, job, problems, scaled_ok=rule.scaled)
                first_mask = first_mask or grid
            else:  # several files OR-ed into one label must share a grid
                _compare(grid, task_first, "mask_shape_mismatch", job, problems)
        if readable:
            if not rule.weak:
                present[rule.task] = tuple(sorted(classes))
            if not any_foreground and not unchecked:
                empty.append(rule.key)
    result.classes_present = present
    result.empty = tuple(empty)
