"""Backbones: MONAI networks split into encoder stages and a decoder, so multi-task heads can tap them.

Why: a multi-task network needs two things from its backbone, the last decoder features (for
segmentation heads, shared by every dense task) and the bottleneck features (for classification
heads), and cross-stitch units need to run the encoder one stage at a time. MONAI's networks return
only logits, so each class here subclasses (or, for ``monai.networks.nets.UNet``, re-walks) a MONAI
network and adds the small :class:`Backbone` interface; no MONAI layer code is copied. Every class
is built from plain keyword arguments, so a bundle config can name it with ``_target_``; short names
and presets live in :mod:`medmtl.networks.registry`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers import Act, Norm
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, DenseNet, ResNet, SegResNet, UNet
from torch import nn

from medmtl.networks._utils import crop_to, merge_preset, pad_to_multiple
from medmtl.networks.heads import SegmentationHead, UNetUpHead
from medmtl.networks.registry import register_backbone

__all__ = [
    "Backbone",
    "BasicUNetBackbone",
    "ResUNetBackbone",
    "SegResNetBackbone",
    "ResNetBackbone",
    "DenseNetBackbone",
]


class Backbone(nn.Module):
    """Interface every medmtl backbone implements (a mixin: it defines no ``__init__``).

    A subclass sets these attributes in its ``__init__`` (read them to size heads, never hard-code):

    - ``spatial_dims`` (int), ``in_channels`` (int);
    - ``stage_channels`` (tuple of int): channels after each encoder stage; ``num_stages`` = its length;
    - ``bottleneck_channels`` (int): channels of the last stage, read by classification heads;
    - ``dense_channels`` (int): channels of the decoder output (the dense features), 0 if there is
      none (image classifiers), in which case segmentation tasks are refused;
    - ``size_divisor`` (int): spatial sizes the encoder needs to be divisible by; inputs are zero-padded
      up to it and dense outputs cropped back, so any size works;
    - ``dense_stride`` (int): the dense features are at 1/``dense_stride`` of the (padded) input
      resolution, 1 for all but ``ResUNetBackbone``; a backbone with ``dense_stride > 1`` brings them
      to full resolution in the segmentation heads it builds (:meth:`dense_head`).

    and implements ``encode_stage(index, x)`` plus, when it has a decoder, ``decode_features(feats)``
    and ``decoder_modules()`` (and ``dense_head(out_channels)`` when the 1x1 convolution does not fit).
    """

    dense_stride = 1  # for subclasses that predate it (Python only: TorchScript needs it set in __init__)
    size_divisor = 1
    """Declared here so every backbone has it (no padding needed); each subclass sets its own in ``__init__``
    (TorchScript reads instance attributes). Not a bare annotation: under ``from __future__ import annotations``
    it is a string TorchScript cannot read, and TorchScript applies a base's annotations to its subclasses."""

    def encode_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run encoder stage ``index`` (0-based) on ``x``; used stage by stage by cross-stitch networks."""
        raise NotImplementedError(f"{type(self).__name__} does not implement encode_stage")

    def encode_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the whole encoder on an already padded input.

        Args:
            x: ``(B, in_channels, *spatial)``, spatial sizes divisible by ``size_divisor``.

        Returns:
            The output of every stage, in order (the last one is the bottleneck). A backbone whose
            decoder needs only the last stage may return just ``[bottleneck]``.
        """
        feats: list[torch.Tensor] = []
        for index in range(self.num_stages):
            x = self.encode_stage(index, x)
            feats.append(x)
        return feats

    def decode_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Decoder: stage outputs (as returned by :meth:`encode_features`) -> dense features.

        The default (no decoder) returns the bottleneck.
        """
        return feats[-1]

    def decoder_modules(self) -> list[nn.Module]:
        """Modules of the decoder (not shared by classification tasks); empty without a decoder."""
        return []

    def deep_supervision_levels(self) -> list[tuple[int, int]]:
        """``(channels, stride)`` of the decoder features :meth:`decode_levels` returns below output resolution.

        Fine to coarse; the default has none (deep supervision needs a backbone that lists them).
        """
        return []

    def decode_levels(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`decode_features` and the decoder features of :meth:`deep_supervision_levels`, from one pass.

        Why one pass: deep supervision (nnU-Net) reads the decoder's coarser levels of the same
        forward pass as the output. Each level is at the padded input size divided by its stride.
        """
        return self.decode_features(feats), []

    def dense_head(self, out_channels: int) -> nn.Module:
        """A segmentation head on the dense features: ``out_channels`` logits at (padded) input resolution.

        The default is a 1x1 convolution (:class:`~medmtl.networks.heads.SegmentationHead`);
        every dense task gets its own head, so the heads are not part of the backbone.
        """
        return SegmentationHead(self.spatial_dims, self.dense_channels, out_channels)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad, encode, decode, crop.

        Args:
            x: ``(B, in_channels, *spatial)``, any spatial size the architecture can take.

        Returns:
            ``(dense, bottleneck)``: dense features ``(B, dense_channels, *ceil(spatial / dense_stride))``
            (at input resolution for all but ``dense_stride > 1``; the bottleneck itself when
            ``dense_channels == 0``) and the bottleneck ``(B, bottleneck_channels, *reduced_spatial)``.
        """
        padded, sizes = pad_to_multiple(x, self.size_divisor)
        feats = self.encode_features(padded)
        if self.dense_channels > 0:
            stride = self.dense_stride
            return crop_to(self.decode_features(feats), [-(-s // stride) for s in sizes]), feats[-1]
        return feats[-1], feats[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x)


@register_backbone("unet")
class BasicUNetBackbone(Backbone, BasicUNet):
    """MONAI ``BasicUNet`` (five levels, max-pool down, deconv up) as a multi-task backbone.

    Its final 1x1 convolution is removed: the dense features are the last decoder block
    (``features[5]`` channels) and the bottleneck is the deepest encoder block (``features[4]``).
    BasicUNet pads odd sizes itself, so e.g. 33 or 37 voxels work without extra padding
    (at least 16 voxels per spatial dim are needed).

    Args:
        spatial_dims: 2 or 3 (1 works too).
        in_channels: input channels.
        features: six ints, the five encoder levels and the last decoder level.
        act: activation as a MONAI ``("name", {kwargs})`` tuple or name.
        norm: normalisation as a MONAI ``("name", {kwargs})`` tuple or name.
        bias: bias in the convolutions.
        dropout: dropout ratio.
        upsample: ``"deconv"``, ``"pixelshuffle"`` or ``"nontrainable"``.

    Example::

        backbone = BasicUNetBackbone(spatial_dims=3, in_channels=1, features=(8, 8, 16, 32, 64, 8))
        dense, bottleneck = backbone(torch.zeros(1, 1, 33, 33, 33))  # (1, 8, 33, 33, 33), (1, 64, 2, 2, 2)

    See Also:
        :class:`monai.networks.nets.BasicUNet`, :class:`ResUNetBackbone`, :class:`SegResNetBackbone`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
    ) -> None:
        if len(features) != 6:
            raise ValueError(
                f"BasicUNetBackbone: 'features' needs 6 ints (5 encoder levels + last decoder level), got {features!r}"
            )
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=1,
            features=tuple(features),
            act=act,
            norm=norm,
            bias=bias,
            dropout=dropout,
            upsample=upsample,
        )
        del self.final_conv  # heads replace it
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stage_channels = tuple(int(f) for f in features[:5])
        self.num_stages = 5
        self.bottleneck_channels = int(features[4])
        self.dense_channels = int(features[5])
        self.size_divisor = 1
        self.dense_stride = 1

    def encode_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index == 0:
            return self.conv_0(x)
        if index == 1:
            return self.down_1(x)
        if index == 2:
            return self.down_2(x)
        if index == 3:
            return self.down_3(x)
        if index == 4:
            return self.down_4(x)
        raise IndexError(f"BasicUNetBackbone has 5 encoder stages, got index {index}")

    def decode_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.decode_levels(feats)[0]

    def deep_supervision_levels(self) -> list[tuple[int, int]]:
        """The outputs of ``upcat_2``, ``upcat_3``, ``upcat_4``: ``features[1..3]`` channels at 1/2, 1/4, 1/8."""
        return [(self.stage_channels[level], 2**level) for level in (1, 2, 3)]

    def decode_levels(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n = len(feats)
        u4 = self.upcat_4(feats[n - 1], feats[n - 2])
        u3 = self.upcat_3(u4, feats[n - 3])
        u2 = self.upcat_2(u3, feats[n - 4])
        return self.upcat_1(u2, feats[n - 5]), [u2, u3, u4]

    def decoder_modules(self) -> list[nn.Module]:
        return [self.upcat_4, self.upcat_3, self.upcat_2, self.upcat_1]


@register_backbone("resunet")
class ResUNetBackbone(Backbone):
    """MONAI ``UNet`` (residual units when ``num_res_units > 0``, strided convs) as a multi-task backbone.

    MONAI builds this UNet as nested ``Sequential(down, SkipConnection(subblock), up)`` blocks. This
    class builds the MONAI network and re-walks that structure into ``down`` / ``bottom`` / ``up``
    module lists (the same MONAI modules, nothing re-implemented), which gives clean access to the
    bottleneck. Inputs are padded to a multiple of the product of the strides.

    **The top level is in the heads.** MONAI's UNet does all its work below full resolution: its first
    down layer is already strided, and only its top up-layer (a transposed convolution, then a residual
    unit whose last convolution is bare) reaches full resolution, going straight to the classes. So
    ``up`` stops one level short: the dense features are what MONAI's top up-layer reads, the top
    level's skip and the level below it concatenated (``dense_channels`` = ``2 * channels[0]``, or
    ``channels[0] + channels[1]`` with two levels), at 1/``strides[0]`` of the input resolution
    (``dense_stride``), and each segmentation task's head is MONAI's top up-layer with that task's
    classes as outputs (:meth:`dense_head`, :class:`~medmtl.networks.heads.UNetUpHead`).

    Why: with one segmentation task the network then *is* MONAI's ``UNet`` with the same channels,
    layer for layer (its weights load into it, and it gives the same logits), plus the classification
    heads on the bottleneck: it costs what the MONAI UNet a user would otherwise train costs, and
    segments as well. Each further segmentation task adds only the full-resolution layer of its own
    classes. The earlier layout (layout 1, see :mod:`medmtl.networks.layouts`) gave the top up-layer
    ``channels[0]`` outputs shared by 1x1 heads: a transposed convolution and a 3^d convolution of
    ``channels[0]`` channels at full resolution, 2.4x MONAI's FLOPs in 3D and 1.75-2.2x its time
    (issue 23). A shared full-resolution layer narrow enough to cost the same (about as many channels
    as classes) would have squeezed multi-class tasks, and every task sharing it, through a few
    channels.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: channels per level, top first; the last one is the bottleneck.
        strides: ``len(channels) - 1`` downsampling strides.
        num_res_units: residual units per block (0: plain convolutions; 2: the usual "ResUNet").
        kernel_size: convolution kernel size.
        up_kernel_size: transposed-convolution kernel size.
        act: MONAI activation ``("name", {kwargs})`` or name.
        norm: MONAI normalisation ``("name", {kwargs})`` or name.
        dropout: dropout ratio.
        bias: bias in the convolutions.
        adn_ordering: order of activation, dropout and normalisation (MONAI ``ADN``).
        head_features: channels at full resolution in each segmentation head: 0 (default) MONAI
            UNet's top up-layer straight to the classes; ``n > 0`` that layer with ``n`` normalised,
            activated channels and a 1x1 convolution to the classes (``UNetUpHead(features=n)``).
            It costs about 1.3x MONAI UNet's FLOPs in 2D and 2.5x in 3D (full-resolution voxels
            dominate there). On BUSI ``channels[0]`` helped only test images with a near-copy in
            training, so ``medmtl plan`` leaves it at 0 (benchmarks/README.md).

    Example::

        backbone = ResUNetBackbone(spatial_dims=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=2)
        dense, bottleneck = backbone(torch.zeros(1, 1, 64, 64))  # (1, 16, 32, 32), (1, 32, 16, 16)
        head = backbone.dense_head(3)  # head(dense): (1, 3, 64, 64), MONAI UNet's top up-layer

    See Also:
        :class:`monai.networks.nets.UNet`, :class:`BasicUNetBackbone`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        kernel_size: Sequence[int] | int = 3,
        up_kernel_size: Sequence[int] | int = 3,
        act: tuple | str = Act.PRELU,
        norm: tuple | str = Norm.INSTANCE,
        dropout: float = 0.0,
        bias: bool = True,
        adn_ordering: str = "NDA",
        head_features: int = 0,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        strides = tuple(int(s) for s in strides)
        if int(head_features) < 0:
            raise ValueError(
                f"ResUNetBackbone: 'head_features' must be 0 (MONAI UNet's top layer) or a channel count, got "
                f"{head_features}"
            )
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise ValueError(
                f"ResUNetBackbone: need at least 2 'channels' and len(strides) == len(channels) - 1, got "
                f"channels={channels}, strides={strides}"
            )
        net = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=1,  # its top up-layer is left out: each segmentation head builds its own
            channels=channels,
            strides=strides,
            kernel_size=kernel_size,
            up_kernel_size=up_kernel_size,
            num_res_units=num_res_units,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=bias,
            adn_ordering=adn_ordering,
        )
        downs: list[nn.Module] = []
        ups: list[nn.Module] = []
        block: nn.Module = net.model
        while isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
            if block[1].mode != "cat" or block[1].dim != 1:
                raise ValueError(
                    f"ResUNetBackbone expects MONAI UNet skip connections by channel concatenation: {block}"
                )
            downs.append(block[0])
            ups.insert(0, block[2])  # decoder order: deepest first
            block = block[1].submodule
        if len(downs) != len(strides):
            raise RuntimeError(
                f"ResUNetBackbone: found {len(downs)} levels in monai UNet, expected {len(strides)}; "
                "the MONAI UNet layout has changed"
            )
        self.down = nn.ModuleList(downs)
        self.bottom = block
        self.up = nn.ModuleList(ups[:-1])  # the top up-layer (ups[-1]) is the segmentation heads'
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stage_channels = channels
        self.num_stages = len(channels)
        self.bottleneck_channels = channels[-1]
        self.dense_channels = channels[0] + (channels[0] if len(channels) > 2 else channels[1])
        self.dense_stride = strides[0]
        self.size_divisor = math.prod(strides)
        self.strides = strides
        self.head_kwargs: dict[str, Any] = {
            "spatial_dims": spatial_dims,
            "in_channels": self.dense_channels,
            "strides": strides[0],
            "kernel_size": kernel_size,
            "up_kernel_size": up_kernel_size,
            "num_res_units": num_res_units,
            "act": act,
            "norm": norm,
            "dropout": dropout,
            "bias": bias,
            "adn_ordering": adn_ordering,
            "features": int(head_features),
        }

    def encode_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index == len(self.down):
            return self.bottom(x)
        for i, down in enumerate(self.down):
            if i == index:
                return down(x)
        raise IndexError(f"ResUNetBackbone has {self.num_stages} encoder stages, got index {index}")

    def encode_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        for down in self.down:
            x = down(x)
            feats.append(x)
        feats.append(self.bottom(x))
        return feats

    def decode_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Up to the top level: ``cat(skip, up)``, the input of MONAI's top up-layer (1/``dense_stride`` size)."""
        return self.decode_levels(feats)[0]

    def decoder_modules(self) -> list[nn.Module]:
        return [self.up]

    def deep_supervision_levels(self) -> list[tuple[int, int]]:
        """The dense features (below output resolution: the heads upsample them), then each up-layer below.

        The up-layer of level ``k`` outputs ``channels[k - 1]`` at a stride of ``strides[0] * ... * strides[k - 1]``.
        """
        levels = [(self.dense_channels, self.strides[0])]
        for k in range(2, len(self.strides)):
            levels.append((self.stage_channels[k - 1], math.prod(self.strides[:k])))
        return levels

    def decode_levels(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = feats[-1]
        n = len(feats)
        coarser: list[torch.Tensor] = []
        for i, up in enumerate(self.up):
            x = up(torch.cat([feats[n - 2 - i], x], dim=1))  # SkipConnection(mode="cat") order: skip first
            coarser.insert(0, x)  # fine to coarse
        dense = torch.cat([feats[0], x], dim=1)
        return dense, [dense] + coarser[1:]  # the finest up-layer's output is inside the dense features

    def dense_head(self, out_channels: int) -> nn.Module:
        """MONAI ``UNet``'s top up-layer with ``out_channels`` outputs (:class:`~medmtl.networks.heads.UNetUpHead`).

        With ``head_features`` it keeps that many channels at full resolution before a 1x1 convolution.
        """
        return UNetUpHead(out_channels=out_channels, **self.head_kwargs)


@register_backbone("segresnet")
class SegResNetBackbone(Backbone, SegResNet):
    """MONAI ``SegResNet`` (Myronenko 2018, without the VAE branch) as a multi-task backbone.

    Uses SegResNet's own ``encode`` / ``decode`` split. Its final block is cut after the
    normalisation and activation, so the dense features (``init_filters`` channels) are normalised and
    activated and the heads supply the 1x1 convolution. Inputs are padded to a multiple of
    ``2 ** (len(blocks_down) - 1)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        init_filters: channels of the first level (doubled per level).
        dropout_prob: dropout after the first convolution (``None``: none).
        act: MONAI activation ``("name", {kwargs})`` or name.
        norm: MONAI normalisation ``("name", {kwargs})`` or name.
        blocks_down: residual blocks per encoder level.
        blocks_up: residual blocks per decoder level; must have ``len(blocks_down) - 1`` entries.
        upsample_mode: ``"nontrainable"``, ``"deconv"`` or ``"pixelshuffle"``.

    Example::

        backbone = SegResNetBackbone(spatial_dims=3, init_filters=8, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))

    See Also:
        :class:`monai.networks.nets.SegResNet`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        init_filters: int = 8,
        dropout_prob: float | None = None,
        act: tuple | str = ("RELU", {"inplace": True}),
        norm: tuple | str = ("GROUP", {"num_groups": 8}),
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        upsample_mode: str = "nontrainable",
    ) -> None:
        blocks_down = tuple(int(b) for b in blocks_down)
        blocks_up = tuple(int(b) for b in blocks_up)
        if len(blocks_down) < 1 or len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(
                "SegResNetBackbone: len(blocks_up) must be len(blocks_down) - 1 so the decoder returns to input "
                f"resolution, got blocks_down={blocks_down}, blocks_up={blocks_up}"
            )
        super().__init__(
            spatial_dims=spatial_dims,
            init_filters=init_filters,
            in_channels=in_channels,
            out_channels=1,
            dropout_prob=dropout_prob,
            act=act,
            norm=norm,
            use_conv_final=True,
            blocks_down=blocks_down,
            blocks_up=blocks_up,
            upsample_mode=upsample_mode,
        )
        self.conv_final = self.conv_final[:2]  # keep norm + act, drop the 1x1 conv to classes
        self.in_channels = in_channels
        self.stage_channels = tuple(init_filters * 2**i for i in range(len(blocks_down)))
        self.num_stages = len(blocks_down)
        self.bottleneck_channels = self.stage_channels[-1]
        self.dense_channels = init_filters
        self.size_divisor = 2 ** (len(blocks_down) - 1)
        self.dense_stride = 1

    def encode_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index == 0:
            x = self.convInit(x)
            if self.dropout_prob is not None:
                x = self.dropout(x)
        for i, down in enumerate(self.down_layers):
            if i == index:
                x = down(x)
        return x

    def encode_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        _, down_x = self.encode(x)
        return down_x

    def decode_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        skips = feats.copy()
        skips.reverse()
        return self.decode(feats[-1], skips)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.up_samples, self.up_layers, self.conv_final]


@register_backbone("resnet")
class ResNetBackbone(Backbone, ResNet):
    """MONAI ``ResNet`` feature extractor (no pooling, no fc) for image-level tasks; 2D or 3D.

    Stages: stem (conv, norm, act, max-pool), then ``layer1`` .. ``layer4``. The bottleneck is the
    ``layer4`` map; there is no decoder (``dense_channels == 0``). No pretrained weights are
    downloaded.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage (4 ints): ``(2, 2, 2, 2)`` is ResNet-18.
        block_inplanes: channels per stage (4 ints), before ``widen_factor`` and block expansion.
        conv1_t_size: stem kernel size.
        conv1_t_stride: stem stride (2 as in the 2D ImageNet ResNets).
        no_max_pool: skip the stem max-pooling.
        shortcut_type: ``"B"`` (1x1 conv) or ``"A"`` (zero padding, not TorchScript-compatible).
        widen_factor: multiplies ``block_inplanes``.
        bias_downsample: bias in the shortcut convolutions.
        act: MONAI activation ``("name", {kwargs})`` or name.
        norm: MONAI normalisation for the stem (MONAI uses batch norm inside the blocks).

    Example::

        encoder = ResNetBackbone(spatial_dims=2, layers=(1, 1, 1, 1), block_inplanes=(8, 16, 32, 64))

    See Also:
        :class:`monai.networks.nets.ResNet`, ``build_backbone("resnet18")``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        conv1_t_size: int | tuple = 7,
        conv1_t_stride: int | tuple = 2,
        no_max_pool: bool = False,
        shortcut_type: str = "B",
        widen_factor: float = 1.0,
        bias_downsample: bool = True,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        if len(layers) != 4 or len(block_inplanes) != 4:
            raise ValueError(
                f"ResNetBackbone: 'layers' and 'block_inplanes' need 4 ints each, got {layers!r}, {block_inplanes!r}"
            )
        super().__init__(
            block=block,
            layers=[int(n) for n in layers],
            block_inplanes=[int(c) for c in block_inplanes],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            shortcut_type=shortcut_type,
            widen_factor=widen_factor,
            num_classes=1,
            feed_forward=False,
            bias_downsample=bias_downsample,
            act=act,
            norm=norm,
        )
        expansion = int(type(self.layer4[0]).expansion)
        widths = [int(c * widen_factor) for c in block_inplanes]
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stage_channels = (widths[0], *(w * expansion for w in widths))
        self.num_stages = 5
        self.bottleneck_channels = int(self.in_planes)  # MONAI leaves the last stage's output width here
        self.dense_channels = 0
        self.size_divisor = 1
        self.dense_stride = 1

    def encode_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index == 0:
            x = self.act(self.bn1(self.conv1(x)))
            if not self.no_max_pool:
                x = self.maxpool(x)
            return x
        if index == 1:
            return self.layer1(x)
        if index == 2:
            return self.layer2(x)
        if index == 3:
            return self.layer3(x)
        if index == 4:
            return self.layer4(x)
        raise IndexError(f"ResNetBackbone has 5 stages, got index {index}")


@register_backbone("resnet10")
def resnet10_backbone(**kwargs) -> ResNetBackbone:
    """ResNet-10 (basic blocks, ``layers=(1, 1, 1, 1)``)."""
    return ResNetBackbone(**merge_preset({"block": "basic", "layers": (1, 1, 1, 1)}, kwargs, "resnet10"))


@register_backbone("resnet18")
def resnet18_backbone(**kwargs) -> ResNetBackbone:
    """ResNet-18 (basic blocks, ``layers=(2, 2, 2, 2)``)."""
    return ResNetBackbone(**merge_preset({"block": "basic", "layers": (2, 2, 2, 2)}, kwargs, "resnet18"))


@register_backbone("resnet34")
def resnet34_backbone(**kwargs) -> ResNetBackbone:
    """ResNet-34 (basic blocks, ``layers=(3, 4, 6, 3)``)."""
    return ResNetBackbone(**merge_preset({"block": "basic", "layers": (3, 4, 6, 3)}, kwargs, "resnet34"))


@register_backbone("resnet50")
def resnet50_backbone(**kwargs) -> ResNetBackbone:
    """ResNet-50 (bottleneck blocks, ``layers=(3, 4, 6, 3)``)."""
    return ResNetBackbone(**merge_preset({"block": "bottleneck", "layers": (3, 4, 6, 3)}, kwargs, "resnet50"))


@register_backbone("densenet")
class DenseNetBackbone(Backbone, DenseNet):
    """MONAI ``DenseNet`` feature extractor (no classifier) for image-level tasks; 2D or 3D.

    Stages: stem (conv, norm, act, max-pool), then one per dense block (with its transition, or
    with the final norm and activation for the last one). The bottleneck is the activated last map;
    there is no decoder (``dense_channels == 0``). No pretrained weights are downloaded.
    ``build_backbone("densenet121")`` / ``"densenet169"`` / ``"densenet201"`` fix ``block_config``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        init_features: channels of the stem.
        growth_rate: channels added by each dense layer.
        block_config: dense layers per block; ``(6, 12, 24, 16)`` is DenseNet-121.
        bn_size: bottleneck width multiplier in the dense layers.
        act: MONAI activation ``("name", {kwargs})`` or name.
        norm: MONAI normalisation ``("name", {kwargs})`` or name.
        dropout_prob: dropout inside the dense layers.

    Example::

        encoder = DenseNetBackbone(spatial_dims=2, init_features=8, growth_rate=4, block_config=(2, 2))

    See Also:
        :class:`monai.networks.nets.DenseNet`, :class:`monai.networks.nets.DenseNet121`.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        dropout_prob: float = 0.0,
    ) -> None:
        block_config = tuple(int(b) for b in block_config)
        if not block_config:
            raise ValueError("DenseNetBackbone: 'block_config' needs at least one block")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=1,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=block_config,
            bn_size=bn_size,
            act=act,
            norm=norm,
            dropout_prob=dropout_prob,
        )
        self.final_act = self.class_layers.relu
        self.bottleneck_channels = int(self.class_layers.out.in_features)
        del self.class_layers  # heads replace it
        stage_index: list[int] = []
        stage_channels: list[int] = [int(init_features)]
        stage = 0
        for name, module in self.features.named_children():
            if name.startswith("denseblock"):
                stage += 1
            elif name.startswith("transition"):
                stage_channels.append(int(module.conv.out_channels))
            stage_index.append(stage)
        stage_channels.append(self.bottleneck_channels)
        self._stage_index = stage_index
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stage_channels = tuple(stage_channels)
        self.num_stages = len(block_config) + 1
        self.dense_channels = 0
        self.size_divisor = 1
        self.dense_stride = 1

    def encode_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        for i, module in enumerate(self.features):
            if self._stage_index[i] == index:
                x = module(x)
        if index == self.num_stages - 1:
            x = self.final_act(x)
        return x


@register_backbone("densenet121")
def densenet121_backbone(**kwargs) -> DenseNetBackbone:
    """DenseNet-121 (``block_config=(6, 12, 24, 16)``)."""
    return DenseNetBackbone(**merge_preset({"block_config": (6, 12, 24, 16)}, kwargs, "densenet121"))


@register_backbone("densenet169")
def densenet169_backbone(**kwargs) -> DenseNetBackbone:
    """DenseNet-169 (``block_config=(6, 12, 32, 32)``)."""
    return DenseNetBackbone(**merge_preset({"block_config": (6, 12, 32, 32)}, kwargs, "densenet169"))


@register_backbone("densenet201")
def densenet201_backbone(**kwargs) -> DenseNetBackbone:
    """DenseNet-201 (``block_config=(6, 12, 48, 32)``)."""
    return DenseNetBackbone(**merge_preset({"block_config": (6, 12, 48, 32)}, kwargs, "densenet201"))
