"""Keep a fraction of the training labels: learning curves and semi-supervised comparisons.

Why: "how good is it with 10 % of the labels?" is the question our users ask before they pay for
annotation, and semi-supervised training is only worth its complexity if it beats supervised
training on the same labelled subset. Both need the same, reproducible subset: chosen per stratum
(so a rare class keeps its share), with a seed, nested across fractions (the 5 % cases are inside
the 10 % cases), and the rest handed back without any label, ready for the unlabelled stream.
Why our own: scikit-learn's ``train_test_split(stratify=...)`` draws a new subset per fraction (not
nested) and refuses a stratum of one case.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from medmtl.data.tasks import Task, as_tasks, present_key

__all__ = ["split_label_budget", "strip_labels"]


def strip_labels(case: Mapping[str, Any], tasks: Sequence[Task | Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of a datalist case without any task label (every ``<task>_present`` set to 0)."""
    tasks = as_tasks(tasks, owner="strip_labels")
    out = {k: v for k, v in case.items() if k not in {t.name for t in tasks}}
    for task in tasks:
        out[present_key(task.name)] = 0
    return out


def split_label_budget(
    datalist: Sequence[Mapping[str, Any]],
    tasks: Sequence[Task | Mapping[str, Any]],
    fraction: float = 1.0,
    seed: int = 0,
    stratify: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split a training datalist into ``(labelled, unlabelled)`` keeping ``fraction`` of the labelled cases.

    Args:
        datalist: the training split (``CaseTable.datalist("train")``).
        tasks: the tasks (to know which keys are labels).
        fraction: share of the labelled cases that keep their labels, in ``(0, 1]``; each stratum
            keeps at least one case.
        seed: the subset's seed; the same seed gives nested subsets for growing fractions.
        stratify: a task whose label defines the strata (the spec's ``splits.stratify``); ``None``:
            one stratum.

    Returns:
        The kept cases (unchanged) and every other case with its labels removed; cases that had no
        label to begin with are always in the second list.

    Raises:
        ValueError: for a fraction outside ``(0, 1]``.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    tasks = as_tasks(tasks, owner="split_label_budget")
    has_label = [any(case.get(present_key(t.name)) for t in tasks) for case in datalist]
    strata: dict[str, list[int]] = defaultdict(list)
    for index, case in enumerate(datalist):
        if has_label[index]:
            key = str(case.get(stratify)) if stratify and case.get(present_key(stratify)) else ""
            strata[key].append(index)
    keep: set[int] = set()
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda i: str(datalist[i].get("case_id", i)))
        random.Random(f"{seed}:{key}").shuffle(members)
        keep.update(members[: max(1, round(fraction * len(members)))])
    labelled = [dict(case) for i, case in enumerate(datalist) if i in keep]
    unlabelled = [strip_labels(case, tasks) for i, case in enumerate(datalist) if i not in keep]
    return labelled, unlabelled
