"""Saliency bridge (MultiMix): the classifier's input-gradient saliency guides the segmentation decoder.

Why: in MultiMix (Haque et al. 2021) the classification branch tells the segmentation branch where
to look: the gradient of the predicted class score with respect to the input is concatenated with
the input, down-sampled and fed to the first decoder stage. The same maps explain the
classification. The gradient is taken with ``torch.autograd.grad(create_graph=False)`` on the input
only, so no parameter ``.grad`` is touched (optimizer state and gradient accumulation stay
untouched) and the map is a constant for the training loss. Gradients are enabled locally, so the
bridge also works in ``eval()`` mode and under ``torch.no_grad()`` (not under ``torch.inference_mode()``,
which forbids any gradient).

Reference:
    Haque et al., "Generalized multi-task learning from substantially unlabeled multi-source medical
    image data", MELBA 2021, https://arxiv.org/abs/2110.13185.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv

from medmtl.data.tasks import Task
from medmtl.networks._utils import crop_to, pad_to_multiple
from medmtl.networks.backbones import Backbone
from medmtl.networks.multitask import MultiTaskNet

__all__ = ["SaliencyBridgeNet"]


class SaliencyBridgeNet(MultiTaskNet):
    """A :class:`~medmtl.networks.MultiTaskNet` whose decoder also sees the classifier's saliency map.

    Forward pass: encoder -> classification heads on the bottleneck -> saliency of the predicted
    class of ``saliency_task`` (absolute input gradient of its highest logit, max over input
    channels, scaled to [0, 1] per sample) -> ``[input, saliency]`` down-sampled (area interpolation)
    to the bottleneck size -> a 1x1 convolution ("bridge") over ``[bottleneck, input, saliency]``
    replaces the bottleneck fed to the decoder -> segmentation heads. The bridge starts as the
    identity on the bottleneck and zero on the saliency channels, so training starts from the plain
    network. With a MeshNet backbone (no down-sampling) the bridge acts on the last hidden map.

    Args:
        backbone: a backbone with a decoder (``dense_channels > 0``) or its registry name.
        tasks: at least one segmentation and one image-level task.
        saliency_task: the image-level task whose prediction is explained (may be omitted when
            there is exactly one).
        return_saliency: also return the saliency map ``(B, 1, *spatial)`` under ``saliency_key``.
        saliency_key: output key of the saliency map; must not be a task name.
        backbone_kwargs: backbone arguments when ``backbone`` is a name.
        pooling: global pooling of classification heads.
        head_dropout: dropout of classification heads.

    Raises:
        ValueError: without a segmentation or an image-level task, for an unknown or ambiguous
            ``saliency_task``, or a ``saliency_key`` that is a task name.

    Example::

        net = SaliencyBridgeNet(
            backbone="unet",
            backbone_kwargs={"spatial_dims": 2, "features": (8, 8, 16, 32, 64, 8)},
            tasks=[{"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
                   {"name": "malignant", "kind": "binary"}],
            return_saliency=True,
        )
        out = net(torch.zeros(2, 1, 64, 64))  # keys: lesion, malignant, saliency
        maps = net.saliency(torch.zeros(2, 1, 64, 64))  # (2, 1, 64, 64)
    """

    def __init__(
        self,
        backbone: Backbone | str,
        tasks: Iterable[Task | Mapping[str, Any]],
        saliency_task: str | None = None,
        return_saliency: bool = False,
        saliency_key: str = "saliency",
        backbone_kwargs: Mapping[str, Any] | None = None,
        pooling: str = "avgmax",
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__(backbone, tasks, backbone_kwargs, pooling=pooling, head_dropout=head_dropout)
        image_level = [t.name for t in self.tasks if not t.is_dense]
        if not self.has_dense or not image_level:
            raise ValueError(
                "SaliencyBridgeNet needs at least one segmentation task (the decoder the saliency feeds) and one "
                f"image-level task (the prediction it explains), got tasks {self.task_names}"
            )
        if saliency_task is None:
            if len(image_level) != 1:
                raise ValueError(
                    f"SaliencyBridgeNet: several image-level tasks {image_level}; choose one with saliency_task=..."
                )
            saliency_task = image_level[0]
        elif saliency_task not in image_level:
            raise ValueError(
                f"SaliencyBridgeNet: saliency_task='{saliency_task}' is not an image-level task; choose one of "
                f"{image_level}"
            )
        if return_saliency and saliency_key in self.task_names:
            raise ValueError(f"SaliencyBridgeNet: saliency_key '{saliency_key}' is also a task name; pick another key")
        b = self.backbone
        self.saliency_task = saliency_task
        self.return_saliency = bool(return_saliency)
        self.saliency_key = saliency_key
        self.bridge = Conv["conv", b.spatial_dims](
            b.bottleneck_channels + b.in_channels + 1, b.bottleneck_channels, kernel_size=1
        )
        with torch.no_grad():  # identity on the bottleneck, zero on [input, saliency]
            self.bridge.weight.zero_()
            self.bridge.bias.zero_()
            for c in range(b.bottleneck_channels):
                self.bridge.weight[(c, c) + (0,) * b.spatial_dims] = 1.0

    @torch.jit.unused
    def _refuse_inference_mode(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "SaliencyBridgeNet needs input gradients: call it under torch.no_grad() or in eval() mode, "
                "not under torch.inference_mode()"
            )

    def _encode_with_saliency(
        self, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Encoder + image-level heads + saliency on a padded input, with gradients enabled locally."""
        if not torch.jit.is_scripting():
            self._refuse_inference_mode()
        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        source = x if x.requires_grad else x.detach().requires_grad_(True)
        feats = self.backbone.encode_features(source)
        bottleneck = feats[-1]
        image_out: dict[str, torch.Tensor] = {}
        score = bottleneck.sum() * 0.0
        for name, head in self.heads.items():
            if not head.is_dense:
                logits = head(bottleneck)
                image_out[name] = logits
                if name == self.saliency_task:
                    score = logits.amax(dim=1).sum()  # logit of the predicted class (the logit itself if binary)
        grads = torch.autograd.grad([score], [source], retain_graph=grad_enabled, create_graph=False, allow_unused=True)
        torch.set_grad_enabled(grad_enabled)
        grad = grads[0]
        if grad is None:
            saliency = torch.zeros_like(x[:, :1])
        else:
            saliency = grad.detach().abs().amax(dim=1, keepdim=True)
            shape = [saliency.shape[0]] + [1] * (saliency.dim() - 1)
            saliency = saliency / (saliency.flatten(1).amax(dim=1).view(shape) + 1e-12)
        if not grad_enabled:
            feats = [f.detach() for f in feats]
            image_out = {k: v.detach() for k, v in image_out.items()}
        return feats, image_out, saliency

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict every task (and the saliency map if ``return_saliency``).

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``{task_name: logits}`` as :class:`~medmtl.networks.MultiTaskNet`, plus
            ``{saliency_key: (B, 1, *spatial)}`` when ``return_saliency`` is set.
        """
        self._check_input(x)
        padded, sizes = pad_to_multiple(x, self.backbone.size_divisor)
        feats, image_out, saliency = self._encode_with_saliency(padded)
        n = len(feats)
        bottleneck = feats[n - 1]
        guide = F.interpolate(torch.cat([padded.detach(), saliency], dim=1), size=bottleneck.shape[2:], mode="area")
        feats[n - 1] = self.bridge(torch.cat([bottleneck, guide], dim=1))
        dense = self.backbone.decode_features(feats)
        if self.dense_stride == 1:  # full-resolution features: crop before the (1x1) heads
            dense = crop_to(dense, sizes)
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            if head.is_dense:
                out[name] = crop_to(head(dense), sizes)
            else:
                out[name] = image_out[name]
        if self.return_saliency:
            out[self.saliency_key] = crop_to(saliency, sizes)
        return out

    @torch.jit.export
    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """Saliency map of ``saliency_task``'s predicted class, for explanation.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, 1, *spatial)`` in [0, 1] (per-sample maximum 1), detached.
        """
        self._check_input(x)
        padded, sizes = pad_to_multiple(x, self.backbone.size_divisor)
        _, _, saliency = self._encode_with_saliency(padded)
        return crop_to(saliency, sizes)
