"""Segmentation postprocessing chosen on out-of-fold Dice, saved as ``postprocessing.json``.

A network often predicts a lesion plus a few spurious specks; removing them helps when the
structure is one connected object and hurts when a case has several. nnU-Net therefore tries
"keep the largest component" on its out-of-fold predictions and keeps it only when the mean Dice
improves. The out-of-fold masks are not stored here (only per-case metrics are), so each
candidate's per-case Dice is computed as the masks arrive (:class:`~medmtl.metrics.cumulative.TaskMetric`
with ``candidates``), stored beside the plain Dice as ``dice_pp_<candidate>``, and the choice is made
on those numbers pooled over the folds. Candidates (all on the argmax label map, connected components
by MONAI with full connectivity, as nnU-Net):

- ``none``: the prediction as it is;
- ``keep_largest``: per foreground class, that class's largest component (the other components of
  the class become background); MONAI ``KeepLargestConnectedComponent(independent=True)``;
- ``keep_largest_foreground``: the largest component of the whole foreground (all foreground
  classes as one region, nnU-Net's first step); offered only with two or more foreground classes,
  where it differs from ``keep_largest``;
- ``remove_small_<f>``: per foreground class, components smaller than ``f`` times the case's
  largest component of that class become background (MONAI ``RemoveSmallObjects``). The size is a
  fraction of the case's own largest component, not a voxel count, because evaluation scores masks
  on the preprocessed grid while inference writes them on the input file's grid: a voxel count
  chosen on one does not mean the same on the other, a fraction does.

The rule (nnU-Net's): a candidate is kept only when its mean Dice over the out-of-fold cases beats
``none`` by more than ``min_improvement`` (default 0: any improvement beyond float noise) and no
foreground class's mean Dice gets worse (nnU-Net's defensive check). Among the candidates that
qualify the highest mean Dice wins; a tie goes to the least invasive one (smaller fraction, then
``keep_largest``, then ``keep_largest_foreground``); with none qualifying, nothing is applied.
Unlike nnU-Net, one operation is chosen per task (not one per class) and candidates are not chained.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects
from monai.transforms.utils import get_largest_connected_component_mask

from medmtl.atomic_io import atomic_write
from medmtl.data.tasks import Task, TaskKind
from medmtl.json_file import read_json, read_task_entries
from medmtl.metrics import functional as F
from medmtl.metrics.results import EvaluationResults, TaskResult

__all__ = [
    "POSTPROCESSING_FILE",
    "POSTPROCESSING_VERSION",
    "CANDIDATE_PREFIX",
    "DEFAULT_FRACTIONS",
    "PostprocessingOp",
    "TaskPostprocessing",
    "Postprocessing",
    "PostprocessingFileError",
    "as_label_map",
    "as_postprocessing",
    "default_candidates",
    "candidate_metric",
    "candidate_dice",
    "choose_postprocessing",
    "apply_postprocessing",
]

#: file name of the record beside the model / cross-validation.
POSTPROCESSING_FILE = "postprocessing.json"
#: layout version of ``postprocessing.json``; a file of another version is refused.
POSTPROCESSING_VERSION = 1
#: prefix of the per-case Dice of a candidate in ``TaskResult.case_metrics`` (``dice_pp_keep_largest``).
CANDIDATE_PREFIX = "dice_pp_"
#: default ``remove_small`` fractions of the case's largest component.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.1, 0.25)
_FORMAT = "medmtl.postprocessing"
_TIE = 1e-9  # mean Dice values closer than this count as equal (float noise)

NONE = "none"
KEEP_LARGEST = "keep_largest"
KEEP_LARGEST_FOREGROUND = "keep_largest_foreground"
REMOVE_SMALL = "remove_small"
OPS = (NONE, KEEP_LARGEST, KEEP_LARGEST_FOREGROUND, REMOVE_SMALL)


class PostprocessingFileError(ValueError):
    """A ``postprocessing.json`` cannot be used: the message names the file, the problem and the fix."""


def as_label_map(pred: Any, num_classes: int, task: str = "task") -> torch.Tensor:
    """A ``(1, *spatial)`` integer label map on the CPU from ``(C, *spatial)`` scores or a label map.

    Raises:
        ValueError: when the channels are neither ``num_classes`` nor 1.
    """
    x = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)
    x = x.detach().cpu()
    if x.ndim < 2 or x.shape[0] not in (1, num_classes):
        raise ValueError(
            f"segmentation task '{task}': prediction has shape {tuple(x.shape)}; expected ({num_classes}, *spatial) "
            "scores or a (1, *spatial) label map"
        )
    if x.shape[0] == num_classes and num_classes > 1:
        return x.argmax(0, keepdim=True).long()
    return x.round().long()


@dataclass(frozen=True)
class PostprocessingOp:
    """One postprocessing operation on a label map (see the module docstring for each ``op``).

    Args:
        op: ``none``, ``keep_largest``, ``keep_largest_foreground`` or ``remove_small``.
        fraction: ``remove_small`` only: components smaller than this fraction of the case's largest
            component of the class are removed, in ``(0, 1]``.

    Raises:
        ValueError: for an unknown op, or a fraction missing, out of range, or given to another op.

    Example::

        op = PostprocessingOp.from_name("remove_small_0.25")
        cleaned = op(label_map, num_classes=2)   # (1, H, W) label map in, a new one out
    """

    op: str
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"postprocessing op {self.op!r} is not one of {list(OPS)}")
        if self.op == REMOVE_SMALL:
            f = self.fraction
            if isinstance(f, bool) or not isinstance(f, int | float) or not (0.0 < float(f) <= 1.0):
                raise ValueError(f"remove_small needs a fraction in (0, 1] of the largest component, got {f!r}")
            object.__setattr__(self, "fraction", float(f))
        elif self.fraction is not None:
            raise ValueError(f"postprocessing op {self.op!r} takes no fraction (got {self.fraction!r})")

    @property
    def name(self) -> str:
        """``none``, ``keep_largest``, ``keep_largest_foreground`` or ``remove_small_<fraction>``."""
        return f"{REMOVE_SMALL}_{self.fraction:g}" if self.op == REMOVE_SMALL else self.op

    @classmethod
    def from_name(cls, name: str) -> PostprocessingOp:
        """Parse :attr:`name` (``remove_small_0.1`` -> ``remove_small`` with fraction 0.1)."""
        if isinstance(name, str) and name.startswith(f"{REMOVE_SMALL}_"):
            try:
                fraction = float(name[len(REMOVE_SMALL) + 1 :])
            except ValueError:
                raise ValueError(
                    f"postprocessing candidate {name!r}: expected remove_small_<fraction>, e.g. remove_small_0.1"
                ) from None
            return cls(REMOVE_SMALL, fraction)
        return cls(name)

    def _rank(self) -> tuple[int, float]:
        """Order from least to most invasive (ties between candidates go to the first)."""
        order = {NONE: 0, REMOVE_SMALL: 1, KEEP_LARGEST: 2, KEEP_LARGEST_FOREGROUND: 3}
        return order[self.op], self.fraction or 0.0

    def __call__(self, label_map: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The postprocessed copy of a ``(1, *spatial)`` integer label map (the input is left unchanged)."""
        out = torch.as_tensor(label_map).clone()
        foreground = list(range(1, num_classes))
        if self.op == NONE or not foreground or not bool((out > 0).any()):
            return out
        if self.op in (KEEP_LARGEST, KEEP_LARGEST_FOREGROUND):
            # MONAI edits its input in place: ``out`` is our copy
            keep = KeepLargestConnectedComponent(
                applied_labels=foreground, is_onehot=False, independent=self.op == KEEP_LARGEST
            )
            result = keep(out)
            return result.as_tensor() if isinstance(result, MetaTensor) else torch.as_tensor(result)
        spatial_dims = out.ndim - 1
        for c in foreground:
            mask = out == c
            if not bool(mask.any()):
                continue
            largest = int(get_largest_connected_component_mask(mask[0]).sum())
            # remove sizes < fraction * largest: a threshold half-way between two whole sizes reads the same
            # under scikit-image's old "< min_size" and its 0.26 "<= max_size" (which MONAI's min_size becomes)
            min_size = math.ceil(self.fraction * largest) - 0.5
            with warnings.catch_warnings():  # scikit-image >= 0.26 renames min_size; MONAI still passes it
                warnings.simplefilter("ignore", FutureWarning)
                kept = RemoveSmallObjects(min_size=min_size, connectivity=spatial_dims)(mask.to(torch.uint8))
            out[mask & ~torch.as_tensor(kept).bool()] = 0
        return out

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "fraction": self.fraction}


