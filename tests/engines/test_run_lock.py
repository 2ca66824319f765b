"""One training per output folder (a real lock held by another process), stale locks, folder and space checks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medmtl.engines import (
    OutputDirError,
    OutputDirLocked,
    RunExit,
    check_free_space,
    check_output_dir,
    claim_output_dir,
    estimate_checkpoint_bytes,
    lock_holder,
    release_output_dir,
)
from medmtl.engines.run_lock import LOCK_NAME, MARGIN_BYTES

HOLDER = """
import sys, time
from medmtl.engines import claim_output_dir
claim_output_dir(sys.argv[1], command="train.json --epochs 100")
print("held", flush=True)
time.sleep(120)
"""


def _hold(folder: Path) -> subprocess.Popen:
    """Another process that claims ``folder`` and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "run"
    holder = _hold(folder)
    try:
        with pytest.raises(OutputDirLocked) as info:
            claim_output_dir(folder)
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()} since " in message
        assert "train.json --epochs 100" in message and "--output_dir" in message and "\n" not in message
        assert info.value.holder["pid"] == holder.pid
        assert lock_holder(folder)["pid"] == holder.pid
        with pytest.raises(RunExit) as exit_info:  # what bundles get: a SystemExit, no traceback
            claim_output_dir(folder, exit_on_error=True)
        assert str(exit_info.value).startswith("OutputDirLocked: ")
    finally:
        holder.send_signal(signal.SIGKILL)  # no atexit, no cleanup: the lock file stays behind
        holder.wait(timeout=30)
    assert (folder / LOCK_NAME).is_file() and lock_holder(folder) is None  # the file stays, the flock is gone
    with caplog.at_level("WARNING"):
        lock = claim_output_dir(folder)
    assert lock is not None and lock.held
    assert (
        f"took over the lock left by a run that ended without releasing it (killed?): pid {holder.pid}" in caplog.text
    )
    assert "no longer running" in caplog.text
    assert lock_holder(folder) is None  # our own lock: not reported as another training's
    assert claim_output_dir(folder) is lock  # claiming again in the same process is allowed
    release_output_dir(folder)
    assert not (folder / LOCK_NAME).exists() and not lock.held


def test_evaluation_takes_no_lock_and_warns_while_a_training_runs(tmp_path, caplog):
    folder = tmp_path / "run"
    holder = _hold(folder)
    try:
        with caplog.at_level("WARNING"):
            check_output_dir(folder / "eval", run_dir=folder)
        assert "a training still runs in" in caplog.text and f"pid {holder.pid}" in caplog.text
        assert (folder / "eval").is_dir()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_prediction_subfolder_linked_out_of_the_output_folder_is_refused_before_work(tmp_path):
    out = tmp_path / "run" / "predictions"
    (out / "inside").mkdir(parents=True)
    (out / "kept").symlink_to(out / "inside")  # a link within the folder is fine
    check_output_dir(out)
    (tmp_path / "elsewhere").mkdir()
    (out / "lesion").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunExit, match=r"predictions/lesion is a link to .*elsewhere, outside the output folder"):
        check_output_dir(out, exit_on_error=True)
    assert not any((tmp_path / "elsewhere").iterdir())


def test_folders_that_cannot_be_written_give_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match="cannot create the output folder .*a_file/run") as info:
        claim_output_dir(blocker / "run")
    assert "\n" not in str(info.value)
    with pytest.raises(RunExit, match="the output folder .*a_file is a file"):
        check_free_space(blocker, exit_on_error=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused_before_anything_runs(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputDirError, match="cannot write into the output folder") as info:
            claim_output_dir(folder)
        assert "\n" not in str(info.value)
    finally:
        folder.chmod(0o755)


def test_free_space_check_names_what_is_free_and_needed(tmp_path):
    network = torch.nn.Linear(10, 10)  # 110 float32 parameters: 440 bytes
    sizes = estimate_checkpoint_bytes(network)
    assert sizes == {"best": 440, "last": 440 * 3}  # weights; weights + Adam's two moments
    needed = check_free_space(tmp_path, network)
    assert needed == MARGIN_BYTES + 2 * 440 + 2 * 1320  # temp + final file of each, none there yet
    (tmp_path / "last.pt").write_bytes(bytes(1320))  # a resumed run replaces it: only the temp file is new
    assert check_free_space(tmp_path, network) == MARGIN_BYTES + 2 * 440 + 1320
    with pytest.raises(OutputDirError) as info:
        check_free_space(tmp_path, network, margin_bytes=2**60)
    message = str(info.value)
    assert f"not enough free space for the run in {tmp_path}" in message and " MB free, about " in message
    assert "110 parameters" in message and "--output_dir" in message
