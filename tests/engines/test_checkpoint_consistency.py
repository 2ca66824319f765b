"""``last.pt``, ``best.pt`` and ``history.json`` describe the same epoch after any failure, and after the resume.

A tiny trainer with a validator whose key metric improves every epoch (so every epoch writes a new
``best.pt``), :class:`ResumableCheckpoint` and :class:`EpochProgress` as its ``history``, as in the bundles. Failures
are injected where they happen in real life: ``torch.save`` of ``last.pt`` hits a full disk
(``ENOSPC``), the history file cannot be written after ``last.pt`` was, and the process dies between
``last.pt`` and the rename of the new ``best.pt``.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from medmtl.data.tasks import Task
from medmtl.engines import CheckpointExit, CheckpointWriteError, EpochProgress, ResumableCheckpoint
from medmtl.engines.handlers import PENDING_BEST

SCORES = {1: 0.1, 2: 0.5, 3: 0.7}  # the validation key metric per epoch: every epoch is a new best
TASKS = [Task(name="malignant", kind="binary")]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler catches it."""


def _run(folder: Path, epochs: int, exit_on_error: bool = False) -> tuple[torch.nn.Module, ResumableCheckpoint]:
    torch.manual_seed(0)
    network = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)) for _ in range(2)]

    def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(network(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    trainer = Engine(step)
    evaluator = Engine(lambda engine, batch: None)
    evaluator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(score=SCORES[trainer.state.epoch]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    progress = EpochProgress(TASKS, evaluator=evaluator, bar=False, history_file=folder / "history.json")
    checkpoint = ResumableCheckpoint(
        folder / "models",
        {"network": network, "optimizer": optimizer},
        key_metric_engine=evaluator,
        key_metric="score",
        exit_on_error=exit_on_error,
        history=progress,
    )
    checkpoint.attach(trainer)
    progress.attach(trainer)
    trainer.run(batches, max_epochs=epochs)
    return network, checkpoint


def _state(folder: Path) -> tuple[list[int], int, int, int]:
    """(history epochs, last.pt epoch, best epoch recorded in last.pt, best.pt epoch)."""
    history = [r["epoch"] for r in json.loads((folder / "history.json").read_text())]
    last = torch.load(folder / "models" / "last.pt", weights_only=True)
    best = torch.load(folder / "models" / "best.pt", weights_only=True)
    assert [r["epoch"] for r in last["history"]["records"]] == history  # the history inside last.pt
    last_epoch = last["trainer"]["iteration"] // last["trainer"]["epoch_length"]
    return history, last_epoch, last["best"]["epoch"], best["epoch"]


def _fail_save_of(monkeypatch, name: str, epoch_holder: list[int], at_epoch: int) -> None:
    """``torch.save`` raises ENOSPC when it writes the temp file of ``name`` at ``at_epoch``."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        target = os.readlink(f"/proc/self/fd/{f.fileno()}") if hasattr(f, "fileno") else str(f)
        if f".{name}." in target and epoch_holder and epoch_holder[-1] == at_epoch:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_full_disk_at_last_pt_leaves_all_three_at_the_previous_epoch_and_resume_matches(tmp_path, monkeypatch):
    straight, _ = _run(tmp_path / "straight", 3)
    run = tmp_path / "run"
    epochs: list[int] = []
    _fail_save_of(monkeypatch, "last.pt", epochs, at_epoch=2)
    monkeypatch.setattr(EpochProgress, "epoch_completed", _recording(EpochProgress.epoch_completed, epochs))
    with pytest.raises(CheckpointExit) as exit_info:
        _run(run, 3, exit_on_error=True)
    message = str(exit_info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "no space left on the device" in message and "last.pt" in message and "epoch 1" in message
    assert isinstance(exit_info.value.error, CheckpointWriteError)
    assert exit_info.value.code == message  # SystemExit: Python prints it and exits with status 1
    history, last_epoch, best_recorded, best_epoch = _state(run)
    assert history == [1] and last_epoch == 1 and best_recorded == best_epoch == 1  # not epoch 2's best
    assert not list((run / "models").glob(".*.tmp"))  # no temp or pending file left

    monkeypatch.undo()
    resumed, _ = _run(run, 3)
    assert _state(run) == ([1, 2, 3], 3, 3, 3)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)  # the same numbers as a run that never failed


def _recording(method, epochs: list[int]):
    def wrapped(self, engine):
        epochs.append(engine.state.epoch)
        return method(self, engine)

    return wrapped


def test_history_write_failure_after_last_pt_is_completed_from_last_pt_on_restart(tmp_path, monkeypatch):
    real_commit = EpochProgress.commit

    def no_space(self) -> None:  # the disk fills up while epoch 2 is saved, after last.pt
        if self.state_dict()["records"][-1]["epoch"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_commit(self)

    _run(tmp_path, 1)
    monkeypatch.setattr(EpochProgress, "commit", no_space)
    with pytest.raises(CheckpointWriteError, match="holds this epoch and its history"):
        _run(tmp_path, 2)
    monkeypatch.undo()
    last = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]
    assert [r["epoch"] for r in last["history"]["records"]] == [1, 2]
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [1]  # behind, not ahead
    _run(tmp_path, 2)  # nothing left to train: the start rewrites the history from last.pt
    assert _state(tmp_path) == ([1, 2], 2, 2, 2)


def test_kill_between_last_pt_and_best_pt_is_completed_on_restart(tmp_path, monkeypatch, caplog):
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name == PENDING_BEST:
            raise Killed()
        return real_replace(src, dst)

    _run(tmp_path, 1)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        _run(tmp_path, 2)
    monkeypatch.undo()
    assert (tmp_path / "models" / PENDING_BEST).is_file()
    assert torch.load(tmp_path / "models" / "best.pt", weights_only=True)["epoch"] == 1
    with caplog.at_level("INFO"):
        _run(tmp_path, 2)
    assert "completed the best.pt update of epoch 2" in caplog.text
    assert _state(tmp_path) == ([1, 2], 2, 2, 2)
    assert not (tmp_path / "models" / PENDING_BEST).exists()
