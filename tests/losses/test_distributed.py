"""Weightings under torch.distributed (2 CPU processes, gloo): ranks stay in step, no deadlock.

Each rank sees different losses, and rank 1 sees fewer tasks (partly labelled batches), which is
where a collective called on one rank only would hang.
"""

from __future__ import annotations

import json
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
    from torch import nn
    from medmtl.losses import DWAWeighting, GradNormWeighting, PCGradWeighting, UncertaintyWeighting

    rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4)
    heads = nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
    x = torch.randn(6, 3) + rank

    def losses(tasks):
        h = torch.relu(trunk(x))
        return {t: (heads[t](h) - 1 - rank).pow(2).mean() for t in tasks}

    mine = ["a", "b"] if rank == 0 else ["a"]
    result = {}

    dwa = DWAWeighting(["a", "b"])
    for epoch in range(3):
        dwa({k: v.detach() * (epoch + 1 + rank) for k, v in losses(mine).items()})
        dwa.on_epoch_end()
    result["dwa"] = dwa.current_weights()

    gn = GradNormWeighting(["a", "b"])
    for _ in range(3):
        gn.gradnorm_step(losses(mine), trunk.parameters())
    gn.gradnorm_step({}, trunk.parameters())  # a batch with no label on this rank
    result["gradnorm"] = gn.current_weights()

    pc = PCGradWeighting(["a", "b"])
    trunk.zero_grad()
    pc.backward(losses(mine), trunk.parameters())
    result["pcgrad_corrected"] = [float(p.grad.abs().sum()) for p in trunk.parameters()]

    uw = UncertaintyWeighting(["a", "b"])
    uw({k: v.detach() for k, v in losses(mine).items()}).backward()
    uw.sync_gradients()
    result["uncertainty_grad"] = uw.log_vars.grad.tolist()

    json.dump(result, open(out, "w"))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_ranks_keep_identical_weights(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(tmp_path / "store"), str(tmp_path / f"r{r}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=100)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2))
    assert r0["dwa"] == r1["dwa"] and r0["dwa"] != {"a": 1.0, "b": 1.0}
    assert r0["gradnorm"] == r1["gradnorm"] and r0["gradnorm"] != {"a": 1.0, "b": 1.0}
    assert r0["uncertainty_grad"] == r1["uncertainty_grad"]
    # rank 1 has a single task: it has nothing to project but still joins the correction's all-reduce
    assert all(v > 0 for v in r0["pcgrad_corrected"] + r1["pcgrad_corrected"])
