"""Networks: multi-task networks returning ``{task_name: logits}``, their backbones, heads and bridges.

Why: one package holds everything a bundle's ``network_def`` can name with ``_target_``. Hard
sharing (:class:`MultiTaskNet`, :class:`MultiTaskClassifier`, :class:`MultiPlaneNet`), soft sharing
(:class:`CrossStitchNet`) and the MultiMix saliency bridge (:class:`SaliencyBridgeNet`) all size their
heads from :class:`~medmtl.data.Task` objects and the channels their backbone reports. Backbones wrap
MONAI networks (or implement MeshNet, which MONAI lacks) behind the small :class:`Backbone`
interface, and are also reachable by name through :func:`build_backbone`. :class:`ExpertRouter`
sends each sample to one expert network per group chosen by a prediction.
:func:`load_backbone_weights` copies torchvision / timm / MONAI / MedicalNet weights into backbones.
"""

from __future__ import annotations

from medmtl.networks.backbone_holders import HoldsBackbones, holds_backbones, network_backbones
from medmtl.networks.backbones import (
    Backbone,
    BasicUNetBackbone,
    DenseNetBackbone,
    ResNetBackbone,
    ResUNetBackbone,
    SegResNetBackbone,
)
from medmtl.networks.cross_stitch import CrossStitchNet, CrossStitchUnit
from medmtl.networks.ensemble import FoldEnsemble, ensemble_state_dict
from medmtl.networks.factory import SHARING, build_multitask_network
from medmtl.networks.heads import ClassificationHead, SegmentationHead, UNetUpHead, build_head
from medmtl.networks.memory import MemoryBudgetError, estimate_activation_bytes
from medmtl.networks.meshnet import DILATION_SCHEDULES, MeshNet, MeshNetBackbone
from medmtl.networks.multiplane import MultiPlaneNet
from medmtl.networks.multitask import MultiTaskClassifier, MultiTaskModule, MultiTaskNet
from medmtl.networks.pretrained import (
    LAYOUT_BACKBONES,
    PretrainedWeightsError,
    PretrainedWeightsReport,
    adapt_input_channels,
    detect_layout,
    load_backbone_weights,
    state_dict_of,
)
from medmtl.networks.registry import build_backbone, list_backbones, register_backbone
from medmtl.networks.router import ExpertRouter, router_state_dict
from medmtl.networks.saliency import SaliencyBridgeNet
from medmtl.networks.wrappers import TaskOutput

__all__ = [
    "SHARING",
    "TaskOutput",
    "build_multitask_network",
    "Backbone",
    "HoldsBackbones",
    "holds_backbones",
    "network_backbones",
    "BasicUNetBackbone",
    "ResUNetBackbone",
    "SegResNetBackbone",
    "ResNetBackbone",
    "DenseNetBackbone",
    "MeshNetBackbone",
    "MeshNet",
    "DILATION_SCHEDULES",
    "SegmentationHead",
    "UNetUpHead",
    "ClassificationHead",
    "build_head",
    "MultiTaskModule",
    "MultiTaskNet",
    "MultiTaskClassifier",
    "SaliencyBridgeNet",
    "CrossStitchUnit",
    "CrossStitchNet",
    "MultiPlaneNet",
    "ExpertRouter",
    "router_state_dict",
    "FoldEnsemble",
    "ensemble_state_dict",
    "MemoryBudgetError",
    "estimate_activation_bytes",
    "register_backbone",
    "build_backbone",
    "list_backbones",
    "LAYOUT_BACKBONES",
    "PretrainedWeightsError",
    "PretrainedWeightsReport",
    "adapt_input_channels",
    "detect_layout",
    "load_backbone_weights",
    "state_dict_of",
]
