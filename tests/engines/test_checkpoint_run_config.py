"""``run_config``: the record of how a run was trained travels in ``last.pt``, ``best.pt`` and the pending best."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from medmtl.engines import CheckpointError, ResumableCheckpoint, read_run_config
from medmtl.engines.handlers import PENDING_BEST

RECORD = {"settings": {"model": {"backbone": "resunet", "spatial_size": (48, 48)}}, "tasks": ["lesion"]}
PLAIN = {"settings": {"model": {"backbone": "resunet", "spatial_size": [48, 48]}}, "tasks": ["lesion"]}  # as JSON


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def _run(folder: Path, epochs: int, run_config=RECORD) -> Engine:
    torch.manual_seed(0)
    network = torch.nn.Linear(2, 1)
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: None)
    evaluator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(score=float(trainer.state.epoch)))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    checkpoint = ResumableCheckpoint(
        folder, {"network": network}, key_metric_engine=evaluator, key_metric="score", run_config=run_config
    )
    checkpoint.attach(trainer)
    trainer.run([0], max_epochs=epochs)
    return trainer


def test_last_and_best_carry_the_run_config_as_plain_data(tmp_path) -> None:
    _run(tmp_path, 2)
    for name in ("last.pt", "best.pt"):
        assert torch.load(tmp_path / name, weights_only=True)["run_config"] == PLAIN
        assert read_run_config(tmp_path / name) == PLAIN
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2


def test_the_pending_best_carries_it_too(tmp_path, monkeypatch) -> None:
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name == PENDING_BEST:
            raise Killed()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        _run(tmp_path, 1)
    assert read_run_config(tmp_path / PENDING_BEST) == PLAIN


def test_resume_ignores_the_record_and_writes_the_new_one(tmp_path) -> None:
    _run(tmp_path, 1)
    changed = {**RECORD, "tasks": ["lesion", "malignant"]}
    trainer = _run(tmp_path, 2, run_config=changed)
    assert trainer.state.epoch == 2
    assert read_run_config(tmp_path / "last.pt")["tasks"] == ["lesion", "malignant"]


def test_old_checkpoints_have_none_and_bad_records_are_refused(tmp_path) -> None:
    _run(tmp_path, 1, run_config=None)
    assert "run_config" not in torch.load(tmp_path / "last.pt", weights_only=True)
    assert read_run_config(tmp_path / "last.pt") is None
    torch.save({"network": {}, "run_config": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="odd.pt holds a 'run_config' that is a list"):
        read_run_config(tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_run_config(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="JSON data only"):
        ResumableCheckpoint(tmp_path, {}, run_config={"path": Path("/data")})
