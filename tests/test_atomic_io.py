"""The one atomic-write helper: the old file or the new one, never half of either."""

from __future__ import annotations

import stat

import pytest

from medmtl.atomic_io import atomic_write, atomic_write_with


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temp(tmp_path) -> None:
    target = tmp_path / "out.txt"
    atomic_write(target, "kept")

    def half_then_fail(handle) -> None:
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, half_then_fail)
    assert target.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
