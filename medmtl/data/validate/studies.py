"""Studies whose images disagree on a label: a warning per study, before anyone scores per study.

With ``aggregate_by`` a study's label is the label of its images (MURA labels the whole study), and
the per-study evaluation must decide what a study with a positive and a negative image is
(:mod:`medmtl.metrics.studies`: any positive image makes it positive). Such a study is usually a
data error (a study folder copied under both labels, a study template that merges two exams), so
``medmtl validate`` names it with its images and their labels, instead of the evaluation quietly
applying a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmtl.data.problems import Problem, Severity
from medmtl.data.spec_model import STUDY_KEY, DatasetSpecModel
from medmtl.data.tasks import TaskKind, present_key

__all__ = ["MAX_STUDIES_LISTED", "MAX_IMAGES_LISTED", "mixed_label_studies"]

MAX_STUDIES_LISTED = 20
"""Studies per task with a warning of their own; the rest are counted in one more warning."""
MAX_IMAGES_LISTED = 12
"""Images named in one study's warning; the rest are counted."""
_FIX = (
    "check the study's images and labels (an exam copied under two labels, or an aggregate_by template that "
    "merges two exams); per-study evaluation calls a study positive when any of its images is, and gives a "
    "multiclass study its most frequent class"
)


def _label_text(task: Any, value: Any) -> str:
    names = list(task.class_names)
    if task.kind == TaskKind.MULTICLASS:
        return names[int(value)]
    if task.kind == TaskKind.MULTILABEL:
        return "[" + ", ".join(n for n, v in zip(names, value, strict=True) if int(v)) + "]"
    return names[int(value)]


def _key(value: Any) -> Any:
    return tuple(int(v) for v in value) if isinstance(value, list | tuple) else int(value)


def mixed_label_studies(spec: DatasetSpecModel, cases: Sequence[dict]) -> list[Problem]:
    """One warning per study whose images carry different labels for an image-level task.

    Args:
        spec: the spec (nothing is checked without ``aggregate_by``).
        cases: the case table's cases (``CaseTable.cases``), holding the ``study`` key.

    Returns:
        Per task, up to :data:`MAX_STUDIES_LISTED` ``mixed_study_labels`` warnings, each naming the
        study and its images with their labels, plus one warning counting the studies beyond.
    """
    if spec.aggregate_by is None:
        return []
    problems: list[Problem] = []
    for task in spec.tasks:
        if task.kind == TaskKind.SEGMENTATION:
            continue
        members: dict[str, list[dict]] = {}
        for case in cases:
            if case.get(present_key(task.name)) and STUDY_KEY in case and task.name in case:
                members.setdefault(case[STUDY_KEY], []).append(case)
        mixed = {s: m for s, m in members.items() if len({_key(c[task.name]) for c in m}) > 1}
        for study, images in list(mixed.items())[:MAX_STUDIES_LISTED]:
            listed = ", ".join(
                f"{c['case_id']} ({_label_text(task, c[task.name])})" for c in images[:MAX_IMAGES_LISTED]
            )
            more = f" and {len(images) - MAX_IMAGES_LISTED} more" if len(images) > MAX_IMAGES_LISTED else ""
            problems.append(
                Problem(
                    "mixed_study_labels",
                    f"task '{task.name}': the {len(images)} images of study '{study}' carry different labels: "
                    f"{listed}{more}",
                    _FIX,
                    severity=Severity.WARNING,
                )
            )
        rest = list(mixed)[MAX_STUDIES_LISTED:]
        if rest:
            problems.append(
                Problem(
                    "mixed_study_labels",
                    f"task '{task.name}': {len(rest)} more studies carry different labels (e.g. "
                    f"{', '.join(rest[:5])}); {len(mixed)} studies in all",
                    _FIX,
                    severity=Severity.WARNING,
                )
            )
    return problems
