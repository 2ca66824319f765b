"""optimizer_param_groups: fine-tuning's encoder group, and with cross-stitch units, as brain_mri_mtl builds it."""

from __future__ import annotations

import pytest
import torch

from medmtl.data import Task
from medmtl.engines import encoder_parameters, finetune_param_groups, optimizer_param_groups
from medmtl.losses import MultiTaskLoss
from medmtl.networks import CrossStitchNet, MultiTaskNet

UNET = {"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)}
TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="malignant", kind="binary"),
]


def _ids(group: dict) -> set[int]:
    return {id(p) for p in group["params"]}


def test_encoder_factor_gives_the_finetune_groups_then_the_loss() -> None:
    net, loss = MultiTaskNet("unet", TASKS, backbone_kwargs=UNET), MultiTaskLoss(TASKS, weighting="uncertainty")
    groups = optimizer_param_groups(net, loss, lr=1e-3, weight_decay=1e-4, encoder_lr_factor=0.1)
    expected = finetune_param_groups(net, lr=1e-3, encoder_lr_factor=0.1, weight_decay=1e-4) + loss.param_groups()
    assert [(_ids(g), g.get("name"), g["weight_decay"]) for g in groups] == [
        (_ids(g), g.get("name"), g["weight_decay"]) for g in expected
    ]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3, 1e-3])
    torch.optim.AdamW(groups)  # a valid partition: torch refuses a parameter in two groups
    with pytest.raises(ValueError, match="encoder_lr_factor"):
        optimizer_param_groups(net, loss, lr=1e-3, encoder_lr_factor=-1)


def test_encoder_factor_with_cross_stitch_keeps_the_units_group() -> None:
    net = CrossStitchNet("unet", TASKS, backbone_kwargs=UNET)
    groups = {g["name"]: g for g in optimizer_param_groups(net, None, lr=1e-3, weight_decay=1e-4, encoder_lr_factor=0)}
    assert set(groups) == {"networks_encoder", "networks", "cross_stitch"}
    assert _ids(groups["networks_encoder"]) == {id(p) for p in encoder_parameters(net)}
    assert groups["networks_encoder"]["lr"] == 0 and groups["networks"]["lr"] == 1e-3
    assert groups["cross_stitch"]["lr"] == pytest.approx(0.1) and groups["cross_stitch"]["weight_decay"] == 0.0
    assert set().union(*map(_ids, groups.values())) == {id(p) for p in net.parameters()}
