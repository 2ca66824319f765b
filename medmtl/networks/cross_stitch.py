"""Soft parameter sharing with cross-stitch units (Misra et al. 2016).

Why: hard sharing forces every task through one encoder; when tasks compete, a network per task
(or per group of tasks) that exchanges features through learned linear mixes often does better.
A cross-stitch unit after each encoder stage mixes the N columns' feature maps per channel with an
N x N matrix initialised near the identity (0.9 on the diagonal). These few parameters learn much
more slowly than convolutions at the same learning rate, so they are exposed as their own optimizer
parameter group (:meth:`CrossStitchNet.param_groups`, learning rate x100 by default, as in the paper).

Reference:
    Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016,
    https://arxiv.org/abs/1604.03539.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medmtl.data.tasks import Task
from medmtl.networks._utils import crop_to, pad_to_multiple, reinitialised_copy
from medmtl.networks.backbones import Backbone
from medmtl.networks.heads import build_head
from medmtl.networks.multitask import MultiTaskModule, resolve_backbone

__all__ = ["CrossStitchUnit", "CrossStitchNet"]


class CrossStitchUnit(nn.Module):
    """Per-channel linear mixing of N feature maps: ``out_i[c] = sum_j alpha[c, i, j] * in_j[c]``.

    Args:
        num_columns: N, the number of task networks.
        channels: channels of each feature map.
        init_same: initial weight of a column's own features (diagonal).
        init_other: initial weight of each other column; default ``(1 - init_same) / (N - 1)``
            (0.1 for two columns), so each output starts as a convex combination.

    Example::

        unit = CrossStitchUnit(num_columns=2, channels=16)
        a, b = unit([torch.zeros(1, 16, 8, 8), torch.ones(1, 16, 8, 8)])  # a == 0.1, b == 0.9
    """

    def __init__(
        self, num_columns: int, channels: int, init_same: float = 0.9, init_other: float | None = None
    ) -> None:
        super().__init__()
        if num_columns < 2:
            raise ValueError(f"CrossStitchUnit mixes at least 2 columns, got num_columns={num_columns}")
        if init_other is None:
            init_other = (1.0 - init_same) / (num_columns - 1)
        alpha = torch.full((channels, num_columns, num_columns), float(init_other))
        alpha[:, torch.arange(num_columns), torch.arange(num_columns)] = float(init_same)
        self.alpha = nn.Parameter(alpha)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """N tensors ``(B, C, *spatial)`` -> N mixed tensors of the same shape."""
        stacked = torch.stack(xs, dim=0)  # (N, B, C, *spatial)
        flat = stacked.reshape(stacked.shape[0], stacked.shape[1], stacked.shape[2], -1)
        mixed = torch.einsum("cij,jbcs->ibcs", self.alpha, flat).reshape(stacked.shape)
        return list(mixed.unbind(0))


class CrossStitchNet(MultiTaskModule):
    """One backbone per task (or task group), cross-stitched after every encoder stage.

    Each column is a full backbone (encoder and decoder) built from the same configuration and
    initialised independently. After each encoder stage k, a :class:`CrossStitchUnit` mixes the
    columns' stage-k maps; the mixed maps feed the next stage and the column's decoder skips. Each
    task's head sits on its own column (dense features or bottleneck, as in
    :class:`~medmtl.networks.MultiTaskNet`). Returns ``{task_name: logits}``.

    Args:
        backbone: registry name (``"unet"``, ``"resunet"``, ``"segresnet"``, ``"meshnet"``, ``"resnet18"``,
            ...) or a :class:`~medmtl.networks.backbones.Backbone` instance, deep-copied per column
            and re-initialised.
        tasks: ``Task`` objects or dicts.
        backbone_kwargs: backbone arguments when ``backbone`` is a name.
        groups: task names per column, e.g. ``[["lesion"], ["malignant", "diagnosis"]]``; default:
            one column per task. Every task must be in exactly one group; at least 2 groups.
        init_same: initial diagonal of the cross-stitch matrices.
        init_other: initial off-diagonal (default ``(1 - init_same) / (N - 1)``).
        pooling: global pooling of classification heads.
        head_dropout: dropout of classification heads.

    Raises:
        ValueError: for bad ``groups`` or a segmentation task on a backbone without decoder.

    Example::

        net = CrossStitchNet(
            backbone="unet",
            backbone_kwargs={"spatial_dims": 2, "features": (8, 8, 16, 32, 64, 8)},
            tasks=[{"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
                   {"name": "malignant", "kind": "binary"}],
        )
        optimizer = torch.optim.Adam(net.param_groups(lr=1e-3))  # cross-stitch units at lr 0.1
    """

    def __init__(
        self,
        backbone: Backbone | str,
        tasks: Iterable[Task | Mapping[str, Any]],
        backbone_kwargs: Mapping[str, Any] | None = None,
        groups: Sequence[Sequence[str]] | None = None,
        init_same: float = 0.9,
        init_other: float | None = None,
        pooling: str = "avgmax",
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        tasks = self._set_tasks(tasks)
        groups = [[t.name] for t in tasks] if groups is None else [list(g) for g in groups]
        flat = [name for group in groups for name in group]
        if len(groups) < 2 or any(not g for g in groups) or sorted(flat) != sorted(self.task_names):
            raise ValueError(
                f"{owner}: 'groups' must split the tasks {self.task_names} into at least 2 non-empty groups, each task "
                f"exactly once; got {groups}"
            )
        column_of = {name: i for i, group in enumerate(groups) for name in group}
        first = resolve_backbone(backbone, backbone_kwargs, owner)
        columns = [first]
        for _ in range(len(groups) - 1):
            if isinstance(backbone, str):
                columns.append(resolve_backbone(backbone, backbone_kwargs, owner))
            else:
                columns.append(reinitialised_copy(first))
        self.columns = nn.ModuleList(columns)
        self.stitches = nn.ModuleList(
            [CrossStitchUnit(len(groups), c, init_same, init_other) for c in first.stage_channels]
        )
        self.heads = nn.ModuleDict(
            {
                t.name: build_head(
                    t,
                    first.spatial_dims,
                    first.dense_channels,
                    first.bottleneck_channels,
                    pooling,
                    head_dropout,
                    owner,
                    dense_head=first.dense_head,
                )
                for t in tasks
            }
        )
        self.groups = groups
        self.task_column = column_of
        self.column_dense = [any(t.is_dense for t in tasks if column_of[t.name] == i) for i in range(len(groups))]
        self.size_divisor = int(first.size_divisor)
        self.dense_stride = int(first.dense_stride)
        self.spatial_dims = int(first.spatial_dims)
        self.in_channels = int(first.in_channels)

    def backbones(self) -> dict[str, Backbone]:
        """``{"columns.<i>": column}``: one backbone per column."""
        return {f"columns.{i}": column for i, column in enumerate(self.columns)}

    def cross_stitch_parameters(self) -> list[nn.Parameter]:
        """The mixing matrices of all cross-stitch units."""
        return list(self.stitches.parameters())

    def _shared_parameter_list(self) -> list[nn.Parameter]:
        return self.cross_stitch_parameters()

    def param_groups(
        self, lr: float, cross_stitch_lr_mult: float = 100.0, weight_decay: float | None = None
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the networks at ``lr``, the cross-stitch units at ``lr * cross_stitch_lr_mult``.

        Args:
            lr: learning rate of the columns and heads.
            cross_stitch_lr_mult: multiplier for the cross-stitch units (100 in Misra et al.).
            weight_decay: if given, weight decay of the columns and heads (the units get none).

        Returns:
            ``[{"params": ..., "lr": lr, "name": "networks"}, {"params": ..., "lr": lr * mult,
            "name": "cross_stitch"}]``, ready for ``torch.optim.*(groups)``; in a bundle config:
            ``"params": "$@network.param_groups(1e-3)"``.
        """
        stitch_ids = {id(p) for p in self.cross_stitch_parameters()}
        networks: dict[str, Any] = {
            "params": [p for p in self.parameters() if id(p) not in stitch_ids],
            "lr": lr,
            "name": "networks",
        }
        stitches: dict[str, Any] = {
            "params": self.cross_stitch_parameters(),
            "lr": lr * cross_stitch_lr_mult,
            "name": "cross_stitch",
        }
        if weight_decay is not None:
            networks["weight_decay"] = weight_decay
            stitches["weight_decay"] = 0.0
        return [networks, stitches]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict every task.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``{task_name: logits}`` (segmentation at input resolution, ``(B, K)`` otherwise).
        """
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, <{self.spatial_dims} spatial dims>), got shape {list(x.shape)}"
            )
        padded, sizes = pad_to_multiple(x, self.size_divisor)
        xs: list[torch.Tensor] = []
        feats: list[list[torch.Tensor]] = []
        for _ in range(len(self.columns)):
            xs.append(padded)
            feats.append([])
        for k, stitch in enumerate(self.stitches):
            staged: list[torch.Tensor] = []
            for j, column in enumerate(self.columns):
                staged.append(column.encode_stage(k, xs[j]))
            xs = stitch(staged)
            for j in range(len(xs)):
                feats[j].append(xs[j])
        dense: list[torch.Tensor] = []
        for j, column in enumerate(self.columns):
            if self.column_dense[j]:
                decoded = column.decode_features(feats[j])
                dense.append(crop_to(decoded, sizes) if self.dense_stride == 1 else decoded)  # 1x1 heads after a crop
            else:
                dense.append(xs[j])
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            j = self.task_column[name]
            if head.is_dense:
                out[name] = crop_to(head(dense[j]), sizes)
            else:
                out[name] = head(xs[j])
        return out
