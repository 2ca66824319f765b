"""bfloat16 autocast on the CPU (the bundles' ``--amp True`` there) vs float32: training and inference steps.

What ``medmtl plan`` decides on by timing one trial step each way; this script measures the ratio with
more rounds and both directions of the network, on the network the plan chooses for BUSI
(``MultiTaskNet``, ``resunet`` 16-256, lesion segmentation + 3-class diagnosis, ``MultiTaskLoss``) at
128 and 160 px, batch 16, random tensors. Candidates per size: a float32 training step (``zero_grad``,
forward, loss, backward, AdamW step) and the same through :class:`medmtl.engines.CPUAutocastNetwork`,
each with its own network, optimizer and tensors; then a no-grad forward of each. One step of each
candidate per round, interleaved; ratios per round (median and interquartile range).

Run: ``python benchmarks/cpu_bfloat16.py [--quick] [--repeats 9] [--threads 2]``; prints a table and
writes ``benchmarks/results/cpu_bfloat16.json`` (``--quick``: 2 repeats, ``cpu_bfloat16.quick.json``).
"""

from __future__ import annotations

import argparse

import torch
from _bench import interleaved, machine, print_table, ratio_spread, spread_text, summary, write_results

from medmtl.data import Task
from medmtl.engines import CPUAutocastNetwork, tune_host_allocator
from medmtl.losses import MultiTaskLoss
from medmtl.networks import build_multitask_network

TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"]),
]
BATCH = 16


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 2, "in_channels": 1, "channels": [16, 32, 64, 128, 256]}
    return build_multitask_network(sharing="hard", backbone="resunet", tasks=TASKS, backbone_kwargs=kwargs)


def _batch(size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(size)
    x = torch.randn(BATCH, 1, size, size, generator=generator)
    return x, {
        "lesion": (x > 0.5).float(),
        "lesion_present": torch.ones(BATCH, dtype=torch.bool),
        "diagnosis": torch.randint(0, 3, (BATCH,), generator=generator),
        "diagnosis_present": torch.ones(BATCH, dtype=torch.bool),
    }


def _candidates(size: int) -> dict[str, dict[str, object]]:
    """``{precision: {"train": step, "infer": forward}}``, each precision with its own network."""
    x, targets = _batch(size)
    loss_function = MultiTaskLoss(TASKS)
    out: dict[str, dict[str, object]] = {}
    for precision in ("float32", "bfloat16"):
        network = _network()
        call = CPUAutocastNetwork(network) if precision == "bfloat16" else network
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)

        def train(call=call, network=network, optimizer=optimizer) -> None:
            network.train()
            optimizer.zero_grad(set_to_none=True)
            loss_function(call(x), targets).backward()
            optimizer.step()

        def infer(call=call, network=network) -> None:
            network.eval()
            with torch.no_grad():
                call(x)

        out[precision] = {"train": train, "infer": infer}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats (smoke run; results not kept)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    tune_host_allocator()  # as the bundles run on CPU
    results: dict[str, dict[str, object]] = {}
    rows = []
    for size in (128, 160):
        candidates = _candidates(size)
        for step in ("train", "infer"):
            times = interleaved({p: candidates[p][step] for p in candidates}, repeats, warmup=2)
            spread = ratio_spread(times["float32"], times["bfloat16"])
            results[f"{size}px_{step}"] = {
                "float32": summary(times["float32"]),
                "bfloat16": summary(times["bfloat16"]),
                "speedup": spread,
            }
            rows.append(
                [
                    f"{size} px, batch {BATCH}, {step}",
                    summary(times["float32"])["median_s"],
                    summary(times["bfloat16"])["median_s"],
                    spread_text(spread),
                ]
            )
    print_table(
        ["step", "float32 s (median)", "bfloat16 autocast s", "speed-up per round"],
        rows,
        title=f"bfloat16 autocast vs float32 on the CPU ({args.threads} threads, resunet 16-256)",
    )
    meta = machine(torch_threads=args.threads, command="python benchmarks/cpu_bfloat16.py", repeats=repeats)
    write_results("cpu_bfloat16", meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