def default_candidates(task: Task, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[PostprocessingOp, ...]:
    """The candidates tried for ``task``: ``remove_small`` at ``fractions``, ``keep_largest``, and
    ``keep_largest_foreground`` when the task has two or more foreground classes."""
    ops = [PostprocessingOp(REMOVE_SMALL, f) for f in fractions] + [PostprocessingOp(KEEP_LARGEST)]
    if task.num_outputs > 2:
        ops.append(PostprocessingOp(KEEP_LARGEST_FOREGROUND))
    return tuple(ops)


def candidate_metric(op: PostprocessingOp) -> str:
    """Name of a candidate's per-case Dice in ``case_metrics`` (``dice_pp_keep_largest``)."""
    return f"{CANDIDATE_PREFIX}{op.name}"


def candidate_dice(
    pred: Any, label: Any, num_classes: int, candidates: Iterable[PostprocessingOp], task: str = "task"
) -> dict[str, torch.Tensor]:
    """Per-foreground-class Dice of each candidate applied to one case's prediction.

    Args:
        pred: ``(C, *spatial)`` scores or a ``(1, *spatial)`` label map.
        label: ``(1, *spatial)`` label map or ``(C, *spatial)`` one-hot truth.
        num_classes: C, classes including background.
        candidates: the operations.
        task: task name, for error messages.

    Returns:
        ``{candidate_metric(op): (C - 1,) float tensor}`` on the CPU, NaN where the truth of a class
        is empty (MONAI's Dice, as :func:`functional.segmentation_case_metrics` computes it).
    """
    label_map = as_label_map(pred, num_classes, task)
    truth = (label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)).detach().cpu()
    out = {}
    for op in candidates:
        processed = op(label_map, num_classes).float()
        dice = F.segmentation_case_metrics(processed[None], truth[None], num_classes, metrics=("dice",), task=task)
        out[candidate_metric(op)] = dice["dice"][0]
    return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class TaskPostprocessing:
    """The postprocessing of one segmentation task and the out-of-fold Dice it was chosen on.

    Args:
        task: task name.
        classes: foreground class names.
        op: the chosen operation (``none`` when no candidate improved the Dice).
        num_cases: cases with a defined Dice the choice was made on.
        dice: mean Dice of ``none`` and of every candidate.
        class_dice: per foreground class mean Dice of ``none`` and every candidate.
    """

    task: str
    classes: tuple[str, ...]
    op: PostprocessingOp
    num_cases: int = 0
    dice: dict[str, float] = field(default_factory=dict)
    class_dice: dict[str, list[float]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.classes) + 1

    def apply(self, mask: Any) -> Any:
        """The chosen operation on one case's ``(1, *spatial)`` label map (tensor or array, type kept)."""
        if isinstance(mask, np.ndarray):
            return self.op(torch.as_tensor(mask), self.num_classes).numpy().astype(mask.dtype)
        tensor = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
        out = self.op(tensor.cpu(), self.num_classes).to(device=tensor.device, dtype=tensor.dtype)
        return MetaTensor(out, meta=dict(mask.meta)) if isinstance(mask, MetaTensor) else out

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            **self.op.to_json(),
            "num_cases": self.num_cases,
            "dice": {k: _finite_or_none(v) for k, v in self.dice.items()},
            "class_dice": {k: [_finite_or_none(x) for x in v] for k, v in self.class_dice.items()},
        }

    @classmethod
    def from_json(cls, name: str, data: Any) -> TaskPostprocessing:
        """Rebuild from :meth:`to_json`; ``ValueError`` naming what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"task '{name}': expected an object, got {type(data).__name__}")
        classes = data.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"task '{name}': 'classes' must be a list of foreground class names, got {classes!r}")
        try:
            op = PostprocessingOp(data.get("op"), data.get("fraction"))
        except ValueError as err:
            raise ValueError(f"task '{name}': {err}") from None
        num_cases = data.get("num_cases", 0)
        if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 0:
            raise ValueError(f"task '{name}': 'num_cases' must be a count, got {num_cases!r}")
        dice, class_dice = data.get("dice") or {}, data.get("class_dice") or {}
        if not isinstance(dice, Mapping) or not all(v is None or _is_number(v) for v in dice.values()):
            raise ValueError(f"task '{name}': 'dice' must map candidates to numbers")
        if not isinstance(class_dice, Mapping) or not all(
            isinstance(v, list) and all(x is None or _is_number(x) for x in v) for v in class_dice.values()
        ):
            raise ValueError(f"task '{name}': 'class_dice' must map candidates to lists of numbers")
        return cls(
            task=name,
            classes=tuple(classes),
            op=op,
            num_cases=num_cases,
            dice={k: math.nan if v is None else float(v) for k, v in dice.items()},
            class_dice={k: [math.nan if x is None else float(x) for x in v] for k, v in class_dice.items()},
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Postprocessing:
    """The postprocessing of every segmentation task of a model, saved as ``postprocessing.json``.

    Example::

        record = choose_postprocessing(pooled_out_of_fold_results)
        record.save(run_dir / POSTPROCESSING_FILE)
        later = Postprocessing.load(run_dir / POSTPROCESSING_FILE, tasks)   # refuses other tasks / versions
        mask = apply_postprocessing(mask, later, "lesion")
    """

    tasks: dict[str, TaskPostprocessing]
    min_improvement: float = 0.0
    version: int = POSTPROCESSING_VERSION

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def __getitem__(self, name: str) -> TaskPostprocessing:
        if name not in self.tasks:
            raise KeyError(f"no postprocessing for task '{name}'; the record holds {self.task_names}")
        return self.tasks[name]

    def ops(self) -> dict[str, str]:
        """``{task: chosen candidate name}``."""
        return {n: t.op.name for n, t in self.tasks.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": self.version,
            "rule": "a candidate is kept only when its mean out-of-fold Dice beats 'none' by more than "
            "min_improvement and no foreground class gets worse (nnU-Net)",
            "min_improvement": self.min_improvement,
            "tasks": self.task_names,
            "postprocessing": {n: t.to_json() for n, t in self.tasks.items()},
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``postprocessing.json`` atomically (``path`` a file, or a folder to write it into); returns the path."""
        path = Path(path)
        if path.is_dir():
            path = path / POSTPROCESSING_FILE
        return atomic_write(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, tasks: Sequence[Task] | None = None) -> Postprocessing:
        """Read ``postprocessing.json``; with ``tasks``, refuse a file made for other segmentation tasks.

        Raises:
            FileNotFoundError: when the file does not exist.
            PostprocessingFileError: for invalid JSON, another format version, malformed entries, or
                (with ``tasks``) other task names or class counts; all problems in one message.
        """
        path = Path(path)
        if path.is_dir():
            path = path / POSTPROCESSING_FILE
        fix = (
            "choose it again on this model's out-of-fold predictions (medmtl cv writes it; "
            "medmtl.metrics.postprocessing.choose_postprocessing), or give postprocessing_path null"
        )
        data = read_json(path, PostprocessingFileError, fix)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise PostprocessingFileError(
                f'{path} is not a medmtl postprocessing file (no "format": "{_FORMAT}"); {fix}'
            )
        if data.get("version") != POSTPROCESSING_VERSION:
            raise PostprocessingFileError(
                f"{path} has postprocessing format version {data.get('version')!r}; this medmtl reads version "
                f"{POSTPROCESSING_VERSION}: {fix}"
            )
        chosen, problems = read_task_entries(
            path, data, "postprocessing", TaskPostprocessing.from_json, PostprocessingFileError, fix
        )
        min_improvement = data.get("min_improvement", 0.0)
        if not _is_number(min_improvement) or not math.isfinite(min_improvement) or min_improvement < 0:
            problems.insert(0, f"'min_improvement' must be a number >= 0, got {min_improvement!r}")
        if not problems and tasks is not None:
            problems = _mismatch(chosen, tasks)
        if problems:
            raise PostprocessingFileError(
                f"{path} cannot be used: " + "; ".join(problems) + f". Use the {POSTPROCESSING_FILE} saved with "
                f"this model, or {fix}"
            )
        return cls(chosen, float(min_improvement), POSTPROCESSING_VERSION)


