"""Engines: prepare_batch, per-task loss logging, gradient surgery iteration, atomic checkpoints and resume."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.utils import set_determinism

from medmtl.data import Task
from medmtl.engines import (
    FlattenTaskOutputsd,
    GradientSurgeryIteration,
    MultiTaskLossHandler,
    MultiTaskPrepareBatch,
    ResumableCheckpoint,
    atomic_torch_save,
)
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskNet
from medmtl.transforms import BatchAugment

TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="malignant", kind="binary"),
    Task(name="grade", kind="multiclass", classes=["low", "mid", "high"]),
]


def _samples(n: int = 8, size: int = 32, seed: int = 0) -> list[dict]:
    """Bright squares = lesion; malignant = large square; grade = square size class; some labels absent."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        side = 3 + (i % 3) * 3
        mask = torch.zeros(1, size, size, dtype=torch.long)
        mask[:, 2 : 2 + side, 2 : 2 + side] = 1
        image = mask.float() + 0.2 * torch.randn(1, size, size, generator=g)
        samples.append(
            {
                "image": image,
                "lesion": mask,
                "lesion_present": torch.tensor(i % 4 != 3),
                "malignant": torch.tensor([float(side > 5)]),
                "malignant_present": torch.tensor(i % 2 == 0),
                "grade": torch.tensor(i % 3),
                "grade_present": torch.tensor(True),
            }
        )
    return samples


def _net() -> MultiTaskNet:
    torch.manual_seed(0)
    return MultiTaskNet("unet", TASKS, backbone_kwargs={"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)})


def _trainer(net, loss, epochs: int, iteration_update=None, augment=None) -> SupervisedTrainer:
    loader = DataLoader(Dataset(_samples()), batch_size=4, shuffle=True, num_workers=0)
    optimizer = torch.optim.Adam(loss.param_groups(net.parameters()), lr=1e-2)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=optimizer,
        loss_function=loss,
        prepare_batch=MultiTaskPrepareBatch(TASKS, augment=augment),
        iteration_update=iteration_update,
    )
    MultiTaskLossHandler(loss, net).attach(trainer)
    return trainer


def test_prepare_batch_shapes_and_missing_keys() -> None:
    batch = next(iter(DataLoader(Dataset(_samples(4)), batch_size=4)))
    inputs, targets = MultiTaskPrepareBatch(TASKS)(batch, torch.device("cpu"))
    assert inputs.shape == (4, 1, 32, 32)
    assert targets["lesion"].shape == (4, 1, 32, 32)
    assert targets["malignant"].shape == (4, 1) and targets["malignant"].dtype == torch.float32
    assert targets["grade"].shape == (4,) and targets["grade"].dtype == torch.long
    assert targets["lesion_present"].tolist() == [True, True, True, False]
    del batch["grade_present"]
    with pytest.raises(KeyError, match="grade_present.*EnsureTaskLabelsd"):
        MultiTaskPrepareBatch(TASKS)(batch, torch.device("cpu"))


def test_trainer_logs_task_losses_and_weights_and_learns() -> None:
    set_determinism(0)
    net = _net()
    loss = MultiTaskLoss(TASKS, weighting="dwa")
    trainer = _trainer(net, loss, epochs=6)
    history = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: history.append(dict(e.state.metrics)))
    trainer.run()
    for task in TASKS:
        assert f"train_loss/{task.name}" in history[0]
        assert history[-1][f"train_loss/{task.name}"] < history[0][f"train_loss/{task.name}"]
    weights = [sum(h[f"train_weight/{t.name}"] for t in TASKS) for h in history]
    assert weights[-1] == pytest.approx(len(TASKS), rel=1e-4)  # DWA weights sum to the number of tasks
    assert [h["train_weight/lesion"] for h in history[2:]] != [1.0] * (len(history) - 2)


def test_gradient_surgery_iteration_trains_with_pcgrad() -> None:
    set_determinism(0)
    net = _net()
    loss = MultiTaskLoss(TASKS, weighting="pcgrad")
    before = [p.detach().clone() for p in net.shared_parameters()]
    trainer = _trainer(net, loss, epochs=3, iteration_update=GradientSurgeryIteration())
    trainer.run()
    assert torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert any(not torch.equal(b, p) for b, p in zip(before, net.shared_parameters(), strict=True))
    assert "train_loss/grade" in trainer.state.metrics


