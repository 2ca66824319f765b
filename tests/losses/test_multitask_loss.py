"""MultiTaskLoss: masking across tasks, call styles, trainer hooks, bundle config, MONAI trainer wiring."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn

from medmtl.data import Task
from medmtl.losses import (
    DWAWeighting,
    FixedWeighting,
    MultiTaskLoss,
    project_conflicting,
)

TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="malignant", kind="binary"),
    Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"]),
    Task(name="findings", kind="multilabel", classes=["a", "b"]),
]
NAMES = [t.name for t in TASKS]


class _Net(nn.Module):
    """Tiny 2D multi-task net: shared conv trunk, a seg head and pooled classification heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Conv2d(1, 4, 3, padding=1)
        self.seg = nn.Conv2d(4, 2, 1)
        self.cls = nn.ModuleDict(
            {"malignant": nn.Linear(4, 1), "diagnosis": nn.Linear(4, 3), "findings": nn.Linear(4, 2)}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.trunk(x))
        pooled = h.mean(dim=(2, 3))
        return {"lesion": self.seg(h), **{k: head(pooled) for k, head in self.cls.items()}}


def _batch(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 1, 6, 6, generator=g)
    targets = {
        "lesion": torch.randint(0, 2, (b, 1, 6, 6), generator=g),
        "malignant": torch.randint(0, 2, (b, 1), generator=g).float(),
        "diagnosis": torch.randint(0, 3, (b,), generator=g),
        "findings": torch.randint(0, 2, (b, 2), generator=g).float(),
    }
    for n in NAMES:
        targets[f"{n}_present"] = torch.ones(b, dtype=torch.bool)
    return image, targets


def test_single_dict_and_three_argument_styles_agree():
    net, loss = _Net(), MultiTaskLoss(TASKS)
    image, targets = _batch()
    targets["diagnosis_present"] = torch.tensor([True, False, True, True])
    preds = net(image)
    single = loss(preds, targets)
    present = {n: targets[f"{n}_present"] for n in NAMES}
    plain = {n: targets[n] for n in NAMES}
    triple = loss(preds, plain, present)
    assert single.item() == pytest.approx(triple.item())
    assert set(loss.last_components) == set(NAMES)
    assert sum(v.item() for v in loss.last_components.values()) == pytest.approx(single.item(), rel=1e-6)
    assert loss.last_num_labelled == {"lesion": 4, "malignant": 4, "diagnosis": 3, "findings": 4}
    assert loss.last_weights == {n: 1.0 for n in NAMES}
    # explicit present wins over the flags in targets
    assert loss(preds, targets, {"diagnosis": torch.ones(4)}).item() != pytest.approx(single.item())


