"""Task heads: a 1x1 convolution for dense tasks, global pooling + linear layer for image-level tasks.

Why: heads are the only task-specific part of a hard-sharing network, and their widths must come
from the task (``Task.num_outputs``) and the backbone's reported channels, never from literals.
:func:`build_head` is the single place that maps a task kind to a head; a backbone whose dense
features are below input resolution (``ResUNetBackbone``) supplies its own segmentation head
(:class:`UNetUpHead`, MONAI ``UNet``'s top up-layer) through ``Backbone.dense_head``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers import Act, Conv, Norm, Pool
from monai.utils import look_up_option
from torch import nn

from medmtl.data.tasks import Task
from medmtl.networks._utils import crop_to, pad_to_multiple

__all__ = [
    "SegmentationHead",
    "UNetUpHead",
    "ClassificationHead",
    "MaskPooledClassificationHead",
    "build_head",
    "POOLINGS",
]

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


class UNetUpHead(nn.Module):
    """MONAI ``UNet``'s top up-layer as a segmentation head: features at 1/``strides`` -> class logits at full size.

    Why: MONAI's ``UNet`` reaches full resolution only in its last layer, a transposed convolution
    from the top level's features straight to the classes (followed, with residual units, by one
    residual unit whose last convolution is bare). As a head, every segmentation task gets that
    layer with its own classes, so a multi-task network on
    :class:`~medmtl.networks.backbones.ResUNetBackbone` costs what MONAI's ``UNet`` costs. The layer
    is built from MONAI's ``Convolution`` and ``ResidualUnit`` with the arguments MONAI's ``UNet``
    gives its top up-layer (``_get_up_layer(..., is_top=True)``); ``up`` holds the parameters
    under the names of MONAI's ``model.2``.

    With ``features > 0`` the layer is one of MONAI ``UNet``'s inner up-layers instead
    (``is_top=False``: ``features`` channels at full resolution, normalised and activated), followed
    by a 1x1 convolution to the classes (``out``), as nnU-Net's decoder ends. Why: at full resolution
    MONAI's top layer has only as many channels as classes, which may limit fine boundaries; the
    option lets a user measure that on their data (on BUSI it did not help unseen images:
    benchmarks/README.md, "Segmentation head width").

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of the dense features (``backbone.dense_channels``).
        out_channels: classes (``task.num_outputs``).
        strides: upsampling factor (the UNet's first stride).
        kernel_size: kernel of the residual unit.
        up_kernel_size: kernel of the transposed convolution.
        num_res_units: 0 for a bare transposed convolution, else one residual unit after it.
        act: MONAI activation ``("name", {kwargs})`` or name.
        norm: MONAI normalisation ``("name", {kwargs})`` or name.
        dropout: dropout ratio.
        bias: bias in the convolutions.
        adn_ordering: order of activation, dropout and normalisation (MONAI ``ADN``).
        features: 0 for MONAI's top up-layer straight to the classes; else the channels of the
            full-resolution features before a 1x1 convolution to the classes.

    Example::

        head = UNetUpHead(2, in_channels=32, out_channels=2, strides=2)  # (B, 32, 64, 64) -> (B, 2, 128, 128)
        wide = UNetUpHead(2, in_channels=32, out_channels=2, strides=2, features=16)  # same shapes, 16 channels inside
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int = 2,
        kernel_size: Sequence[int] | int = 3,
        up_kernel_size: Sequence[int] | int = 3,
        num_res_units: int = 2,
        act: tuple | str = Act.PRELU,
        norm: tuple | str = Norm.INSTANCE,
        dropout: float = 0.0,
        bias: bool = True,
        adn_ordering: str = "NDA",
        features: int = 0,
    ) -> None:
        super().__init__()
        features = int(features)
        if features < 0:
            raise ValueError(f"UNetUpHead: 'features' must be 0 (MONAI UNet's top layer) or positive, got {features}")
        is_top = features == 0
        width = out_channels if is_top else features
        conv = Convolution(
            spatial_dims,
            in_channels,
            width,
            strides=strides,
            kernel_size=up_kernel_size,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=bias,
            conv_only=is_top and num_res_units == 0,
            is_transposed=True,
            adn_ordering=adn_ordering,
        )
        if num_res_units > 0:
            unit = ResidualUnit(
                spatial_dims,
                width,
                width,
                strides=1,
                kernel_size=kernel_size,
                subunits=1,
                act=act,
                norm=norm,
                dropout=dropout,
                bias=bias,
                last_conv_only=is_top,
                adn_ordering=adn_ordering,
            )
            self.up: nn.Module = nn.Sequential(conv, unit)
        else:
            self.up = conv
        # the 1x1 convolution to the classes after wide features (None: MONAI's top layer ends in them)
        self.out: nn.Module | None = (
            None if is_top else Conv["conv", spatial_dims](features, out_channels, kernel_size=1)
        )
        self.is_dense = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> ``(B, out_channels, *(spatial * strides))``."""
        x = self.up(x)
        return x if self.out is None else self.out(x)


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
        return self.fc(self.dropout(global_pool(x, self.pooling)))


def global_pool(x: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B, C)`` (``(B, 2C)`` for ``avgmax``); ``none`` returns ``x`` unchanged."""
    if pooling == "none":
        return x
    flat = x.flatten(2)
    if pooling == "avgmax":
        return torch.cat([flat.mean(dim=-1), flat.amax(dim=-1)], dim=1)
    if pooling == "avg":
        return flat.mean(dim=-1)
    return flat.amax(dim=-1)


