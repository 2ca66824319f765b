"""Every way a checkpoint can be unusable ends in one clear CheckpointError naming the file; nothing in it runs.

Real files: checkpoints written by ``torch.save`` and then truncated or bit-flipped, a text file, a
PNG, an empty file, a folder, and pickles whose ``__reduce__`` would create a sentinel file if
anything executed them. No message relays PyTorch's advice to load with ``weights_only=False``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from medmtl.engines import (
    CheckpointError,
    CheckpointExit,
    ResumableCheckpoint,
    SafeCheckpointLoader,
    check_state_dict_fits,
    load_checkpoint,
    load_pretrained,
)


class _Payload:
    """Pickled, it asks the loader to call ``os.system``: creating the sentinel proves code ran."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _net(heads: tuple[str, ...] = ("malignant",)) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"encoder": torch.nn.Linear(8, 8), **{h: torch.nn.Linear(8, 1) for h in heads}})


@pytest.fixture()
def good(tmp_path) -> Path:
    path = tmp_path / "best.pt"
    torch.save({"network": _net().state_dict(), "epoch": 3}, path)
    return path


def _error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "weights_only" not in message and "\n" not in message
    return message


def test_a_good_checkpoint_loads(good) -> None:
    assert load_checkpoint(good)["epoch"] == 3


@pytest.mark.parametrize("keep", [0.5, 0.9, 100, 10])
def test_truncated_checkpoint_is_named_truncated(good, keep) -> None:
    data = good.read_bytes()
    good.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    assert "truncated or corrupt" in _error(good)


def test_flipped_bytes_fail_the_crc_check(good) -> None:
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    good.write_bytes(bytes(data))
    assert "fails its CRC check" in _error(good)


def test_files_that_are_not_checkpoints(tmp_path) -> None:
    (tmp_path / "notes.pt").write_text("hello, this is not a checkpoint\n")
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "folder.pt").mkdir()
    assert "not a PyTorch checkpoint" in _error(tmp_path / "notes.pt")
    assert "not a PyTorch checkpoint" in _error(tmp_path / "image.pt")
    assert "empty" in _error(tmp_path / "empty.pt")
    assert "is a folder" in _error(tmp_path / "folder.pt")
    assert "does not exist" in _error(tmp_path / "missing.pt")


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, writer) -> None:
    sentinel = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    payload = {"network": _net().state_dict(), "extra": _Payload(sentinel)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    message = _error(path)
    assert message.startswith("refused:")
    if writer == "torch.save":
        assert "contains code/objects medmtl will not load" in message and "system" in message
    assert not sentinel.exists()


def test_checkpoint_of_other_tasks_names_the_keys(good) -> None:
    state = load_checkpoint(good)["network"]
    with pytest.raises(CheckpointError) as info:
        check_state_dict_fits(_net(("malignant", "grade")), state, good)
    message = str(info.value)
    assert "2 key(s) missing (grade.weight, grade.bias)" in message and "unexpected" not in message
    with pytest.raises(CheckpointError, match=r"2 key\(s\) of another shape.*encoder.weight \(8, 8\) vs \(4, 8\)"):
        other = _net()
        other["encoder"] = torch.nn.Linear(8, 4)
        check_state_dict_fits(other, state, good)


def test_safe_checkpoint_loader_loads_and_stops_cleanly(good, tmp_path) -> None:
    network = _net()
    torch.nn.init.zeros_(network["encoder"].weight)
    engine = Engine(lambda e, b: None)
    SafeCheckpointLoader(load_path=str(good), load_dict={"network": network}).attach(engine)
    engine.run([0])
    torch.testing.assert_close(network["encoder"].weight, _net()["encoder"].weight)  # MONAI's loading, unchanged

    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:200])
    engine = Engine(lambda e, b: None)
    SafeCheckpointLoader(load_path=str(broken), load_dict={"network": _net()}, exit_on_error=True).attach(engine)
    with pytest.raises(CheckpointExit, match="truncated or corrupt") as info:
        engine.run([0])
    assert isinstance(info.value, SystemExit) and "\n" not in str(info.value)

    engine = Engine(lambda e, b: None)
    SafeCheckpointLoader(load_path=str(good), load_dict={"network": _net(("grade",))}).attach(engine)
    with pytest.raises(CheckpointError, match="missing .*grade.weight.*unexpected key.*malignant.weight"):
        engine.run([0])


def test_load_pretrained_and_resume_translate_damaged_files(good, tmp_path) -> None:
    good.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="pretrained checkpoint .* truncated or corrupt"):
        load_pretrained(_net(), good)

    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"network": _net().state_dict(), "trainer": {}}, folder / "last.pt")
    trainer = Engine(lambda e, b: None)
    ResumableCheckpoint(folder, {"network": _net(("grade",))}, exit_on_error=True).attach(trainer)
    with pytest.raises(CheckpointExit) as info:
        trainer.run([0], max_epochs=1)
    message = str(info.value)
    assert "does not fit the network" in message and "grade.weight" in message and "--output_dir" in message


def test_ddp_prefix_is_stripped_with_torchs_helper_only_when_every_key_has_it() -> None:
    from torch.nn.parallel import DataParallel

    from medmtl.engines.checkpoint_io import strip_ddp_prefix

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    wrapped = DataParallel(net).state_dict()  # every key "module.*", _metadata too
    before = list(wrapped)
    plain = strip_ddp_prefix(wrapped)
    assert list(plain) == list(net.state_dict()) and list(wrapped) == before  # the input is left alone
    assert set(plain._metadata) == set(net.state_dict()._metadata)  # BatchNorm's version survives
    fresh = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    fresh.load_state_dict(plain)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values(), strict=True))
    mixed = {"module.weight": torch.zeros(1), "bias": torch.zeros(1)}  # a child named "module": not a wrapper
    assert strip_ddp_prefix(mixed) is mixed and strip_ddp_prefix({}) == {}
