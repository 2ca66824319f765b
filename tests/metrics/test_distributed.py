"""TaskMetric under torch.distributed (2 CPU processes, gloo): gathered results equal a single-process run.

Ranks hold different numbers of samples (MONAI's ``evenly_divisible_all_gather`` pads and trims)
and case ids are gathered as strings; they must stay aligned with the gathered values.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from medmtl.data import Task
    from medmtl.metrics import TaskMetric

    rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    world = int(sys.argv[4])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    n = 11
    labels = (torch.rand(n, 1, generator=g) < 0.5).float()
    logits = labels * 2 - 1 + torch.randn(n, 1, generator=g)
    present = torch.rand(n, generator=g) < 0.8
    seg_label = torch.zeros(n, 1, 8, 8, dtype=torch.long)
    for i in range(n):
        seg_label[i, 0, 1 : 2 + i % 5, 1:5] = 1
    seg_pred = torch.nn.functional.one_hot(torch.roll(seg_label[:, 0], 1, dims=1), 2).movedim(-1, 1).float()
    ids = [f"c{i}" for i in range(n)]
    mine = list(range(0, 7)) if rank == 0 else list(range(7, n))
    if world == 1:
        mine = list(range(n))
    binary = TaskMetric(Task(name="b", kind="binary"))
    seg = TaskMetric(Task(name="s", kind="segmentation", classes=["bg", "fg"]), seg_metrics=("dice", "iou"))
    for i in mine:
        binary.update(logits[i : i + 1], labels[i : i + 1], present[i : i + 1], [ids[i]])
        seg.update(seg_pred[i : i + 1], seg_label[i : i + 1], present[i : i + 1], [ids[i]])
    rb, rs = binary.result(), seg.result()
    result = {
        "binary_ids": rb.case_ids, "binary_probs": rb.probabilities[:, 0].tolist(), "binary": binary.aggregate(),
        "seg_ids": rs.case_ids, "seg_dice": rs.case_metrics["dice"][:, 0].tolist(), "seg": seg.aggregate(),
        "all_ids": binary.case_ids(),
    }
    json.dump(result, open(out, "w"))
    if world > 1:
        dist.destroy_process_group()
    """
)


def _run(tmp_path: Path) -> tuple[dict, list[dict]]:
    """One single-process run and one two-rank run, started together (they use different stores)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [(1, 0), (2, 0), (2, 1)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(r),
                str(tmp_path / f"store{w}"),
                str(tmp_path / f"w{w}r{r}.json"),
                str(w),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for w, r in jobs
    ]
    logs = [p.communicate(timeout=100)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    single, *ranks = (json.loads((tmp_path / f"w{w}r{r}.json").read_text()) for w, r in jobs)
    return single, ranks


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k]) for k in a
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_ranks_gather_the_same_results_as_one(tmp_path: Path):
    single, ranks = _run(tmp_path)
    for rank in ranks:
        assert rank["all_ids"] == [f"c{i}" for i in range(11)]
        assert rank["binary_ids"] == single["binary_ids"]
        assert rank["binary_probs"] == pytest.approx(single["binary_probs"])
        assert rank["seg_ids"] == single["seg_ids"]
        assert rank["seg_dice"] == pytest.approx(single["seg_dice"])
        assert _same(rank["binary"], single["binary"])
        assert _same(rank["seg"], single["seg"])
