"""Fine-tuning helpers: loading pre-trained weights, freezing the encoder, LR groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmtl.data import Task
from medmtl.engines import (
    encoder_parameters,
    finetune_param_groups,
    freeze_encoder,
    load_pretrained,
)
from medmtl.losses import MultiTaskLoss
from medmtl.networks import CrossStitchNet, MultiTaskClassifier, MultiTaskNet

UNET = {"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)}
PRETRAIN_TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="malignant", kind="binary"),
]
FINETUNE_TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "benign", "malignant"]),
    Task(name="diagnosis", kind="multiclass", classes=["a", "b", "c"]),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(tasks, seed: int) -> MultiTaskNet:
    torch.manual_seed(seed)
    return MultiTaskNet("unet", tasks, backbone_kwargs=UNET)


def _batch(tasks, n: int = 2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, 1, 32, 32, generator=g)
    targets: dict[str, torch.Tensor] = {}
    for task in tasks:
        if task.is_dense:
            targets[task.name] = torch.randint(0, task.num_outputs, (n, 1, 32, 32), generator=g)
        elif task.kind.value == "multiclass":
            targets[task.name] = torch.randint(0, task.num_outputs, (n,), generator=g)
        else:
            targets[task.name] = torch.randint(0, 2, (n, task.num_outputs), generator=g).float()
    return image, targets


def _step(net: nn.Module, tasks, optimizer: torch.optim.Optimizer) -> None:
    image, targets = _batch(tasks)
    optimizer.zero_grad()
    MultiTaskLoss(tasks)(net(image), targets).backward()
    optimizer.step()


# -- load_pretrained --------------------------------------------------------------------------------
def test_load_pretrained_reports_heads_of_another_task_set(tmp_path) -> None:
    source = _net(PRETRAIN_TASKS, seed=1)
    path = tmp_path / "best.pt"
    torch.save({"network": source.state_dict(), "epoch": 3}, path)
    target = _net(FINETUNE_TASKS, seed=2)
    fresh_diagnosis = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("heads.diagnosis")}

    report = load_pretrained(target, path)

    assert not report.ok
    assert {k for k, *_ in report.mismatched} == {"heads.lesion.conv.weight", "heads.lesion.conv.bias"}
    assert all(k.startswith("heads.diagnosis.") for k in report.missing) and report.missing
    assert all(k.startswith("heads.malignant.") for k in report.unexpected) and report.unexpected
    text = str(report)
    assert "shape mismatch" in text and "heads.lesion.conv.weight [2, 4, 1, 1] in checkpoint vs [3, 4, 1, 1]" in text
    # before the first step: every shared weight is the checkpoint's, new heads keep their init
    own, src = target.state_dict(), source.state_dict()
    backbone = [k for k in own if k.startswith("backbone.")]
    assert backbone and set(backbone) <= set(report.loaded)
    for key in backbone:
        assert torch.equal(own[key], src[key]), key
    for key, value in fresh_diagnosis.items():
        assert torch.equal(own[key], value)
    optimizer = torch.optim.SGD(target.parameters(), lr=0.1)
    _step(target, FINETUNE_TASKS, optimizer)
    assert not torch.equal(
        target.state_dict()["backbone.conv_0.conv_0.conv.weight"], src["backbone.conv_0.conv_0.conv.weight"]
    )


def test_load_pretrained_strict_exclude_and_file_layouts(tmp_path) -> None:
    source = _net(PRETRAIN_TASKS, seed=1)
    with pytest.raises(RuntimeError, match="heads.malignant"):
        load_pretrained(
            _net(FINETUNE_TASKS, seed=2), _save(tmp_path / "a.pt", {"network": source.state_dict()}), strict=True
        )

    other_heads = load_pretrained(_net(FINETUNE_TASKS, seed=2), tmp_path / "a.pt", strict=True, exclude=["heads."])
    assert other_heads.ok and {k.split(".")[1] for k in other_heads.excluded} == {"lesion", "diagnosis", "malignant"}

    same_tasks = _net(PRETRAIN_TASKS, seed=2)
    head_before = same_tasks.heads["malignant"].fc.weight.detach().clone()
    report = load_pretrained(same_tasks, tmp_path / "a.pt", exclude=["heads."])
    assert report.ok and report.excluded and all(k.startswith("heads.") for k in report.excluded)
    assert not any(k.startswith("heads.") for k in report.loaded)
    assert torch.equal(same_tasks.heads["malignant"].fc.weight, head_before)

    ddp_style = {f"module.{k}": v for k, v in source.state_dict().items()}  # a bare state_dict saved from DDP
    report = load_pretrained(_net(PRETRAIN_TASKS, seed=3), _save(tmp_path / "model.pt", ddp_style), strict=True)
    assert report.ok and len(report.loaded) == len(source.state_dict())

    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_pretrained(same_tasks, tmp_path / "nothing.pt")
    with pytest.raises(KeyError, match="'model'"):
        load_pretrained(same_tasks, _save(tmp_path / "b.pt", {"network": source.state_dict(), "epoch": 1}), key="model")


def _save(path, obj):
    torch.save(obj, path)
    return path


# -- freezing and LR groups -------------------------------------------------------------------------
def test_freeze_encoder_freezes_exactly_the_encoder() -> None:
    net = _net(FINETUNE_TASKS, seed=0)
    frozen = freeze_encoder(net)
    frozen_ids = {id(p) for p in frozen}
    assert frozen_ids == {id(p) for p in net.shared_parameters()}  # encoder = backbone minus decoder
    decoder = {id(p) for m in net.backbone.decoder_modules() for p in m.parameters()}
    for name, p in net.named_parameters():
        assert p.requires_grad == (id(p) not in frozen_ids), name
        if id(p) in decoder or name.startswith("heads."):
            assert p.requires_grad, name

    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = torch.optim.AdamW(finetune_param_groups(net, lr=1e-2, weight_decay=0.1))
    _step(net, FINETUNE_TASKS, optimizer)
    for name, p in net.named_parameters():
        if id(p) in frozen_ids:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    params = dict(net.named_parameters())
    for name in ("heads.lesion.conv.weight", "heads.diagnosis.fc.weight", "backbone.upcat_1.convs.conv_0.conv.weight"):
        assert not torch.equal(params[name], before[name]), f"{name} did not train"

    freeze_encoder(net, freeze=False)
    assert all(p.requires_grad for p in net.parameters())


def test_encoder_of_other_networks() -> None:
    classifier = MultiTaskClassifier(
        [{"name": "abnormal", "kind": "binary"}],
        backbone="resnet10",
        backbone_kwargs={"block_inplanes": (4, 8, 8, 8)},
    )
    assert {id(p) for p in encoder_parameters(classifier)} == {id(p) for p in classifier.backbone.parameters()}

    stitched = CrossStitchNet("unet", PRETRAIN_TASKS, backbone_kwargs=UNET)
    encoder = {id(p) for p in encoder_parameters(stitched)}
    assert not encoder & {id(p) for p in stitched.cross_stitch_parameters()}
    assert not encoder & {id(p) for p in stitched.heads.parameters()}
    for column in stitched.columns:
        decoder = {id(p) for m in column.decoder_modules() for p in m.parameters()}
        assert {id(p) for p in column.parameters()} - decoder <= encoder
        assert not decoder & encoder

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.head = nn.Linear(2, 2), nn.Linear(2, 1)

        def encoder_parameters(self):
            return list(self.stem.parameters())

    assert len(freeze_encoder(Custom())) == 2
    with pytest.raises(TypeError, match="encoder_parameters"):
        encoder_parameters(nn.Linear(2, 2))


def test_finetune_param_groups() -> None:
    net = _net(PRETRAIN_TASKS, seed=0)
    groups = finetune_param_groups(net, lr=1e-3, encoder_lr_factor=0.1, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["encoder", "heads"]
    assert groups[0]["lr"] == pytest.approx(1e-4) and groups[1]["lr"] == 1e-3
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())  # a partition
    optimizer = torch.optim.AdamW(groups + MultiTaskLoss(PRETRAIN_TASKS, weighting="uncertainty").param_groups())
    assert len(optimizer.param_groups) == 3
    with pytest.raises(ValueError, match="encoder_lr_factor"):
        finetune_param_groups(net, lr=1e-3, encoder_lr_factor=-1)