def _mismatch(chosen: Mapping[str, TaskPostprocessing], tasks: Sequence[Task]) -> list[str]:
    """Differences between a record and the model's segmentation tasks."""
    dense = {t.name: t for t in tasks if t.kind == TaskKind.SEGMENTATION}
    problems = []
    missing = [n for n in dense if n not in chosen]
    extra = [n for n in chosen if n not in dense]
    if missing or extra:
        problems.append(
            f"it is for segmentation tasks {list(chosen)}, the model's are {list(dense)} "
            f"(no postprocessing for {missing}, not in the model: {extra})"
        )
    for name, entry in chosen.items():
        t = dense.get(name)
        if t is not None and entry.num_classes != t.num_outputs:
            problems.append(
                f"task '{name}' has {len(entry.classes)} foreground classes in the file, {t.num_outputs - 1} in the model"
            )
    return problems


def as_postprocessing(value: Postprocessing | str | os.PathLike | None, tasks: Sequence[Task]) -> Postprocessing | None:
    """A record from a ``postprocessing.json`` path (checked against ``tasks``), a record, or ``None``.

    Bundle configs give ``postprocessing_path`` (default ``null``); handlers and writers accept either.
    """
    if value is None or isinstance(value, Postprocessing):
        if value is not None:
            problems = _mismatch(value.tasks, tasks)
            if problems:
                raise ValueError("postprocessing record does not fit the tasks: " + "; ".join(problems))
        return value
    return Postprocessing.load(value, tasks)


