"""DDP on 2 CPU ranks (gloo) trains the same model as one process on the global batch.

The real pieces of a bundle run (``SupervisedTrainer``, ``MultiTaskPrepareBatch``,
``MultiTaskLoss`` with learnable uncertainty weights, DWA, ``MultiTaskLossHandler``, monai's
``DistributedSampler``) train a tiny ``MultiTaskNet`` for 3 epochs, once in one process with batch 4
and once with ``DistributedDataParallel`` on 2 processes with batch 2 each. Everything runs in
float64: in float32 the rounding differences of the two summation orders are amplified by the
training (a single process with 1 vs 2 threads drifts apart the same way), in float64 they stay
near 1e-12, so any real difference stands out.

The labels are partial and spread unevenly over the ranks (a rank sometimes holds no label of a
task that the other rank has), which is where a per-rank masked mean differs from the global one.
Two controls show the test is sensitive: without ``global_label_mean`` DDP trains a different
model, and without the handler's gradient sync the ranks' uncertainty weights drift apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from monai.data import DataLoader, Dataset, DistributedSampler
    from monai.engines import SupervisedTrainer
    from torch.nn.parallel import DistributedDataParallel

    from medmtl.data import Task
    from medmtl.engines import MultiTaskLossHandler, MultiTaskPrepareBatch, unwrap
    from medmtl.losses import MultiTaskLoss
    from medmtl.networks import MultiTaskNet

    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_default_dtype(torch.float64)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    TASKS = [Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
             Task(name="malignant", kind="binary")]
    GLOBAL_BATCH = 4


    class Float64Batch(MultiTaskPrepareBatch):
        # binary targets are cast to float32 by MultiTaskPrepareBatch; keep the whole run in float64
        def __call__(self, *args, **kwargs):
            inputs, targets = super().__call__(*args, **kwargs)
            return inputs, {k: v.double() if v.is_floating_point() else v for k, v in targets.items()}


    class NoSyncHandler(MultiTaskLossHandler):
        def backward_completed(self, engine):  # the bug this guards against: loss weights not averaged
            pass


    def samples():
        g = torch.Generator().manual_seed(0)
        out = []
        for i in range(8):  # rank 0 gets 0,2,4,6 and rank 1 gets 1,3,5,7 (batches [0,2],[4,6] / [1,3],[5,7])
            side = 3 + (i % 3) * 3
            mask = torch.zeros(1, 32, 32)
            mask[:, 2 : 2 + side, 2 : 2 + side] = 1
            out.append({
                "image": mask + 0.3 * torch.randn(1, 32, 32, generator=g),
                "lesion": mask,
                "lesion_present": torch.tensor(i % 4 != 3),
                "malignant": torch.tensor([float(side > 5)]),
                "malignant_present": torch.tensor(i in (0, 1, 2, 5)),
            })
        return out


    def train(weighting, global_label_mean=True, handler=MultiTaskLossHandler):
        torch.manual_seed(0)
        net = MultiTaskNet("unet", TASKS, backbone_kwargs={"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)})
        network = DistributedDataParallel(net) if world > 1 else net
        loss = MultiTaskLoss(TASKS, weighting=weighting, pos_weight={"malignant": 2.0},
                             global_label_mean=global_label_mean).double()  # weights are created float32
        optimizer = torch.optim.AdamW(loss.param_groups(network.parameters(), 1e-4), lr=1e-2)
        dataset = Dataset(samples())
        sampler = DistributedSampler(dataset, shuffle=False, num_replicas=world, rank=rank)
        loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler, num_workers=0)
        trainer = SupervisedTrainer(
            device=torch.device("cpu"), max_epochs=3, train_data_loader=loader, network=network,
            optimizer=optimizer, loss_function=loss, prepare_batch=Float64Batch(TASKS),
        )
        handler(loss, network).attach(trainer)
        trainer.run()
        net.eval()
        with torch.no_grad():
            preds = net(torch.stack([x["image"] for x in samples()]))
        return {
            "pred": {k: v.detach() for k, v in preds.items()},
            "network": unwrap(network).state_dict(),
            "loss": loss.state_dict(),
            "metrics": {k: v for k, v in trainer.state.metrics.items() if k.startswith("train_")},
        }


    runs = {"uncertainty": train("uncertainty"), "dwa": train("dwa")}
    if world > 1:
        runs["rank_means"] = train("uncertainty", global_label_mean=False)
        runs["no_sync"] = train("uncertainty", handler=NoSyncHandler)
        dist.destroy_process_group()
    torch.save(runs, out)
    """
)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_trains_the_same_model_as_one_process(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = {"single": (0, 1), "rank0": (0, 2), "rank1": (1, 2)}
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(script), str(rank), str(world), str(tmp_path / "store"), str(tmp_path / f"{name}.pt")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name, (rank, world) in jobs.items()
    }
    logs = {name: p.communicate(timeout=280)[0].decode()[-3000:] for name, p in procs.items()}
    assert {name: p.returncode for name, p in procs.items()} == dict.fromkeys(jobs, 0), logs
    single, r0, r1 = (torch.load(tmp_path / f"{n}.pt", weights_only=False) for n in jobs)

    for weighting in ("uncertainty", "dwa"):
        for part in ("network", "loss"):
            assert _max_diff(r0[weighting][part], r1[weighting][part]) == 0.0, f"{weighting} {part}: ranks differ"
        # conv biases in front of an instance norm have a zero gradient, whose rounding noise Adam
        # scales up to ~1e-9; they change no output, so the outputs get the tight tolerance
        assert _max_diff(r0[weighting]["network"], single[weighting]["network"]) < 1e-7, weighting
        assert _max_diff(r0[weighting]["pred"], single[weighting]["pred"]) < 1e-10, weighting
        assert _max_diff(r0[weighting]["loss"], single[weighting]["loss"]) < 1e-12, weighting
        # the logged epoch losses and weights are the global ones, equal to the single process's
        assert r0[weighting]["metrics"].keys() == single[weighting]["metrics"].keys()
        for key, value in single[weighting]["metrics"].items():
            assert r0[weighting]["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (weighting, key)
    assert single["uncertainty"]["loss"]["weighting.log_vars"].abs().min() > 1e-3  # the weights were trained
    assert single["dwa"]["metrics"]["train_weight/lesion"] != 1.0  # DWA used its (global) history

    # controls: each removed piece breaks the equality by far more than float64 rounding
    assert _max_diff(r0["rank_means"]["pred"], single["uncertainty"]["pred"]) > 1e-4
    no_sync = (r0["no_sync"]["loss"]["weighting.log_vars"] - r1["no_sync"]["loss"]["weighting.log_vars"]).abs()
    assert float(no_sync.max()) > 1e-6
