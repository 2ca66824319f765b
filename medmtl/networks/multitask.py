"""Hard-sharing multi-task networks: one backbone, one head per task, ``{task_name: logits}`` out.

Why: DESIGN.md fixes the contract every trainer, loss and inferer relies on: a network returns a
dict keyed by task name, with segmentation logits ``(B, C, *spatial)`` at input resolution and
image-level logits ``(B, K)`` (``K = 1`` for binary tasks). Heads are sized from
``Task.num_outputs`` and the channels the backbone reports, so no task name or head width appears in
code. Gradient-based weightings (GradNorm, PCGrad) need to know which parameters every task shares:
:meth:`MultiTaskModule.shared_parameters` and :meth:`MultiTaskModule.task_specific_parameters`
partition the parameters for them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from monai.networks.layers import Conv
from torch import nn

from medmtl.data.task_keys import deep_supervision_key
from medmtl.data.tasks import Task, as_tasks
from medmtl.networks._utils import crop_to, merge_preset, pad_to_multiple
from medmtl.networks.backbone_holders import HoldsBackbones
from medmtl.networks.backbones import Backbone
from medmtl.networks.heads import build_head
from medmtl.networks.registry import build_backbone

__all__ = ["MultiTaskModule", "MultiTaskNet", "MultiTaskClassifier", "resolve_backbone"]

logger = logging.getLogger(__name__)


def resolve_backbone(backbone: Backbone | str, backbone_kwargs: Mapping[str, Any] | None, owner: str) -> Backbone:
    """A backbone module, or one built from the registry by name.

    Args:
        backbone: a :class:`Backbone` instance or a registered name (``"unet"``, ``"meshnet"``, ...).
        backbone_kwargs: constructor arguments when ``backbone`` is a name.
        owner: name of the network asking, for error messages.

    Returns:
        The backbone.

    Raises:
        TypeError: if ``backbone`` is neither, e.g. a plain MONAI network or a standalone ``MeshNet``.
        ValueError: if ``backbone_kwargs`` is given with a backbone instance.
    """
    if isinstance(backbone, str):
        built = build_backbone(backbone, **dict(backbone_kwargs or {}))
        if not isinstance(built, Backbone):
            raise TypeError(f"{owner}: registry entry '{backbone}' built a {type(built).__name__}, not a Backbone")
        return built
    if isinstance(backbone, Backbone):
        if backbone_kwargs:
            raise ValueError(
                f"{owner}: 'backbone_kwargs' ({sorted(backbone_kwargs)}) only apply when 'backbone' is a registry "
                f"name; a {type(backbone).__name__} instance was given"
            )
        return backbone
    raise TypeError(
        f"{owner}: 'backbone' must be a medmtl Backbone (e.g. BasicUNetBackbone, MeshNetBackbone) or a registry name, "
        f"got {type(backbone).__name__}; plain MONAI networks and the standalone MeshNet have no feature interface"
    )


class MultiTaskModule(nn.Module, HoldsBackbones):
    """Base of medmtl multi-task networks: the tasks, a ``heads`` ModuleDict, and parameter groups.

    Subclasses set ``self.tasks`` / ``self.task_names`` (with :meth:`_set_tasks`), ``self.heads``
    (``nn.ModuleDict`` keyed by task name) and override :meth:`_shared_parameter_list` and
    :meth:`~medmtl.networks.HoldsBackbones.backbones` (their backbones by state-dict prefix).
    """

    def _set_tasks(self, tasks: Iterable[Task | Mapping[str, Any]]) -> tuple[Task, ...]:
        coerced = as_tasks(tasks, owner=type(self).__name__)
        self.tasks = coerced
        self.task_names = [t.name for t in coerced]
        return coerced

    def _shared_parameter_list(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task depends on (the encoder); GradNorm/PCGrad operate on these.

        ``shared_parameters()`` and ``task_specific_parameters()`` partition ``parameters()``.
        """
        return _unique(self._shared_parameter_list())

    def task_specific_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        """Parameters that are not shared by every task.

        Args:
            task: a task name for that task's head only; ``None`` for everything outside
                :meth:`shared_parameters` (heads, and decoders/bridges used by some tasks only).

        Returns:
            A list of parameters.

        Raises:
            ValueError: if ``task`` is not one of the network's tasks.
        """
        if task is not None:
            if task not in self.heads:
                raise ValueError(f"{type(self).__name__}: unknown task '{task}'; tasks are {self.task_names}")
            return list(self.heads[task].parameters())
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]