def _candidates_of(result: TaskResult) -> dict[PostprocessingOp, np.ndarray]:
    found = {}
    for name, values in result.case_metrics.items():
        if name.startswith(CANDIDATE_PREFIX):
            found[PostprocessingOp.from_name(name[len(CANDIDATE_PREFIX) :])] = values
    return dict(sorted(found.items(), key=lambda item: item[0]._rank()))


def _choose_task(result: TaskResult, min_improvement: float) -> TaskPostprocessing:
    t = result.task
    candidates = _candidates_of(result)
    if not candidates:
        raise ValueError(
            f"task '{t.name}': no candidate Dice ({CANDIDATE_PREFIX}*) in the results; evaluate the out-of-fold "
            "cases with MultiTaskMetricHandler(postprocessing_candidates=True) (medmtl cv does)"
        )
    none = PostprocessingOp(NONE)
    base, not_nans, base_class, _ = F.reduce_segmentation(result.case_metrics["dice"])
    dice, class_dice = {none.name: base}, {none.name: base_class.tolist()}
    best, best_mean = none, base
    for op, values in candidates.items():
        mean, _, per_class, _ = F.reduce_segmentation(values)
        dice[op.name], class_dice[op.name] = mean, per_class.tolist()
        defined = np.isfinite(per_class) & np.isfinite(base_class)
        no_class_worse = bool(np.all(per_class[defined] >= base_class[defined] - _TIE))
        if mean > base + min_improvement + _TIE and no_class_worse and mean > best_mean + _TIE:
            best, best_mean = op, mean
    return TaskPostprocessing(
        task=t.name,
        classes=tuple(t.class_names[1:]),
        op=best,
        num_cases=int(not_nans),
        dice=dice,
        class_dice=class_dice,
    )


