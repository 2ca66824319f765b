"""medmtl.engines.distributed helpers without a process group, and resume from a DDP-style checkpoint.

The real multi-process run is tests/bundles/test_ddp.py (torchrun, 2 CPU ranks).
"""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

import medmtl.engines.distributed as D
from medmtl.engines import (
    EpochProgress,
    MultiTaskLossHandler,
    ResumableCheckpoint,
    atomic_torch_save,
    per_rank_handlers,
    rank0_only,
)
from medmtl.tracking import RunArtifactsHandler


def test_single_process_defaults() -> None:
    assert not D.is_distributed()
    assert (D.get_rank(), D.get_world_size(), D.is_main_process()) == (0, 1, True)
    if not torch.cuda.is_available():
        assert D.distributed_backend() == "gloo"
        assert D.distributed_device() == torch.device("cpu")


def test_writers_are_kept_on_rank0_only(monkeypatch) -> None:
    class MyProgress(EpochProgress):  # subclasses of a writer are writers too
        pass

    progress, artifacts = MyProgress(tasks=[{"name": "t", "kind": "binary"}]), RunArtifactsHandler()
    loss_handler = MultiTaskLossHandler(loss_function=None)
    handlers = [loss_handler, progress, artifacts]
    assert per_rank_handlers(handlers) == handlers and rank0_only(handlers) == handlers
    monkeypatch.setattr(D, "get_rank", lambda: 1)
    assert per_rank_handlers(handlers) == [loss_handler]
    assert per_rank_handlers(handlers, writers=()) == handlers
    assert rank0_only(handlers) == [] and per_rank_handlers(None) == []


def test_ignite_idist_follows_the_group_from_init_to_cleanup(monkeypatch) -> None:
    """A one-process gloo group: ignite's helpers see it after init and forget it after cleanup, twice."""
    import socket

    import ignite.distributed as idist

    for _ in range(2):  # a second group in the same process is seen too
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        try:
            assert D.init_distributed(backend="gloo") == D.distributed_device()
            assert D.is_distributed() and idist.backend() == "gloo" and idist.model_name() == "native-dist"
            assert (D.get_rank(), D.get_world_size()) == (0, 1)
        finally:
            D.cleanup_distributed()
        assert not D.is_distributed() and idist.backend() is None and idist.model_name() == "serial"
        assert (D.get_rank(), D.get_world_size()) == (0, 1)


def test_init_without_torchrun_says_how_to_start(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun.*RANK"):
        D.init_distributed()


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch) -> None:
    """torchrun --nproc_per_node=2 on a 1-GPU machine: rank 1 says what to change instead of a CUDA error."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert D.distributed_device() == torch.device("cuda:0")
    assert D.distributed_backend() in ("nccl", "gloo")  # nccl where this build has it
    monkeypatch.setenv("LOCAL_RANK", "1")
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail(f"set_device({device}) reached"))
    with pytest.raises(
        RuntimeError, match=r"started 2 processes.*only 1 GPU.*--nproc_per_node=1.*CUDA_VISIBLE_DEVICES=''"
    ):
        D.init_distributed()


def test_resume_loads_a_checkpoint_saved_from_a_ddp_wrapper(tmp_path) -> None:
    """last.pt whose network keys all start with ``module.`` (a DDP state_dict) resumes a plain network."""
    torch.manual_seed(0)
    saved = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    trainer = Engine(lambda engine, batch: None)
    ResumableCheckpoint(tmp_path, {"network": saved}).attach(trainer)
    trainer.run([0], max_epochs=1)
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    checkpoint["network"] = {f"module.{k}": v for k, v in checkpoint["network"].items()}
    atomic_torch_save(checkpoint, tmp_path / "last.pt")

    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    resumed = Engine(lambda engine, batch: None)
    ResumableCheckpoint(tmp_path, {"network": fresh}).attach(resumed)
    resumed.run([0], max_epochs=2)
    assert resumed.state.epoch == 2
    for a, b in zip(saved.state_dict().values(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
