"""Dictionary transforms for multi-task samples: mask preparation and the per-task label contract.

Why: a medmtl sample carries one key per labelled task plus ``<task>_present``; a task a case
lacks is simply absent from its dict (the datalist never invents an empty mask). Absent keys are
fine for MONAI's transforms (``allow_missing_keys``) but not for collation: as checked against
MONAI 1.6.1, ``list_data_collate`` on dicts with different keys raises ``KeyError`` or silently
drops the key, depending on which sample comes first. :class:`EnsureTaskLabelsd` is therefore the
last step of every preset: it gives every task a tensor of a fixed shape and dtype, and a boolean
``<task>_present`` that losses and metrics use to ignore the placeholders.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Spacingd

from medmtl.data.tasks import Task, TaskKind, as_tasks, present_key
from medmtl.transforms.array import MergeMasks, ToGrey

__all__ = ["ToGreyd", "MergeMasksd", "EnsureTaskLabelsd", "FlagSafeSpacingd"]


class ToGreyd(MapTransform):
    """Dictionary wrapper of :class:`~medmtl.transforms.array.ToGrey`: colour inputs to grey.

    Args:
        keys: input keys (``image`` or the spec's named views).
        allow_missing_keys: skip keys the sample lacks.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToGrey()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class MergeMasksd(MapTransform):
    """Dictionary wrapper of :class:`~medmtl.transforms.array.MergeMasks`: one label map per mask key.

    Use one instance per segmentation task, with that task's ``binarize`` / ``values`` (the
    presets derive them from the spec's label source).

    Args:
        keys: mask keys (segmentation task names).
        binarize: any non-zero voxel becomes 1.
        values: raw voxel value -> class index, e.g. ``{255: 1}``.
        allow_missing_keys: skip keys the sample lacks (cases without this label).

    Example::

        MergeMasksd("lesion", binarize=True, allow_missing_keys=True)
    """

    def __init__(
        self,
        keys: KeysCollection,
        binarize: bool = False,
        values: Mapping[int, int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.merger = MergeMasks(binarize=binarize, values=values)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.merger(d[key])
        return d


class FlagSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd``, safe for samples carrying ``<task>_present`` flags.

    ``Spacingd`` (MONAI 1.6.1) treats every entry named ``<key>_*`` as a metadata dict of ``key``
    and calls ``.update()`` on it when the file is NIfTI, so a segmentation task ``blob`` with its
    flag ``blob_present`` (an int) raises ``AttributeError``. This subclass sets such non-dict
    entries aside for the call and puts them back; behaviour is otherwise ``Spacingd``'s.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], Mapping)
        }
        out = dict(super().__call__(d, lazy=lazy))
        out.update(aside)
        return out


class EnsureTaskLabelsd(MapTransform):
    """Give every task a label tensor of fixed shape/dtype and a boolean ``<task>_present``.

    The last transform before collation. For each task, the label counts as present when its key
    is in the sample, is not ``None``, and the sample's ``<task>_present`` (if any) is not 0.
    Present labels are converted, absent ones replaced by a placeholder of the same shape and
    dtype, so ``monai.data.list_data_collate`` works on batches mixing labelled and unlabelled
    cases. Per kind (batch shapes after collation in brackets):

    ============  ==================================  ====================================
    kind          label                               placeholder
    ============  ==================================  ====================================
    segmentation  ``(1, *spatial)`` ``seg_dtype``     zeros, a MetaTensor with the image's
                  (``(B, 1, *spatial)``)              geometry and transform history
    binary        float32 ``(1,)`` (``(B, 1)``)       ``0.0``
    multiclass    int64 scalar (``(B,)``)             ``0`` (a valid index, never ``-1`` or
                                                      ``-100``: mask with ``<task>_present``)
    multilabel    float32 ``(K,)`` (``(B, K)``)       zeros
    ============  ==================================  ====================================

    ``<task>_present`` is a bool scalar (``(B,)`` after collation). Placeholders are zeros on
    purpose: they are valid inputs for every loss and metric, and excluding them is the job of the
    presence flag, not of a sentinel value.

    Args:
        tasks: the tasks (``Task``/``TaskSpec`` objects or their dicts, e.g. from a bundle config).
        image_key: input whose spatial shape and geometry segmentation placeholders copy.
        seg_dtype: dtype of segmentation labels and placeholders (``torch.float32`` by default, what
            MONAI's losses and metrics accept; a string such as ``"uint8"`` works in configs).

    Raises:
        ValueError: a label of the wrong size (a multi-channel mask left unmerged, a mask whose
            spatial shape differs from the image's, a multilabel vector with the wrong length).
        KeyError: a segmentation placeholder is needed but ``image_key`` is not in the sample.

    Example::

        EnsureTaskLabelsd(spec.task_list, image_key="image")
    """

    def __init__(
        self,
        tasks: Sequence[Task | Mapping[str, Any]],
        image_key: str = "image",
        seg_dtype: torch.dtype | str = torch.float32,
    ) -> None:
        self.tasks = list(as_tasks(tasks, owner=type(self).__name__))
        if not self.tasks:
            raise ValueError("EnsureTaskLabelsd needs at least one task, got none")
        super().__init__([t.name for t in self.tasks], allow_missing_keys=True)
        self.image_key = image_key
        self.seg_dtype = getattr(torch, seg_dtype) if isinstance(seg_dtype, str) else seg_dtype
        if not isinstance(self.seg_dtype, torch.dtype):
            raise ValueError(f"seg_dtype must be a torch dtype or its name (e.g. 'float32'), got {seg_dtype!r}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for task in self.tasks:
            flag = present_key(task.name)
            value = d.get(task.name)
            present = value is not None and _flag(d.get(flag))
            if task.kind == TaskKind.SEGMENTATION:
                d[task.name] = self._mask(d, task, value) if present else self._empty_mask(d, task)
            else:
                d[task.name] = self._class_label(d, task, value if present else None)
            d[flag] = torch.tensor(present)
        return d

    # ---- segmentation ----------------------------------------------------------------------
    def _image(self, d: Mapping[Hashable, Any], task: Task) -> Any:
        if self.image_key not in d:
            raise KeyError(
                f"EnsureTaskLabelsd: segmentation task '{task.name}' needs image key '{self.image_key}' for its "
                f"placeholder shape, but the sample (case {d.get('case_id', '?')}) has only {sorted(map(str, d))}; "
                "pass image_key= one of the spec's inputs"
            )
        return d[self.image_key]

    def _mask(self, d: Mapping[Hashable, Any], task: Task, value: Any) -> torch.Tensor:
        if isinstance(value, str | list | tuple):
            raise ValueError(
                f"EnsureTaskLabelsd: mask of task '{task.name}' (case {d.get('case_id', '?')}) is still a path "
                f"({value!r}); load it first (LoadImaged on the segmentation keys, as build_transforms does)"
            )
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        spatial = tuple(self._image(d, task).shape[1:])
        if value.shape[0] != 1 or tuple(value.shape[1:]) != spatial:
            raise ValueError(
                f"EnsureTaskLabelsd: mask of task '{task.name}' (case {d.get('case_id', '?')}) has shape "
                f"{tuple(value.shape)}, expected (1, *{spatial}) like '{self.image_key}'; merge multi-file masks with "
                "MergeMasksd and resize image and masks together (medmtl.transforms.build_transforms does both)"
            )
        # .to() of a MetaTensor copies its metadata even when the dtype is already right: skip the no-op
        return value if value.dtype == self.seg_dtype else value.to(self.seg_dtype)

    def _empty_mask(self, d: Mapping[Hashable, Any], task: Task) -> torch.Tensor:
        image = self._image(d, task)
        zeros = torch.zeros((1, *image.shape[1:]), dtype=self.seg_dtype)
        if isinstance(image, MetaTensor):
            return MetaTensor(
                zeros,
                meta=copy.deepcopy(dict(image.meta)),
                applied_operations=copy.deepcopy(image.applied_operations),
            )
        return zeros

    # ---- classification --------------------------------------------------------------------
    def _class_label(self, d: Mapping[Hashable, Any], task: Task, value: Any) -> torch.Tensor:
        n = task.num_outputs
        if task.kind == TaskKind.MULTICLASS:
            label = torch.as_tensor(0 if value is None else _as_python(value)).reshape(-1)
            if label.numel() != 1:
                raise ValueError(_size_error(d, task, value, "one class index"))
            return label.to(torch.int64).reshape(())
        expected = 1 if task.kind == TaskKind.BINARY else n
        if value is None:
            return torch.zeros(expected, dtype=torch.float32)
        label = torch.as_tensor(_as_python(value), dtype=torch.float32).reshape(-1)
        if label.numel() != expected:
            raise ValueError(_size_error(d, task, value, f"{expected} value(s)"))
        return label


def _flag(value: Any) -> bool:
    """A datalist presence flag (1/0, bool, tensor); a missing flag (``None``) does not veto the label."""
    if value is None:
        return True
    return bool(torch.as_tensor(_as_python(value)).reshape(-1).all())


def _as_python(value: Any) -> Any:
    """Plain numbers/lists from tensors and arrays (so bool() and torch.as_tensor behave)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _size_error(d: Mapping[Hashable, Any], task: Task, value: Any, expected: str) -> str:
    return (
        f"EnsureTaskLabelsd: label of {task.kind.value} task '{task.name}' (case {d.get('case_id', '?')}) is "
        f"{value!r}, expected {expected}; check the task's classes and label column in the spec"
    )