def choose_postprocessing(
    results: EvaluationResults | Iterable[TaskResult], min_improvement: float = 0.0
) -> Postprocessing:
    """Choose each segmentation task's postprocessing on out-of-fold per-case Dice (nnU-Net's rule).

    Args:
        results: out-of-fold results whose segmentation tasks hold the candidates' per-case Dice
            (``dice_pp_<candidate>``, from ``MultiTaskMetricHandler(postprocessing_candidates=True)``);
            image-level tasks are skipped.
        min_improvement: how much a candidate's mean Dice must beat ``none`` by (default 0: any
            improvement beyond float noise, as nnU-Net).

    Returns:
        The record, one entry per segmentation task (``op`` ``none`` where no candidate qualified).

    Raises:
        ValueError: listing every segmentation task without candidate Dice, or a bad ``min_improvement``.

    Example::

        record = choose_postprocessing(pool_results(fold_results))
        record["lesion"].op.name   # "keep_largest" when it raised the out-of-fold Dice
    """
    if not _is_number(min_improvement) or not math.isfinite(min_improvement) or min_improvement < 0:
        raise ValueError(f"min_improvement must be a number >= 0, got {min_improvement!r}")
    items = list(results.results.values()) if isinstance(results, EvaluationResults) else list(results)
    problems, chosen = [], {}
    for r in items:
        if r.task.kind != TaskKind.SEGMENTATION:
            continue
        try:
            chosen[r.task.name] = _choose_task(r, float(min_improvement))
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("cannot choose the postprocessing: " + "; ".join(problems))
    return Postprocessing(chosen, float(min_improvement))


def apply_postprocessing(mask: Any, record: Postprocessing, task: str) -> Any:
    """One case's ``(1, *spatial)`` label map of ``task`` after the record's operation (type kept).

    Raises:
        KeyError: when the record has no entry for ``task``.
    """
    return record[task].apply(mask)