def _level_sizes(sizes: list[int], stride: int, level_shape: list[int]) -> list[int]:
    """A decoder level's share of the unpadded input (``ceil(size / stride)``), at most what the level has.

    Padding backbones (resunet) give the level of the padded input; BasicUNet pools without padding.
    """
    kept: list[int] = []
    for d in range(len(sizes)):
        kept.append(min(-(-sizes[d] // stride), level_shape[d]))
    return kept


def _deep_supervision_levels(count: int, backbone: Backbone, has_dense: bool, owner: str) -> list[tuple[int, int]]:
    """The backbone's first ``count`` coarser decoder levels, ``(channels, stride)``; a clear error when it lacks them."""
    if count < 0:
        raise ValueError(f"{owner}: deep_supervision is a number of decoder levels (0: off), got {count}")
    if count == 0:
        return []
    available = backbone.deep_supervision_levels()
    if not has_dense or count > len(available):
        why = (
            "there is no segmentation task to supervise"
            if not has_dense
            else f"{type(backbone).__name__} has {len(available)} decoder level(s) below the output for it"
        )
        raise ValueError(
            f"{owner}: deep_supervision={count}, but {why}; use deep_supervision 0..{len(available) if has_dense else 0}"
            + ("" if available else " (the resunet and unet backbones support it)")
        )
    return list(available[:count])


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    result = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            result.append(p)
    return result


class MultiTaskNet(MultiTaskModule):
    """Hard parameter sharing: one backbone, one head per task, returns ``{task_name: logits}``.

    Segmentation heads are 1x1 convolutions on the backbone's last decoder features (all dense
    tasks share the decoder; a backbone with coarser dense features brings them to full resolution
    in its own heads, ``Backbone.dense_head``: MONAI UNet's top up-layer for ``resunet``);
    classification heads pool the bottleneck (average + max) and apply a linear layer. Inputs of
    any size are padded to what the backbone needs and dense logits are cropped back to input
    resolution.

    Args:
        backbone: a :class:`~medmtl.networks.backbones.Backbone` (``BasicUNetBackbone``,
            ``ResUNetBackbone``, ``SegResNetBackbone``, ``MeshNetBackbone``, ``ResNetBackbone``,
            ``DenseNetBackbone``) or a registry name (see :func:`~medmtl.networks.list_backbones`).
        tasks: :class:`~medmtl.data.Task` objects or dicts (``{"name", "kind", "classes"}``).
        backbone_kwargs: constructor arguments when ``backbone`` is a name.
        pooling: global pooling of classification heads (``"avgmax"``, ``"avg"``, ``"max"``).
        head_dropout: dropout before the linear layer of classification heads.
        mask_pooling: name of a segmentation task: every classification head then also pools the
            decoder features under that task's predicted foreground probability
            (:class:`~medmtl.networks.heads.MaskPooledClassificationHead`), for image-level labels
            about the structure the task outlines (lesion diagnosis, "no lesion" = normal).
        detach_mask: stop the classification losses' gradients at the predicted mask, so they
            train the classifier and the shared features but do not reshape the segmentation
            through the pooling weights.
        deep_supervision: in training, also predict every segmentation task at this many coarser
            decoder levels (nnU-Net's deep supervision; the backbone's
            :meth:`~medmtl.networks.backbones.Backbone.deep_supervision_levels`), under
            :func:`~medmtl.data.task_keys.deep_supervision_key`; :class:`~medmtl.losses.MultiTaskLoss`
            adds their losses. Each level costs a 1x1 convolution per segmentation task; in eval mode
            the output is the tasks' logits alone, so evaluation, inference and exports are unchanged.
            0 (default): off.

    Raises:
        ValueError: on an empty or duplicated task list, a segmentation task on a backbone
            without decoder, a ``mask_pooling`` that is not a segmentation task of the network, or
            more ``deep_supervision`` levels than the backbone has (or no segmentation task for them).
        TypeError: if ``backbone`` is not a medmtl backbone.

    Example::

        net = MultiTaskNet(
            backbone=BasicUNetBackbone(spatial_dims=3, features=(8, 8, 16, 32, 64, 8)),
            tasks=[
                {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
                {"name": "malignant", "kind": "binary"},
            ],
        )
        out = net(torch.zeros(2, 1, 33, 33, 33))  # {"lesion": (2, 2, 33, 33, 33), "malignant": (2, 1)}

    See Also:
        :class:`MultiTaskClassifier`, :class:`~medmtl.networks.SaliencyBridgeNet`,
        :class:`~medmtl.networks.CrossStitchNet`, :class:`~medmtl.networks.MultiPlaneNet`.
    """

    def __init__(
        self,
        backbone: Backbone | str,
        tasks: Iterable[Task | Mapping[str, Any]],
        backbone_kwargs: Mapping[str, Any] | None = None,
        pooling: str = "avgmax",
        head_dropout: float = 0.0,
        mask_pooling: str | None = None,
        detach_mask: bool = True,
        deep_supervision: int = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        tasks = self._set_tasks(tasks)
        self.backbone = resolve_backbone(backbone, backbone_kwargs, owner)
        b = self.backbone
        by_name = {t.name: t for t in tasks}
        if mask_pooling is not None and (mask_pooling not in by_name or not by_name[mask_pooling].is_dense):
            dense = [t.name for t in tasks if t.is_dense]
            raise ValueError(
                f"{owner}: mask_pooling={mask_pooling!r} must name a segmentation task of the network; "
                f"its segmentation tasks are {dense}"
            )
        self.mask_pooling = mask_pooling
        self.detach_mask = bool(detach_mask)
        self.heads = nn.ModuleDict(
            {
                t.name: build_head(
                    t,
                    b.spatial_dims,
                    b.dense_channels,
                    b.bottleneck_channels,
                    pooling,
                    head_dropout,
                    owner,
                    mask_pooled=mask_pooling is not None,
                    dense_head=b.dense_head,
                    dense_stride=b.dense_stride,
                )
                for t in tasks
            }
        )
        self.has_dense = any(t.is_dense for t in tasks)
        levels = _deep_supervision_levels(int(deep_supervision), b, self.has_dense, owner)
        self.deep_heads = nn.ModuleDict(
            {
                t.name: nn.ModuleList(
                    Conv[Conv.CONV, b.spatial_dims](channels, t.num_outputs, kernel_size=1) for channels, _ in levels
                )
                for t in tasks
                if t.is_dense and levels
            }
        )
        self.deep_supervision_strides = [stride for _, stride in levels]
        self.deep_supervision_keys = {  # built here: TorchScript cannot format the keys in forward
            name: [deep_supervision_key(name, level + 1) for level in range(len(levels))] for name in self.deep_heads
        }
        self.dense_stride = int(b.dense_stride)
        self.spatial_dims = int(b.spatial_dims)
        self.in_channels = int(b.in_channels)
        if not self.has_dense and b.decoder_modules():
            logger.warning(
                "%s: no segmentation task, so the decoder of %s is unused; with DDP set find_unused_parameters=True "
                "or use an encoder-only backbone (resnet, densenet)",
                owner,
                type(b).__name__,
            )

    def backbones(self) -> dict[str, Backbone]:
        """``{"backbone": the backbone}``."""
        return {"backbone": self.backbone}

    def _shared_parameter_list(self) -> list[nn.Parameter]:
        decoder = {id(p) for m in self.backbone.decoder_modules() for p in m.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in decoder]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, <{self.spatial_dims} spatial dims>), got shape {list(x.shape)}"
            )

    def task_specific_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        params = super().task_specific_parameters(task)
        if task is not None and task in self.deep_heads:
            params += list(self.deep_heads[task].parameters())
        return params

    def _apply_heads(
        self, feats: list[torch.Tensor], sizes: list[int], decoded: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        bottleneck = feats[-1]
        dense = bottleneck
        if self.has_dense:
            dense = self.backbone.decode_features(feats) if decoded is None else decoded
            if self.dense_stride == 1:  # full-resolution features: crop before the (1x1) heads
                dense = crop_to(dense, sizes)
        dense_out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            if hasattr(head, "pools_under_mask"):  # compile-time branch: keeps TorchScript off head(dense)
                pass
            elif head.is_dense:
                dense_out[name] = crop_to(head(dense), sizes)  # a no-op when cropped before
        foreground = bottleneck  # TorchScript needs a tensor here; replaced when mask pooling is on
        mask_task = self.mask_pooling
        if mask_task is not None:
            foreground = self._foreground(dense_out[mask_task])
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():  # task order
            if hasattr(head, "pools_under_mask"):  # evaluated at compile time by TorchScript, unlike isinstance
                out[name] = head(bottleneck, dense, foreground)
            elif head.is_dense:
                out[name] = dense_out[name]
            else:
                out[name] = head(bottleneck)
        return out

    def _foreground(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *spatial)`` probability of "not background" from segmentation logits."""
        probability = torch.sigmoid(logits) if logits.shape[1] == 1 else 1.0 - torch.softmax(logits, dim=1)[:, :1]
        return probability.detach() if self.detach_mask else probability

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict every task.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``{task_name: logits}``: ``(B, num_outputs, *spatial)`` for segmentation tasks,
            ``(B, num_outputs)`` otherwise, in task order.
        """
        self._check_input(x)
        padded, sizes = pad_to_multiple(x, self.backbone.size_divisor)
        feats = self.backbone.encode_features(padded)
        if not (self.training and len(self.deep_heads) > 0):
            return self._apply_heads(feats, sizes)
        dense, levels = self.backbone.decode_levels(feats)
        out = self._apply_heads(feats, sizes, dense)
        for name, heads in self.deep_heads.items():
            for level, head in enumerate(heads):
                logits = head(levels[level])
                out[self.deep_supervision_keys[name][level]] = crop_to(
                    logits, _level_sizes(sizes, self.deep_supervision_strides[level], logits.shape[2:])
                )
        return out


class MultiTaskClassifier(MultiTaskNet):
    """Image-level multi-task classifier (e.g. radiographs: abnormality + body part) on a MONAI encoder.

    A :class:`MultiTaskNet` with an encoder-only backbone (DenseNet-121 by default, or any ResNet /
    DenseNet variant) and one pooled linear head per task.

    Args:
        tasks: binary / multiclass / multilabel tasks (``Task`` objects or dicts).
        backbone: registry name (``"densenet121"``, ``"densenet169"``, ``"resnet18"``, ``"resnet"``, ...) or
            a :class:`~medmtl.networks.backbones.Backbone` instance.
        spatial_dims: 2 for radiographs (3 works with the 3D variants).
        in_channels: image channels.
        backbone_kwargs: further backbone arguments (e.g. ``{"init_features": 32}``).
        pooling: global pooling of the heads.
        head_dropout: dropout before each head's linear layer.

    Raises:
        ValueError: for a segmentation task, or ``backbone_kwargs`` that contradict ``spatial_dims`` /
            ``in_channels``.

    Example::

        net = MultiTaskClassifier(
            tasks=[{"name": "abnormal", "kind": "binary"},
                   {"name": "body_part", "kind": "multiclass", "classes": ["elbow", "hand", "shoulder"]}],
            backbone="densenet121",
        )
    """

    def __init__(
        self,
        tasks: Iterable[Task | Mapping[str, Any]],
        backbone: Backbone | str = "densenet121",
        spatial_dims: int = 2,
        in_channels: int = 1,
        backbone_kwargs: Mapping[str, Any] | None = None,
        pooling: str = "avgmax",
        head_dropout: float = 0.0,
    ) -> None:
        tasks = as_tasks(tasks, owner="MultiTaskClassifier")
        dense = [t.name for t in tasks if t.is_dense]
        if dense:
            raise ValueError(
                f"MultiTaskClassifier predicts image-level tasks only; {dense} are segmentation tasks: use "
                "MultiTaskNet with a UNet/ResUNet/SegResNet/MeshNet backbone"
            )
        if isinstance(backbone, str):
            backbone_kwargs = merge_preset(
                {"spatial_dims": spatial_dims, "in_channels": in_channels}, dict(backbone_kwargs or {}), backbone
            )
        elif isinstance(backbone, Backbone) and (backbone.spatial_dims, backbone.in_channels) != (
            spatial_dims,
            in_channels,
        ):
            raise ValueError(
                f"MultiTaskClassifier: the given backbone has spatial_dims={backbone.spatial_dims}, "
                f"in_channels={backbone.in_channels} but spatial_dims={spatial_dims}, in_channels={in_channels} "
                "were requested"
            )
        super().__init__(backbone, tasks, backbone_kwargs, pooling=pooling, head_dropout=head_dropout)
