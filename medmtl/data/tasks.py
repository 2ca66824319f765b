"""The Task model: every other part of medmtl is keyed by task name.

A task is declared once (in a data spec or a bundle config). Head sizes, loss functions, metric
handlers, output keys and MLflow metric names are all derived from it, so no Python code ever
names a particular task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from medmtl.data.task_keys import (
    RESERVED_NAMES,
    RESERVED_PREFIXES,
    RESERVED_SUFFIXES,
    present_key,
    reserved_name_error,
)

__all__ = [
    "TaskKind",
    "LabelQuality",
    "Task",
    "as_tasks",
    "present_key",
    "num_outputs",
    "RESERVED_NAMES",
    "RESERVED_PREFIXES",
    "RESERVED_SUFFIXES",
    "reserved_name_error",
]


class TaskKind(str, Enum):
    """What a task predicts, which fixes the head, the loss and the metrics."""

    SEGMENTATION = "segmentation"  # dense label map, (B, C, *spatial) logits
    BINARY = "binary"  # one yes/no per case, (B, 1) logits
    MULTILABEL = "multilabel"  # several independent yes/no per case, (B, K) logits
    MULTICLASS = "multiclass"  # one of K classes per case, (B, K) logits


class LabelQuality(str, Enum):
    """Where a label comes from: a human reader (strong) or an algorithm / report mining (weak)."""

    STRONG = "strong"
    WEAK = "weak"


class Task(BaseModel):
    """One question asked of every case.

    Args:
        name: key of the task everywhere (datalist, network output, loss, metrics, MLflow).
        kind: segmentation, binary, multilabel or multiclass.
        classes: class names. Segmentation and multiclass: one per class, background first for
            segmentation (``[background, lesion]``). Multilabel: one per label. Binary: optional
            ``[negative, positive]`` names.
        pos_weight: for binary / multilabel BCE: ``"auto"`` (negatives / positives counted on the
            training split, as MRNet does), a number, one number per label, or ``None``.
        class_weights: for multiclass CE (or segmentation), a weight per class, or ``"auto"``
            (``n / (K * n_k)`` counted on the training split, sklearn's "balanced").
        description: free text shown in reports and bundle metadata.

    Example::

        Task(name="lesion", kind="segmentation", classes=["background", "lesion"])
        Task(name="malignant", kind="binary", pos_weight="auto")
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    kind: TaskKind
    classes: tuple[str, ...] | None = None
    pos_weight: Literal["auto"] | float | tuple[float, ...] | None = None
    class_weights: Literal["auto"] | tuple[float, ...] | None = None
    description: str = ""

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        reason = reserved_name_error(name, "task")
        if reason is not None:
            raise PydanticCustomError("reserved_name", reason.replace("{", "{{").replace("}", "}}"))
        return name

    @model_validator(mode="after")
    def _check_classes(self) -> Task:
        n = len(self.classes) if self.classes is not None else None
        if self.kind in (TaskKind.SEGMENTATION, TaskKind.MULTICLASS, TaskKind.MULTILABEL):
            if n is None:
                raise ValueError(f"task '{self.name}' ({self.kind.value}) needs 'classes' (a list of class names)")
            minimum = 1 if self.kind == TaskKind.MULTILABEL else 2
            if n < minimum:
                raise ValueError(f"task '{self.name}' ({self.kind.value}) needs at least {minimum} classes, got {n}")
        if self.kind == TaskKind.BINARY and n is not None and n != 2:
            raise ValueError(f"binary task '{self.name}' takes 2 class names [negative, positive], got {n}")
        if len(set(self.classes or ())) != len(self.classes or ()):
            raise ValueError(f"task '{self.name}' has duplicate class names: {list(self.classes)}")
        if self.pos_weight is not None and self.kind not in (TaskKind.BINARY, TaskKind.MULTILABEL):
            raise ValueError(f"pos_weight is for binary/multilabel tasks; task '{self.name}' is {self.kind.value}")
        if isinstance(self.pos_weight, tuple) and len(self.pos_weight) != self.num_outputs:
            raise ValueError(
                f"task '{self.name}': pos_weight has {len(self.pos_weight)} values for {self.num_outputs} labels"
            )
        if self.class_weights is not None:
            if self.kind not in (TaskKind.MULTICLASS, TaskKind.SEGMENTATION):
                raise ValueError(
                    f"class_weights is for multiclass/segmentation tasks; task '{self.name}' is {self.kind.value}"
                )
            if self.class_weights != "auto" and len(self.class_weights) != self.num_outputs:
                raise ValueError(
                    f"task '{self.name}': class_weights has {len(self.class_weights)} values for {self.num_outputs} classes"
                )
        return self

    @property
    def num_outputs(self) -> int:
        """Channels of this task's logits: 1 for binary, K otherwise."""
        if self.kind == TaskKind.BINARY:
            return 1
        return len(self.classes or ())

    @property
    def is_dense(self) -> bool:
        """True for tasks predicted per voxel (segmentation), False for per-case labels."""
        return self.kind == TaskKind.SEGMENTATION

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names, with defaults for a binary task without names."""
        if self.classes is not None:
            return self.classes
        return ("negative", "positive")

    @property
    def present_key(self) -> str:
        return present_key(self.name)


def num_outputs(tasks: list[Task] | tuple[Task, ...]) -> dict[str, int]:
    """``{task name: logits channels}``: what a network needs to size its heads."""
    return {t.name: t.num_outputs for t in tasks}


def as_tasks(tasks: Iterable[Task | Mapping[str, Any]], owner: str = "tasks") -> tuple[Task, ...]:
    """Turn ``Task`` objects or plain dicts (bundle configs) into a tuple of validated tasks.

    Args:
        tasks: ``Task`` objects or dicts such as ``{"name": "lesion", "kind": "segmentation",
            "classes": ["background", "lesion"]}``.
        owner: name of the component asking (network, loss, metric...), used in error messages.

    Returns:
        The tasks, in the given order.

    Raises:
        TypeError: if ``tasks`` is a single task/str or an item is neither a ``Task`` nor a mapping.
        ValueError: if no task is given, a dict is not a valid task, or two tasks share a name.

    Example::

        as_tasks([{"name": "malignant", "kind": "binary"}], owner="MultiTaskNet")
    """
    if isinstance(tasks, (str, bytes, Task, Mapping)):
        raise TypeError(
            f"{owner}: 'tasks' must be a list of tasks, got a single {type(tasks).__name__}; wrap it in [...]"
        )
    result: list[Task] = []
    for i, item in enumerate(tasks):
        if isinstance(item, Task):
            result.append(item)
        elif isinstance(item, Mapping):
            try:
                result.append(Task.model_validate(dict(item)))
            except ValidationError as err:
                raise ValueError(f"{owner}: tasks[{i}] = {dict(item)!r} is not a valid task:\n{err}") from err
        else:
            raise TypeError(
                f"{owner}: tasks[{i}] is a {type(item).__name__}; expected a medmtl.data.Task or a dict with "
                "'name', 'kind' and 'classes'"
            )
    if not result:
        raise ValueError(f"{owner}: 'tasks' is empty; give at least one task (name, kind, classes)")
    names = [t.name for t in result]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{owner}: task names must be unique, got {names} (duplicated: {duplicates})")
    return tuple(result)
