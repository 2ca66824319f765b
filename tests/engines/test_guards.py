"""Guards: a NaN loss stops training with the task named and the last good checkpoint kept; memory budget."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from bundle_cli import bundle_argv  # tests/bundles
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism

from medmtl.data import Task
from medmtl.data.demo import generate_demo2d
from medmtl.engines import (
    GuardExit,
    MultiTaskLossHandler,
    MultiTaskPrepareBatch,
    NonFiniteError,
    NonFiniteLossError,
    NonFiniteLossGuard,
    ResumableCheckpoint,
    TrainingMemoryGuard,
)
from medmtl.inference import MemoryBudgetError
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskNet

REPO = Path(__file__).resolve().parents[2]
TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="malignant", kind="binary"),
]


class PoisonedNet(torch.nn.Module):
    """A MultiTaskNet whose ``malignant`` logits turn NaN from the ``poison_at``-th training forward on."""

    def __init__(self, poison_at: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = MultiTaskNet("unet", TASKS, backbone_kwargs={"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)})
        self.poison_at = poison_at
        self.calls = 0

    def shared_parameters(self):
        return self.net.shared_parameters()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.poison_at:
                out["malignant"] = out["malignant"] * float("nan")
        return out


def _samples(n: int = 8, size: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        mask = torch.zeros(1, size, size, dtype=torch.long)
        mask[:, 4 : 8 + i, 4 : 8 + i] = 1
        samples.append(
            {
                "image": mask.float() + 0.2 * torch.randn(1, size, size, generator=g),
                "lesion": mask,
                "lesion_present": torch.tensor(True),
                "malignant": torch.tensor([float(i > 3)]),
                "malignant_present": torch.tensor(True),
            }
        )
    return samples


def _trainer(net: torch.nn.Module, epochs: int = 3, lr: float = 1e-2) -> SupervisedTrainer:
    set_determinism(0)
    loss = MultiTaskLoss(TASKS, weighting="fixed")
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(Dataset(_samples()), batch_size=4, shuffle=True, num_workers=0),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=lr),
        loss_function=loss,
        prepare_batch=MultiTaskPrepareBatch(TASKS),
    )
    MultiTaskLossHandler(loss, net).attach(trainer)
    return trainer


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_nan_loss_stops_before_the_step_names_the_task_and_keeps_last_checkpoint(tmp_path) -> None:
    net = PoisonedNet(poison_at=4)  # 2 iterations per epoch: NaN at epoch 2, iteration 2
    trainer = _trainer(net)
    ResumableCheckpoint(tmp_path, {"network": net, "optimizer": trainer.optimizer}).attach(trainer)
    NonFiniteLossGuard().attach(trainer)
    epoch_end: dict[int, dict] = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_end.update({e.state.epoch: _snapshot(net)}))
    before_bad_step: dict = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: before_bad_step.update(_snapshot(net)))
    completed = []
    trainer.add_event_handler(Events.COMPLETED, lambda e: completed.append(True))

    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    message = str(info.value)
    assert "epoch 2, iteration 2 (4 overall)" in message
    assert "task malignant nan" in message and "task lesion" not in message
    assert info.value.tasks == ["malignant"] and (info.value.epoch, info.value.iteration) == (2, 4)
    assert not completed  # no COMPLETED: no final checkpoint, no best.pt fallback with bad weights
    assert not (tmp_path / "best.pt").exists()
    # the bad step was never applied: the weights are those after iteration 3, all finite
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, before_bad_step[name]), name
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2  # written at the end of epoch 1, never after
    for name, tensor in last["network"].items():
        assert torch.equal(tensor, epoch_end[1][name]), name


def test_checkpoint_refuses_non_finite_weights_and_keeps_the_previous_last_pt(tmp_path) -> None:
    net = PoisonedNet(poison_at=10**9)
    trainer = _trainer(net)
    checkpoint = ResumableCheckpoint(tmp_path, {"network": net, "optimizer": trainer.optimizer})
    checkpoint.attach(trainer)

    def corrupt(engine) -> None:  # weights diverge in epoch 2 without a NaN loss (e.g. an Inf step)
        if engine.state.epoch == 2:
            with torch.no_grad():
                next(net.parameters()).fill_(float("inf"))

    trainer.add_event_handler(Events.EPOCH_COMPLETED, corrupt)  # runs before the (deferred) last.pt save
    with pytest.raises(NonFiniteError, match=r"epoch 2: 1 weight tensor\(s\) hold NaN or Inf .*network\.net\."):
        trainer.run()
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2  # epoch 1's file stayed
    assert all(torch.isfinite(t).all() for t in last["network"].values() if t.is_floating_point())


def test_memory_guard_stops_before_the_first_step_with_what_to_lower() -> None:
    net = PoisonedNet(poison_at=10**9)
    trainer = _trainer(net)
    TrainingMemoryGuard(max_bytes="64KiB").attach(trainer)
    before = _snapshot(net)
    with pytest.raises(MemoryBudgetError, match=r"batch 4 of 32x32 voxels.*Lower --batch_size or --spatial_size"):
        trainer.run()
    assert trainer.state.iteration == 1 and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_memory_guard_passes_within_budget_and_estimates_scale_with_batch() -> None:
    estimates = []
    for batch_size in (2, 4):
        net = PoisonedNet(poison_at=10**9)
        trainer = _trainer(net, epochs=1)
        trainer.data_loader = DataLoader(Dataset(_samples()), batch_size=batch_size)
        guard = TrainingMemoryGuard(max_bytes="1GiB")
        guard.attach(trainer)
        trainer.run()
        estimates.append(guard.estimate)
    weights = 4 * sum(p.numel() * 4 for p in PoisonedNet(1).parameters())
    assert estimates[0] > weights and estimates[1] - weights == pytest.approx(2 * (estimates[0] - weights), rel=1e-6)


def test_memory_guard_exits_for_bundles() -> None:
    trainer = _trainer(PoisonedNet(poison_at=10**9))
    TrainingMemoryGuard(max_bytes=1000, exit_on_error=True).attach(trainer)
    with pytest.raises(GuardExit) as info:
        trainer.run()
    assert isinstance(info.value.error, MemoryBudgetError) and str(info.value.code).startswith("MemoryBudgetError: ")


def test_cpu_without_budget_skips_the_check() -> None:
    net = PoisonedNet(poison_at=10**9)
    trainer = _trainer(net, epochs=1)
    guard = TrainingMemoryGuard()
    guard.attach(trainer)
    trainer.run()
    assert guard.estimate is None


def test_bundle_with_nan_guard_exits_non_zero_with_a_clear_message(tmp_path) -> None:
    """Through ``python -m monai.bundle run``: weights poisoned in epoch 2 -> exit 1, message, last.pt of epoch 1."""
    generate_demo2d(tmp_path / "data", num_cases=16, seed=0)
    extra = {
        "+imports": ["$import ignite"],
        "+train::handlers": [{"_target_": "medmtl.engines.NonFiniteLossGuard", "exit_on_error": True}],
        "+initialize": [
            "$@train::trainer.add_event_handler(ignite.engine.Events.ITERATION_STARTED, "
            "lambda e: [p.data.fill_(float('nan')) for p in @network.parameters()] if e.state.epoch == 2 else None)"
        ],
    }
    extra_file = tmp_path / "nan.json"
    extra_file.write_text(json.dumps(extra))
    cmd = bundle_argv("demo", ["train"], ["--data_spec", str(REPO / "data_specs" / "demo.yaml")], [extra_file])
    cmd += ["--dataset_dir", str(tmp_path / "data")]
    cmd += ["--output_dir", str(tmp_path / "run"), "--epochs", "3", "--val_interval", "1"]
    cmd += ["--spatial_size", "[32,32]", "--batch_size", "4"]
    result = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]  # the message ends the output, no traceback after it
    assert last_line.startswith("NonFiniteLossError: epoch 2, iteration 1 (")
    assert "task lesion nan" in output and "task malignant nan" in output
    last = torch.load(tmp_path / "run" / "models" / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"]  # epoch 1
    assert all(torch.isfinite(t).all() for t in last["network"].values() if t.is_floating_point())
    best = torch.load(tmp_path / "run" / "models" / "best.pt", weights_only=True)
    assert best["epoch"] == 1
