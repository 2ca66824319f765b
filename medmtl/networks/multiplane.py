"""MultiPlaneNet: MRNet-style classification from several 2D slice stacks (e.g. knee MRI planes).

Why: MRNet (Bien et al. 2018) reads each MRI plane (sagittal, coronal, axial) as a stack of 2D
slices: a 2D CNN encodes every slice, the slice features are max-pooled over the stack (so any number
of slices works), and the planes are combined. Here the planes are fused by concatenation and every
task gets a linear head, so one network predicts e.g. abnormal / ACL tear / meniscus tear (three
binary tasks or one multilabel task). The encoders are MONAI ResNet/DenseNet variants (any medmtl
2D backbone) with no pretrained downloads; view names come from the constructor, never from code.

Reference:
    Bien et al., "Deep-learning-assisted diagnosis for knee magnetic resonance imaging: development
    and retrospective validation of MRNet", PLOS Medicine 2018.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medmtl.data.tasks import Task
from medmtl.networks._utils import merge_preset, reinitialised_copy
from medmtl.networks.backbones import Backbone
from medmtl.networks.heads import ClassificationHead
from medmtl.networks.multitask import MultiTaskModule, resolve_backbone

__all__ = ["MultiPlaneNet"]


class MultiPlaneNet(MultiTaskModule):
    """One 2D encoder per view (or one shared), max over slices, concatenation of views, a head per task.

    Per view: slices ``(B, S, H, W)`` -> ``(B*S, 1, H, W)`` -> encoder bottleneck -> global average
    pooling -> ``(B, S, F)`` -> max over slices -> ``(B, F)``. Views are concatenated in the order of
    ``views`` -> ``(B, V*F)`` -> one linear head per task.

    Args:
        views: view names, the keys of the input dict (e.g. ``["sagittal", "coronal", "axial"]``).
        tasks: image-level tasks (``Task`` objects or dicts).
        encoder: registry name of a 2D backbone (``"resnet18"``, ``"resnet"``, ``"densenet121"``, ...) or a
            :class:`~medmtl.networks.backbones.Backbone` instance (2D, 1 input channel).
        encoder_kwargs: encoder arguments when ``encoder`` is a name (``spatial_dims=2`` and
            ``in_channels=1`` are implied).
        share_encoder: one encoder for all views (``True``) or one per view (``False``, as MRNet,
            where each plane has its own network). Separate encoders given as an instance are deep
            copies, re-initialised.
        head_dropout: dropout before each head.

    Raises:
        ValueError: for no or duplicate views, a segmentation task, or a non-2D / multi-channel encoder.

    Example::

        net = MultiPlaneNet(
            views=["sagittal", "coronal", "axial"],
            tasks=[{"name": t, "kind": "binary"} for t in ("abnormal", "acl", "meniscus")],
            encoder="resnet18",
        )
        out = net({"sagittal": torch.zeros(1, 24, 64, 64), "coronal": torch.zeros(1, 30, 64, 64),
                   "axial": torch.zeros(1, 1, 28, 64, 64)})  # {"abnormal": (1, 1), "acl": (1, 1), "meniscus": (1, 1)}
    """

    def __init__(
        self,
        views: Sequence[str],
        tasks: Iterable[Task | Mapping[str, Any]],
        encoder: Backbone | str = "resnet18",
        encoder_kwargs: Mapping[str, Any] | None = None,
        share_encoder: bool = False,
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if isinstance(views, str):
            raise ValueError(f"{owner}: 'views' must be a list of view names, got the string {views!r}")
        views = [str(v) for v in views]
        if not views or len(set(views)) != len(views):
            raise ValueError(f"{owner}: 'views' must be non-empty and unique, got {views}")
        tasks = self._set_tasks(tasks)
        dense = [t.name for t in tasks if t.is_dense]
        if dense:
            raise ValueError(f"{owner} predicts image-level tasks only; {dense} are segmentation tasks")
        if isinstance(encoder, str):
            encoder_kwargs = merge_preset({"spatial_dims": 2, "in_channels": 1}, dict(encoder_kwargs or {}), encoder)
        first = resolve_backbone(encoder, encoder_kwargs, owner)
        if first.spatial_dims != 2 or first.in_channels != 1:
            raise ValueError(
                f"{owner}: the slice encoder must be 2D with 1 input channel, got spatial_dims={first.spatial_dims}, "
                f"in_channels={first.in_channels}"
            )
        encoders = [first]
        if not share_encoder:
            for _ in range(len(views) - 1):
                if isinstance(encoder, str):
                    encoders.append(resolve_backbone(encoder, encoder_kwargs, owner))
                else:
                    encoders.append(reinitialised_copy(first))
        self.encoders = nn.ModuleList(encoders)
        self.views = views
        self.view_encoder = [0 if share_encoder else i for i in range(len(views))]
        self.share_encoder = bool(share_encoder)
        self.feature_channels = int(first.bottleneck_channels)
        fused = self.feature_channels * len(views)
        self.heads = nn.ModuleDict(
            {t.name: ClassificationHead(fused, t.num_outputs, pooling="none", dropout=head_dropout) for t in tasks}
        )

    def backbones(self) -> dict[str, Backbone]:
        """``{"encoders.<i>": encoder}``: one per view, or one shared by all views."""
        return {f"encoders.{i}": encoder for i, encoder in enumerate(self.encoders)}

    def _shared_parameter_list(self) -> list[nn.Parameter]:
        return list(self.encoders.parameters())

    def _slices(self, view: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
        if view not in x:
            raise KeyError(f"MultiPlaneNet: input has no view '{view}'; expected views {self.views}")
        t = x[view]
        if t.dim() == 5 and t.shape[1] == 1:
            t = t.squeeze(1)
        if t.dim() != 4:
            raise ValueError(
                f"MultiPlaneNet: view '{view}' must be (B, S, H, W) or (B, 1, S, H, W), got shape {list(t.shape)}"
            )
        return t

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Predict every task from a dict of slice stacks.

        Args:
            x: ``{view: (B, S_view, H, W) or (B, 1, S_view, H, W)}``; the slice count may differ per view.

        Returns:
            ``{task_name: (B, num_outputs)}``.
        """
        pooled: dict[str, torch.Tensor] = {}
        for e, encoder in enumerate(self.encoders):
            for v, view in enumerate(self.views):
                if self.view_encoder[v] == e:
                    stack = self._slices(view, x)
                    b, s = stack.shape[0], stack.shape[1]
                    fmap = encoder.encode_features(stack.reshape(b * s, 1, stack.shape[2], stack.shape[3]))[-1]
                    per_slice = fmap.flatten(2).mean(dim=-1).reshape(b, s, -1)
                    pooled[view] = per_slice.amax(dim=1)
        fused = torch.cat([pooled[view] for view in self.views], dim=1)
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            out[name] = head(fused)
        return out
