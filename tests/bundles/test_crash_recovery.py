"""A demo-bundle training killed with SIGKILL resumes to exactly the numbers of an uninterrupted run.

Two kills of one run: in the middle of epoch 2 (a hook in a test-only config sleeps there until
killed), then, after a restart, inside the next checkpoint write (``MEDMTL_CHECKPOINT_PAUSE_S`` holds the finished temp file before its
rename, the test kills when it appears). While a run goes, every ``last.pt``/``best.pt`` that
exists is loaded with ``torch.load(weights_only=True)`` and no other name than the two final ones
and the hidden ``.<name>.<random>.tmp`` files ever appears in the checkpoint folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from bundle_cli import bundle_argv

from medmtl.data.demo import generate_demo2d
from medmtl.engines import CHECKPOINT_PAUSE_ENV
from medmtl.engines.run_lock import WRITE_CHECK_PREFIX

REPO = Path(__file__).resolve().parents[2]
# hidden temp files of last.pt / best.pt, and of the pending best (``..best.pt.pending.tmp.<random>.tmp``)
TEMP_NAME = re.compile(r"^\.(last|best)\.pt\..+\.tmp$|^\.\.best\.pt\.pending\.tmp\..+\.tmp$")

# Test-only config merged after the demo's training layers: in epoch 2, after its 2nd iteration, write a marker and
# sleep until killed, unless the marker exists (a reference run creates it first; a restart finds it).
KILL_HOOK = {
    "+imports": ["$import ignite", "$import time"],
    "kill_marker": "$os.path.join(@output_dir, 'kill_here')",
    "+initialize": [
        "$@train::trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, "
        "lambda e: (open(@kill_marker, 'w').close(), time.sleep(300)) "
        "if e.state.epoch == 2 and (e.state.iteration - 1) % e.state.epoch_length == 1 "
        "and not os.path.exists(@kill_marker) else None)"
    ],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Tiny demo data (24 cases, 32x32), the hook config and an uninterrupted 3-epoch reference run."""
    work = tmp_path_factory.mktemp("crash")
    generate_demo2d(work / "data" / "demo2d", num_cases=24, seed=0)
    hook = work / "kill_hook.json"
    hook.write_text(json.dumps(KILL_HOOK))
    setup = {"work": work, "hook": hook}
    reference = work / "reference"
    reference.mkdir()
    (reference / "kill_here").touch()
    proc = _start(setup, reference)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return {**setup, "reference": reference}


def _command(setup: dict, output_dir: Path) -> list[str]:
    overrides = {
        "data_spec": REPO / "data_specs" / "demo.yaml",
        "dataset_dir": setup["work"] / "data" / "demo2d",
        "output_dir": output_dir,
        "epochs": 3,
        "val_interval": 1,
        "batch_size": 4,
        "spatial_size": "[32,32]",
    }
    return bundle_argv("demo", ["train"], overrides, extra_configs=[setup["hook"]])


def _start(setup: dict, output_dir: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        _command(setup, output_dir),
        cwd=setup["work"],
        # on CPU even where a GPU is visible: CUDA kernels are not bit-reproducible, CPU runs are
        env={**(env or os.environ), "CUDA_VISIBLE_DEVICES": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _check_checkpoints(models: Path, seen: dict[str, tuple]) -> None:
    """Every file in ``models`` has a final or a hidden temp name; each new last/best.pt version loads."""
    if not models.is_dir():
        return
    for path in models.iterdir():
        # or the byte a starting run writes (then removes) to check that the folder is writable
        assert (
            path.name in {"last.pt", "best.pt"}
            or TEMP_NAME.match(path.name)
            or path.name.startswith(WRITE_CHECK_PREFIX)
        ), path.name
    for name in ("last.pt", "best.pt"):
        path = models / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen.get(name) != key:
            torch.load(path, map_location="cpu", weights_only=True)  # raises on a partial file
            seen[name] = key


def _run_and_kill(proc: subprocess.Popen, models: Path, kill_when: Callable[[], bool], timeout: float = 240) -> int:
    """Watch the checkpoints while ``proc`` runs; SIGKILL it when ``kill_when()``; return the versions seen."""
    seen: dict[str, tuple] = {}
    versions = 0
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point:\n{out[-3000:]}")
        before = dict(seen)
        _check_checkpoints(models, seen)
        versions += sum(seen[k] != before.get(k) for k in seen)
        if kill_when():
            proc.kill()  # SIGKILL: no handler, no flush, no cleanup
            proc.communicate(timeout=60)
            return versions
        time.sleep(0.02)
    proc.kill()
    proc.communicate(timeout=60)
    pytest.fail("kill point not reached in time")


def _restart_and_finish(setup: dict, output_dir: Path) -> str:
    proc = _start(setup, output_dir)
    seen: dict[str, tuple] = {}
    while proc.poll() is None:
        _check_checkpoints(output_dir / "models", seen)
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, out[-3000:]
    _check_checkpoints(output_dir / "models", seen)
    return out


def _assert_same_as_reference(setup: dict, output_dir: Path) -> None:
    reference = setup["reference"]
    history = json.loads((output_dir / "history.json").read_text())
    expected = json.loads((reference / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history == expected  # every loss, task weight and validation metric, bit for bit
    last = torch.load(output_dir / "models" / "last.pt", map_location="cpu", weights_only=True)
    ref_last = torch.load(reference / "models" / "last.pt", map_location="cpu", weights_only=True)
    for name, tensor in ref_last["network"].items():
        assert torch.equal(last["network"][name], tensor), name
    assert last["best"] == ref_last["best"]
    assert last["key_metric_engine"] == ref_last["key_metric_engine"]  # the best metric the summary reports
    best = torch.load(output_dir / "models" / "best.pt", map_location="cpu", weights_only=True)
    ref_best = torch.load(reference / "models" / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == ref_best["epoch"] and best["mean_primary"] == ref_best["mean_primary"]
    assert not [p.name for p in (output_dir / "models").iterdir() if TEMP_NAME.match(p.name)]


def test_killed_mid_epoch_and_mid_write_resumes_to_the_uninterrupted_result(setup) -> None:
    """Kill in epoch 2, restart and kill inside the next ``last.pt`` write, restart again: same numbers.

    One run killed twice (rather than two runs killed once) keeps the test to four bundle starts.
    """
    run = setup["work"] / "killed"
    models = run / "models"
    proc = _start(setup, run)
    versions = _run_and_kill(proc, models, lambda: (run / "kill_here").exists())
    assert versions >= 2  # last.pt and best.pt of epoch 1 were seen and loaded
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1]  # killed inside epoch 2
    last = torch.load(models / "last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"]  # the end of epoch 1

    def writing_second_last() -> bool:  # a new last.pt is being written while an older one exists
        return any(models.glob(".last.pt.*.tmp"))

    # the same command; the fault injection holds each finished temp file 2 s before its rename
    proc = _start(setup, run, env={**os.environ, CHECKPOINT_PAUSE_ENV: "2.0"})
    _run_and_kill(proc, models, writing_second_last)
    assert list(models.glob(".last.pt.*.tmp"))  # the kill left the hidden temp file, never a partial last.pt
    last = torch.load(models / "last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"]  # still epoch 1: the rename never ran

    log = _restart_and_finish(setup, run)
    assert f"resumed from {models / 'last.pt'} at epoch 1" in log
    assert "interrupted checkpoint write" in log  # the stale temp file was removed
    assert "epoch 1/3" not in log and "epoch 2/3" in log
    _assert_same_as_reference(setup, run)