def test_unlabelled_sample_does_not_change_the_loss():
    net, loss = _Net(), MultiTaskLoss(TASKS)
    image, targets = _batch(4)
    preds = net(image)
    targets["malignant_present"] = torch.tensor([True, True, True, False])
    values = []
    for placeholder in (float("nan"), 0.0, 1.0):
        targets["malignant"][3] = placeholder
        values.append(loss(preds, targets).item())
    assert values[0] == values[1] == values[2]
    subset = MultiTaskLoss(TASKS)({k: v[:3] for k, v in preds.items()}, {k: v[:3] for k, v in targets.items()})
    assert subset.item() != pytest.approx(values[0])  # other tasks do use the 4th sample
    expected = nn.functional.binary_cross_entropy_with_logits(preds["malignant"][:3], targets["malignant"][:3])
    assert loss.last_components["malignant"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_label_smoothing_reaches_multiclass_tasks_only():
    net = _Net()
    image, targets = _batch()
    targets["diagnosis_present"] = torch.tensor([True, False, True, True])
    preds = net(image)
    weights = [0.5, 1.0, 2.0]
    plain = MultiTaskLoss(TASKS, class_weights={"diagnosis": weights})
    smooth = MultiTaskLoss(TASKS, class_weights={"diagnosis": weights}, label_smoothing=0.1)
    plain(preds, targets)
    smooth(preds, targets)
    keep = targets["diagnosis_present"]
    expected = nn.functional.cross_entropy(
        preds["diagnosis"][keep], targets["diagnosis"][keep], weight=torch.tensor(weights), label_smoothing=0.1
    )
    assert smooth.last_components["diagnosis"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert smooth.last_components["diagnosis"].item() != pytest.approx(plain.last_components["diagnosis"].item())
    for name in ("lesion", "malignant", "findings"):  # other kinds have no label smoothing
        assert smooth.last_components[name].item() == pytest.approx(plain.last_components[name].item())


def test_task_missing_from_whole_batch_gives_zero_and_finite_gradients():
    net, loss = _Net(), MultiTaskLoss(TASKS)
    image, targets = _batch()
    targets["diagnosis_present"] = torch.zeros(4, dtype=torch.bool)
    targets["diagnosis"].fill_(-1)
    total = loss(net(image), targets)
    assert "diagnosis" not in loss.last_components and loss.last_num_labelled["diagnosis"] == 0
    assert total.item() == pytest.approx(sum(v.item() for v in loss.last_components.values()), rel=1e-6)
    total.backward()
    head = net.cls["diagnosis"]
    assert head.weight.grad is not None and torch.equal(head.weight.grad, torch.zeros_like(head.weight))
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_batch_without_any_label_is_exactly_zero():
    net = _Net()
    image, targets = _batch()
    for n in NAMES:
        targets[f"{n}_present"] = torch.zeros(4)
    for weighting in ("fixed", "uncertainty", "dwa"):
        net.zero_grad()
        loss = MultiTaskLoss(TASKS, weighting=weighting)
        total = loss(net(image), targets)
        assert total.item() == 0.0 and total.requires_grad
        total.backward()
        assert loss.last_components == {}
        for p in net.parameters():
            assert torch.equal(p.grad, torch.zeros_like(p))


def test_weights_and_buffers_follow_the_tasks():
    loss = MultiTaskLoss(
        TASKS,
        weighting=FixedWeighting(NAMES, weights={"lesion": 2.0}),
        pos_weight={"malignant": [3.0], "findings": [1.0, 4.0]},
        class_weights={"diagnosis": [1.0, 2.0, 3.0]},
    )
    state = loss.state_dict()
    assert torch.equal(state["task_losses.malignant.loss.pos_weight"], torch.tensor([3.0]))
    assert torch.equal(state["task_losses.findings.loss.pos_weight"], torch.tensor([1.0, 4.0]))
    assert torch.equal(state["task_losses.diagnosis.loss.weight"], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(state["weighting.weights"], torch.tensor([2.0, 1.0, 1.0, 1.0]))
    assert loss.to(torch.float64).task_losses["findings"].loss.pos_weight.dtype == torch.float64
    net = _Net()
    image, targets = _batch()
    loss = loss.float()
    loss(net(image), targets)
    expected = 2 * loss.last_components["lesion"] + sum(loss.last_components[n] for n in NAMES[1:])
    assert loss(net(image), targets).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.last_weights["lesion"] == 2.0


def test_construction_and_call_errors_are_clear():
    with pytest.raises(ValueError, match=r"pos_weight names unknown tasks \['typo'\]"):
        MultiTaskLoss(TASKS, pos_weight={"typo": 1.0})
    with pytest.raises(ValueError, match="built for tasks"):
        MultiTaskLoss(TASKS, weighting=FixedWeighting(["lesion"]))
    with pytest.raises(ValueError, match="weighting_kwargs only applies"):
        MultiTaskLoss(TASKS, weighting=FixedWeighting(NAMES), weighting_kwargs={"weights": 1.0})
    with pytest.raises(ValueError, match="task names must be unique"):
        MultiTaskLoss([TASKS[0], TASKS[0]])
    from_dicts = MultiTaskLoss([{"name": "grade", "kind": "multiclass", "classes": ["low", "high"]}])
    assert from_dicts.tasks == (Task(name="grade", kind="multiclass", classes=("low", "high")),)
    with pytest.raises(ValueError, match="clashes with a torch.nn.Module attribute"):
        MultiTaskLoss([Task(name="train", kind="binary")])
    loss = MultiTaskLoss(TASKS)
    image, targets = _batch()
    preds = _Net()(image)
    with pytest.raises(KeyError, match="no output for task 'lesion'"):
        loss({k: v for k, v in preds.items() if k != "lesion"}, targets)
    with pytest.raises(KeyError, match="no target for task 'findings'"):
        loss(preds, {k: v for k, v in targets.items() if k != "findings"})
    preds["diagnosis"] = preds["diagnosis"][:, :2]
    with pytest.raises(ValueError, match=r"task 'diagnosis'.*\(4, 2\), expected \(B, 3\)"):
        loss(preds, targets)


def test_param_groups_exclude_loss_parameters_from_weight_decay():
    net = _Net()
    loss = MultiTaskLoss(TASKS, weighting="uncertainty", weighting_kwargs={"init_log_var": 0.5})
    groups = loss.param_groups(net.parameters(), weight_decay=0.01)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert groups[1]["params"] == [loss.weighting.log_vars]
    assert list(loss.parameters()) == [loss.weighting.log_vars]
    opt = torch.optim.AdamW(groups, lr=0.1)
    image, targets = _batch()
    before = loss.weighting.log_vars.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        loss.backward(loss(net(image), targets))
        loss.sync_gradients()
        opt.step()
    assert not torch.equal(before, loss.weighting.log_vars.detach())
    assert MultiTaskLoss(TASKS).param_groups() == []


def test_backward_with_pcgrad_projects_shared_and_keeps_absent_heads_in_graph():
    net = _Net()
    loss = MultiTaskLoss(TASKS, weighting="pcgrad")
    assert loss.manipulates_gradients
    image, targets = _batch()
    targets["findings_present"] = torch.zeros(4)
    total = loss(net(image), targets)
    shared = list(net.trunk.parameters())
    grads = [torch.autograd.grad(loss.last_losses[n], shared, retain_graph=True) for n in NAMES if n != "findings"]
    flat = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in grads])
    gen = torch.Generator().manual_seed(0)
    expected = project_conflicting(flat, gen).sum(0)
    with pytest.raises(ValueError, match="shared parameters"):
        loss.backward(total)
    loss.backward(total, shared)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(net.cls["findings"].weight.grad, torch.zeros(2, 4))


def test_backward_with_gradnorm_updates_weights_then_backpropagates():
    net = _Net()
    loss = MultiTaskLoss(TASKS, weighting="gradnorm")
    image, targets = _batch()
    total = loss(net(image), targets)
    loss.backward(total, net.trunk.parameters())
    assert loss.last_weights == {n: 1.0 for n in NAMES}  # weights used for this batch
    assert loss.weighting.current_weights() != loss.last_weights  # updated for the next one
    assert sum(loss.weighting.current_weights().values()) == pytest.approx(len(NAMES))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_built_from_plain_dict_config_with_target():
    config = {
        "tasks": [
            {"_target_": "medmtl.data.Task", "name": "lesion", "kind": "segmentation", "classes": ["bg", "lesion"]},
            {"_target_": "medmtl.data.Task", "name": "malignant", "kind": "binary", "pos_weight": "auto"},
        ],
        "pos_weights": {"malignant": [2.5]},
        "weighting": {
            "_target_": "medmtl.losses.DWAWeighting",
            "task_names": "$[t.name for t in @tasks]",
            "temperature": 1.5,
        },
        "loss": {
            "_target_": "medmtl.losses.MultiTaskLoss",
            "tasks": "@tasks",
            "weighting": "@weighting",
            "seg_loss": "dicefocal",
            "pos_weight": "@pos_weights",
        },
        "loss_by_name": {
            "_target_": "medmtl.losses.MultiTaskLoss",
            "tasks": "@tasks",
            "weighting": "scheduled",
            "pos_weight": "@pos_weights",
            "weighting_kwargs": {
                "schedules": {"lesion": {"name": "poly", "start": 0.5, "end": 1.0, "epochs": 4, "power": 4}}
            },
        },
        "uncertainty": {
            "_target_": "medmtl.losses.MultiTaskLoss",
            "tasks": "@tasks",
            "weighting": "uncertainty",
            "pos_weight": "@pos_weights",
        },
        "network": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2},
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "params": "$@uncertainty.param_groups(@network.parameters(), 1e-4)",
            "lr": 1e-3,
        },
    }
    parser = ConfigParser(config)
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss.weighting, DWAWeighting) and loss.weighting.temperature == 1.5
    assert torch.equal(loss.task_losses["malignant"].loss.pos_weight, torch.tensor([2.5]))
    scheduled = parser.get_parsed_content("loss_by_name")
    assert scheduled.last_weights == {} and scheduled.weighting.current_weights()["lesion"] == pytest.approx(0.5)
    optimizer = parser.get_parsed_content("optimizer")
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]