@pytest.mark.parametrize("batch_augment", [False, True])
def test_resume_reproduces_uninterrupted_run(tmp_path, batch_augment: bool) -> None:
    def run(epochs: int, save_dir, state: dict | None = None):
        set_determinism(0) if state is None else None
        net = _net()
        loss = MultiTaskLoss(TASKS, weighting="uncertainty")
        augment = BatchAugment(2, seed=0) if batch_augment else None
        trainer = _trainer(net, loss, epochs=epochs, augment=augment)
        state_objects = {"network": net, "optimizer": trainer.optimizer, "loss": loss, "batch_augment": augment}
        ResumableCheckpoint(save_dir, state_objects).attach(trainer)  # every stateful object named
        trainer.run()
        return net, loss, trainer

    full_net, full_loss, _ = run(4, tmp_path / "full")
    run(2, tmp_path / "killed")  # "killed" after 2 epochs: last.pt is from epoch 2
    checkpoint = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)  # what MONAI CheckpointLoader does
    assert checkpoint["trainer"]["iteration"] == 4  # 2 epochs x 2 batches
    if batch_augment:
        assert checkpoint["batch_augment"] == {"seed": 0, "calls": 4}
    resumed_net, resumed_loss, trainer = run(4, tmp_path / "killed", state={})
    assert trainer.state.epoch == 4
    for a, b in zip(full_net.state_dict().values(), resumed_net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(full_loss.state_dict(), resumed_loss.state_dict())


def test_resume_with_more_epochs_stretches_the_cosine_schedule(tmp_path, caplog) -> None:
    """A finished 2-epoch run extended to 4 epochs follows the schedule of a run started with 4."""
    from monai.handlers import LrScheduleHandler

    def run(epochs: int, save_dir) -> list[float]:
        set_determinism(0)
        net = _net()
        loss = MultiTaskLoss(TASKS, weighting="fixed")
        trainer = _trainer(net, loss, epochs=epochs)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(trainer.optimizer, T_max=epochs)
        LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
        save = {"network": net, "optimizer": trainer.optimizer, "lr_scheduler": scheduler}
        ResumableCheckpoint(save_dir, save).attach(trainer)
        lrs: list[float] = []
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: lrs.append(trainer.optimizer.param_groups[0]["lr"]))
        trainer.run()
        return lrs

    straight = run(4, tmp_path / "straight")
    assert straight == pytest.approx([1e-2, 1e-2 * (1 + 2**-0.5) / 2, 5e-3, 1e-2 * (1 - 2**-0.5) / 2])
    first = run(2, tmp_path / "extended")
    assert first == pytest.approx(straight[:1] + [5e-3])  # the 2-epoch schedule
    with caplog.at_level("WARNING"):
        extended = run(4, tmp_path / "extended")
    assert extended == pytest.approx(straight[2:])  # epochs 3-4 as in the 4-epoch run, not from LR 0
    assert "CosineAnnealingLR was for 2 epochs, this run has 4" in caplog.text


def test_atomic_save_keeps_old_file_when_interrupted(tmp_path, monkeypatch) -> None:
    path = atomic_torch_save({"epoch": 1}, tmp_path / "last.pt")

    def boom(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill during the write

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_evaluator_flattens_outputs_per_task() -> None:
    net = _net().eval()
    loader = DataLoader(Dataset(_samples(4)), batch_size=2)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=net,
        prepare_batch=MultiTaskPrepareBatch(TASKS),
    )
    FlattenTaskOutputsd(TASKS).attach(evaluator)
    seen = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.extend(e.state.output))
    evaluator.run()
    assert len(seen) == 4
    sample = seen[0]
    assert sample["pred_lesion"].shape == (2, 32, 32)
    assert sample["prob_lesion"].sum(0).allclose(torch.ones(32, 32))
    assert sample["pred_malignant"].shape == (1,) and 0 <= float(sample["prob_malignant"]) <= 1
    assert sample["label_grade"].ndim == 0
    assert [s["lesion_present"] for s in seen] == [True, True, True, False]
