"""MeshNet: a small full-resolution segmentation network of dilated convolutions (not in MONAI).

Why: MeshNet (Fedorov et al. 2017) segments whole brain volumes with a few thousand parameters and
no down-sampling, which makes it the lightest useful 3D backbone, e.g. for in-browser inference as
in brainchop. Its layers are MONAI ``Convolution`` blocks (Conv -> BatchNorm -> ReLU -> Dropout,
``adn_ordering="NAD"``), so only the arrangement is written here. Gradient checkpointing trades
compute for memory on large volumes, since every layer keeps a full-resolution map.

References:
    Fedorov et al., "End-to-end learning of brain tissue segmentation from imperfect labeling",
    IJCNN 2017, https://arxiv.org/abs/1612.00940. Schedules ``brainchop`` and ``revisited`` follow
    the brainchop models and "MeshNet revisited" (Fedorov et al., 2024).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv
from monai.utils import look_up_option
from torch import nn
from torch.utils.checkpoint import checkpoint

from medmtl.networks.backbones import Backbone
from medmtl.networks.registry import register_backbone

__all__ = ["DILATION_SCHEDULES", "MeshNetBackbone", "MeshNet"]

#: Named dilation schedules, one 3x3(x3) convolution per entry.
DILATION_SCHEDULES: dict[str, tuple[int, ...]] = {
    "original": (1, 1, 1, 2, 4, 8, 1),
    "brainchop": (1, 2, 4, 8, 16, 8, 4, 2, 1),
    "revisited": (1, 2, 4, 8, 16, 16, 8, 4, 2),
}


def _resolve_dilations(dilations: str | Sequence[int]) -> tuple[int, ...]:
    if isinstance(dilations, str):
        return look_up_option(dilations, DILATION_SCHEDULES)
    schedule = tuple(int(d) for d in dilations)
    if not schedule or min(schedule) < 1:
        raise ValueError(f"MeshNet: 'dilations' must be a schedule name or positive ints, got {dilations!r}")
    return schedule


@register_backbone("meshnet")
class MeshNetBackbone(Backbone):
    """MeshNet's hidden layers as a multi-task backbone (no final 1x1 convolution).

    Every layer is Conv(3, dilation=d, padding=d, bias) -> BatchNorm -> ReLU -> Dropout with the same
    number of ``channels``; the map never changes resolution, so dense features and bottleneck are
    both the last hidden map. Each layer is an encoder stage (for cross-stitch units).

    Args:
        spatial_dims: 3 (volumes) or 2.
        in_channels: input channels.
        channels: channels of every hidden layer (5, 16, 21, 26 are common).
        dilations: ``"original"`` (1,1,1,2,4,8,1), ``"brainchop"`` (1,2,4,8,16,8,4,2,1),
            ``"revisited"`` (1,2,4,8,16,16,8,4,2) or a list of ints.
        kernel_size: kernel size of the hidden layers.
        dropout: dropout ratio after each activation (0: none).
        act: MONAI activation ``("name", {kwargs})`` or name.
        norm: MONAI normalisation ``("name", {kwargs})`` or name.
        gradient_checkpointing: recompute each layer in the backward pass instead of storing its
            activations (training only; batch-norm running statistics are then updated twice per step).

    Example::

        backbone = MeshNetBackbone(spatial_dims=3, channels=16, dilations="revisited")

    See Also:
        :class:`MeshNet` (standalone segmentation network), :data:`DILATION_SCHEDULES`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: int = 21,
        dilations: str | Sequence[int] = "revisited",
        kernel_size: int = 3,
        dropout: float = 0.0,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"MeshNet: spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if channels < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MeshNet: need channels >= 1 and an odd kernel_size, got {channels}, {kernel_size}")
        schedule = _resolve_dilations(dilations)
        layers = []
        for i, dilation in enumerate(schedule):
            layers.append(
                Convolution(
                    spatial_dims,
                    in_channels if i == 0 else channels,
                    channels,
                    kernel_size=kernel_size,
                    dilation=dilation,
                    padding=dilation * (kernel_size - 1) // 2,
                    act=act,
                    norm=norm,
                    dropout=dropout if dropout > 0 else None,
                    dropout_dim=1,
                    bias=True,
                    adn_ordering="NAD",
                )
            )
        self.layers = nn.ModuleList(layers)
        self.dilations = schedule
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stage_channels = (int(channels),) * len(schedule)
        self.num_stages = len(schedule)
        self.bottleneck_channels = int(channels)
        self.dense_channels = int(channels)
        self.size_divisor = 1
        self.dense_stride = 1

    def encode_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if i == index:
                x = layer(x)
        return x

    def encode_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run all layers; returns only ``[last hidden map]`` (earlier maps are not needed)."""
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if use_checkpoint and not torch.jit.is_scripting():
            for i in range(self.num_stages):
                x = self._checkpointed_stage(i, x)
        else:
            for layer in self.layers:
                x = layer(x)
        return [x]

    @torch.jit.unused
    def _checkpointed_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.layers[index], x, use_reentrant=False)


class MeshNet(nn.Module):
    """Standalone MeshNet segmentation network: :class:`MeshNetBackbone` + a 1x1(x1) convolution.

    For 1 input channel and 2 classes, the ``revisited`` schedule has 5,682 / 56,194 / 147,474
    parameters at 5 / 16 / 26 channels. For multi-task use, put a :class:`MeshNetBackbone` in
    :class:`~medmtl.networks.MultiTaskNet` (a segmentation head there is the same 1x1 convolution).

    Args:
        spatial_dims: 3 or 2.
        in_channels: input channels.
        out_channels: classes (logit channels).
        channels, dilations, kernel_size, dropout, act, norm, gradient_checkpointing: as
            :class:`MeshNetBackbone`.

    Example::

        net = MeshNet(spatial_dims=3, in_channels=1, out_channels=2, channels=5, dilations="revisited")
        logits = net(torch.zeros(1, 1, 37, 37, 37))  # (1, 2, 37, 37, 37)
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: int = 21,
        dilations: str | Sequence[int] = "revisited",
        kernel_size: int = 3,
        dropout: float = 0.0,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = MeshNetBackbone(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            channels=channels,
            dilations=dilations,
            kernel_size=kernel_size,
            dropout=dropout,
            act=act,
            norm=norm,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.final = Conv["conv", spatial_dims](channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> logits ``(B, out_channels, *spatial)``."""
        return self.final(self.backbone.encode_features(x)[-1])