def _prepare_batch(batchdata, device=None, non_blocking=False, **kwargs):
    """What medmtl's MultiTaskPrepareBatch does: (image, {task: target, <task>_present: flags})."""
    return batchdata["image"], {k: v for k, v in batchdata.items() if k != "image"}


def _loader(n_batches: int = 2) -> list[dict[str, torch.Tensor]]:
    batches = []
    for i in range(n_batches):
        image, targets = _batch(seed=i)
        targets["findings_present"] = torch.tensor([True, False, False, True])
        batches.append({"image": image, **targets})
    return batches


@pytest.mark.parametrize("weighting", ["dwa", "gradnorm", "uncertainty"])
def test_monai_supervised_trainer_runs_unchanged(weighting):
    net = _Net()
    loss = MultiTaskLoss(TASKS, weighting=weighting)
    optimizer = torch.optim.SGD(loss.param_groups(net.parameters()), lr=0.05)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=3,
        train_data_loader=_loader(),
        network=net,
        optimizer=optimizer,
        loss_function=loss,
        prepare_batch=_prepare_batch,
    )
    seen = []
    if loss.needs_shared_params:
        trainer.add_event_handler(
            IterationEvents.LOSS_COMPLETED, lambda e: loss.before_backward(net.trunk.parameters())
        )
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: seen.append(dict(loss.last_weights)))
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: loss.sync_gradients())
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: loss.on_epoch_end())
    trainer.run()
    assert torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert len(seen) == 6
    assert seen[-1] != seen[0]  # every strategy moved its weights during training