class MaskPooledClassificationHead(nn.Module):
    """Image-level logits from the pooled bottleneck **and** the decoder features under a predicted mask.

    Why: a classifier on the bottleneck sees the image at 1/16 resolution. When the image-level
    label is about a structure that a segmentation task of the same network outlines (benign vs
    malignant lesion; "normal" = no lesion), the full-resolution decoder features under that
    structure, and how much of it the network finds, carry what the label depends on. The head
    concatenates: the bottleneck pooled as in :class:`ClassificationHead`; the decoder features
    averaged with the predicted foreground probability as weights (``sum(p * f) / (sum(p) + 1)``,
    so an empty mask gives ~0 instead of NaN); the mean and the max of that probability (the soft
    area and the confidence that there is a structure at all). When the dense features are coarser
    than the mask (``dense_stride > 1``: ``ResUNetBackbone``'s, at 1/2 resolution), each feature
    cell is weighted by the sum of the probability over its voxels: the same average as pooling the
    features repeated to full resolution, without making them.

    Args:
        bottleneck_channels: channels of the bottleneck features.
        dense_channels: channels of the decoder (dense) features.
        out_channels: logits (``task.num_outputs``).
        pooling: global pooling of the bottleneck (``"avgmax"``, ``"avg"``, ``"max"``).
        dropout: dropout before the linear layer.
        dense_stride: the dense features' size is the (padded) input's divided by this.
        spatial_dims: spatial dims of the features (needed when ``dense_stride > 1``).

    Example::

        head = MaskPooledClassificationHead(64, 16, 3)
        logits = head(bottleneck, dense, foreground)  # (B, 64, h, w), (B, 16, H, W), (B, 1, H, W) -> (B, 3)
    """

    def __init__(
        self,
        bottleneck_channels: int,
        dense_channels: int,
        out_channels: int,
        pooling: str = "avgmax",
        dropout: float = 0.0,
        dense_stride: int = 1,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.pooling = look_up_option(pooling, tuple(p for p in POOLINGS if p != "none"))
        pooled = bottleneck_channels * 2 if self.pooling == "avgmax" else bottleneck_channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(pooled + dense_channels + 2, out_channels)
        self.dense_stride = int(dense_stride)
        self.cell_pool: nn.Module = (
            Pool["avg", spatial_dims](kernel_size=self.dense_stride) if self.dense_stride > 1 else nn.Identity()
        )
        self.cell_voxels = float(self.dense_stride**spatial_dims)
        self.is_dense = False
        self.pools_under_mask = True  # MultiTaskNet passes (bottleneck, dense, foreground) to heads with it

    def forward(self, bottleneck: torch.Tensor, dense: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels)`` from ``(B, Cb, *s)``, ``(B, Cd, *S / dense_stride)`` and ``(B, 1, *S)``.

        The last is the predicted foreground probability at input resolution. With ``dense_stride > 1``
        the dense features may extend past ``ceil(S / dense_stride)`` (padding): those cells are left out.
        """
        weight = foreground.flatten(2)  # (B, 1, N)
        cells = weight
        if self.dense_stride > 1:  # probability summed over each feature cell (the mask zero-padded to whole cells)
            summed = self.cell_pool(pad_to_multiple(foreground, self.dense_stride)[0]) * self.cell_voxels
            sizes: list[int] = []
            for d in range(2, summed.dim()):
                sizes.append(summed.shape[d])
            dense = crop_to(dense, sizes)
            cells = summed.flatten(2)
        under_mask = (dense.flatten(2) * cells).sum(dim=-1) / (cells.sum(dim=-1) + 1.0)
        features = [global_pool(bottleneck, self.pooling), under_mask, weight.mean(dim=-1), weight.amax(dim=-1)]
        return self.fc(self.dropout(torch.cat(features, dim=1)))


def build_head(
    task: Task,
    spatial_dims: int,
    dense_channels: int,
    bottleneck_channels: int,
    pooling: str = "avgmax",
    dropout: float = 0.0,
    owner: str = "network",
    mask_pooled: bool = False,
    dense_head: Callable[[int], nn.Module] | None = None,
    dense_stride: int = 1,
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
        mask_pooled: image-level tasks get a :class:`MaskPooledClassificationHead` (the network
            passes it the dense features and a predicted foreground map).
        dense_head: the backbone's segmentation head builder (``backbone.dense_head``: classes ->
            head); ``None``: a :class:`SegmentationHead` on ``dense_channels``.
        dense_stride: the dense features' size is the input's divided by this (``backbone.dense_stride``).

    Returns:
        The segmentation head (:class:`SegmentationHead`, or what ``dense_head`` builds), a
        :class:`ClassificationHead` or a :class:`MaskPooledClassificationHead`.

    Raises:
        ValueError: for a segmentation task on a backbone without decoder.
    """
    if task.is_dense:
        if dense_channels <= 0:
            raise ValueError(
                f"{owner}: task '{task.name}' is a segmentation task but the backbone has no decoder "
                "(dense_channels=0); use a UNet/ResUNet/SegResNet/MeshNet backbone or drop the task"
            )
        if dense_head is None:
            return SegmentationHead(spatial_dims, dense_channels, task.num_outputs)
        return dense_head(task.num_outputs)
    if mask_pooled:
        return MaskPooledClassificationHead(
            bottleneck_channels, dense_channels, task.num_outputs, pooling, dropout, dense_stride, spatial_dims
        )
    return ClassificationHead(bottleneck_channels, task.num_outputs, pooling=pooling, dropout=dropout)
