"""Keeping only the cases of some classes (a spec's ``select``): e.g. one body part for its expert.

Why a spec key and not a bundle option: every command that builds cases (training, validation,
evaluation, inference) then sees the same subset, a run records it with its ``spec_overrides``, and
it works on any spec's labels (a task's classes, not folder names). ``select`` maps task names to
one class or a list of classes; a case is kept when, for every task named, it is labelled with one
of the classes (binary / multiclass: its class; multilabel: the label is positive). Cases without a
label for a selected task are left out. Selection runs after the splits are assigned, so a kept case
keeps the split it has without ``select`` and a run's ``splits.json`` stays the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medmtl.data.tasks import Task, TaskKind, present_key

__all__ = ["Selection", "normalise_select", "select_cases", "selection_problems"]

Selection = Mapping[str, str | Sequence[str]]
"""``{task name: class name or class names}`` as a spec writes it."""


def normalise_select(select: Selection) -> dict[str, tuple[str, ...]]:
    """``{task: (class, ...)}``: a single class name as a one-element tuple."""
    return {task: (classes,) if isinstance(classes, str) else tuple(classes) for task, classes in select.items()}


def selection_problems(select: Selection, tasks: Sequence[Task]) -> list[str]:
    """Everything wrong with ``select`` for these tasks (empty when it is usable), one sentence each."""
    by_name = {t.name: t for t in tasks}
    problems = []
    for name, classes in normalise_select(select).items():
        task = by_name.get(name)
        if task is None:
            problems.append(f"select names task '{name}', which is not one of {list(by_name)}")
            continue
        if task.kind == TaskKind.SEGMENTATION:
            problems.append(
                f"select names segmentation task '{name}': cases are selected by an image-level label "
                "(binary, multiclass or multilabel)"
            )
            continue
        if not classes:
            problems.append(f"select gives no class for task '{name}': name one of {list(task.class_names)}")
        unknown = [c for c in classes if c not in task.class_names]
        if unknown:
            problems.append(
                f"select names class(es) {unknown} of task '{name}', whose classes are {list(task.class_names)}"
            )
    return problems


def _indices(select: Selection, tasks: Sequence[Task]) -> list[tuple[Task, set[int]]]:
    by_name = {t.name: t for t in tasks}
    out = []
    for name, classes in normalise_select(select).items():
        task = by_name[name]
        out.append((task, {list(task.class_names).index(c) for c in classes}))
    return out


def _matches(case: Mapping, task: Task, wanted: set[int]) -> bool:
    if not case.get(present_key(task.name)):
        return False
    label = case[task.name]
    if task.kind == TaskKind.MULTILABEL:
        return any(float(label[i]) > 0.5 for i in wanted)
    return int(label) in wanted


def select_cases(cases: Sequence[dict], select: Selection, tasks: Sequence[Task]) -> list[dict]:
    """The cases that ``select`` keeps, in their order (see the module docstring).

    Args:
        cases: case dicts with ``<task>`` labels and ``<task>_present`` flags (a case table's cases).
        select: ``{task: class or [classes]}``.
        tasks: the spec's tasks (class names in label order).

    Raises:
        ValueError: for a task or class that does not exist, or a segmentation task (every problem listed).

    Example::

        elbows = select_cases(table.cases, {"body_part": "elbow"}, spec.tasks)
    """
    problems = selection_problems(select, tasks)
    if problems:
        raise ValueError("; ".join(problems))
    wanted = _indices(select, tasks)
    return [c for c in cases if all(_matches(c, task, classes) for task, classes in wanted)]
