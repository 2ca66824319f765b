"""Task heads: a 1x1 convolution for dense tasks, global pooling + linear layer for image-level tasks.

Why: heads are the only task-specific part of a hard-sharing network, and their widths must come
from the task (``Task.num_outputs``) and the backbone's reported channels, never from literals.
:func:`build_head` is the single place that maps a task kind to a head.
"""

from __future__ import annotations

import torch
from monai.networks.layers import Conv
from monai.utils import look_up_option
from torch import nn

from medmtl.data.tasks import Task

__all__ = ["SegmentationHead", "ClassificationHead", "build_head", "POOLINGS"]

#: Global pooling choices of :class:`ClassificationHead`.
POOLINGS = ("avgmax", "avg", "max", "none")


class SegmentationHead(nn.Module):
    """1x1(x1) convolution from dense features to per-voxel class logits.

    Several segmentation heads can share one decoder, one head per task.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of the dense features (``backbone.dense_channels``).
        out_channels: classes (``task.num_outputs``).

    Example::

        head = SegmentationHead(3, in_channels=16, out_channels=2)  # (B, 16, D, H, W) -> (B, 2, D, H, W)
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv["conv", spatial_dims](in_channels, out_channels, kernel_size=1)
        self.is_dense = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> ``(B, out_channels, *spatial)``."""
        return self.conv(x)


class ClassificationHead(nn.Module):
    """Global pooling of a feature map (average and max, concatenated, by default) + a linear layer.

    Works for any number of spatial dims; with ``pooling="none"`` it takes ``(B, in_channels)`` vectors.

    Args:
        in_channels: channels of the pooled features (``backbone.bottleneck_channels``).
        out_channels: logits (``task.num_outputs``: 1 for binary, K otherwise).
        pooling: ``"avgmax"``, ``"avg"``, ``"max"`` or ``"none"``.
        dropout: dropout before the linear layer.

    Example::

        head = ClassificationHead(64, 3)  # (B, 64, h, w) -> (B, 3)
    """

    def __init__(self, in_channels: int, out_channels: int, pooling: str = "avgmax", dropout: float = 0.0) -> None:
        super().__init__()
        self.pooling = look_up_option(pooling, POOLINGS)
        in_features = in_channels * 2 if self.pooling == "avgmax" else in_channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, out_channels)
        self.is_dense = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` (or ``(B, in_channels)`` with ``pooling="none"``) -> ``(B, out_channels)``."""
        if self.pooling != "none":
            flat = x.flatten(2)
            if self.pooling == "avgmax":
                x = torch.cat([flat.mean(dim=-1), flat.amax(dim=-1)], dim=1)
            elif self.pooling == "avg":
                x = flat.mean(dim=-1)
            else:
                x = flat.amax(dim=-1)
        return self.fc(self.dropout(x))


def build_head(
    task: Task,
    spatial_dims: int,
    dense_channels: int,
    bottleneck_channels: int,
    pooling: str = "avgmax",
    dropout: float = 0.0,
    owner: str = "network",
) -> nn.Module:
    """The head for ``task``: segmentation on the dense features, classification on the bottleneck.

    Args:
        task: the task (its kind and ``num_outputs`` size the head).
        spatial_dims: spatial dims of the backbone.
        dense_channels: channels of the dense features (0 if the backbone has no decoder).
        bottleneck_channels: channels of the bottleneck features.
        pooling: global pooling of classification heads.
        dropout: dropout of classification heads.
        owner: name of the network, for error messages.

    Returns:
        A :class:`SegmentationHead` or :class:`ClassificationHead`.

    Raises:
        ValueError: for a segmentation task on a backbone without decoder.
    """
    if task.is_dense:
        if dense_channels <= 0:
            raise ValueError(
                f"{owner}: task '{task.name}' is a segmentation task but the backbone has no decoder "
                "(dense_channels=0); use a UNet/ResUNet/SegResNet/MeshNet backbone or drop the task"
            )
        return SegmentationHead(spatial_dims, dense_channels, task.num_outputs)
    return ClassificationHead(bottleneck_channels, task.num_outputs, pooling=pooling, dropout=dropout)
