"""DDP scaling on CPU: the demo bundle on 2 processes (torchrun, gloo) vs 1 process with 2 threads.

``multi_gpu_train.json`` is how a user scales out: the same training config run by ``torchrun``.
On a CPU machine the question is whether 2 single-threaded processes train faster than 1 process
using both cores through intra-op threads, and whether they train *the same model*. This script
generates demo data (``medmtl.data.demo.generate_demo2d``, 64 px) in a temporary folder, then runs
the demo bundle's ``train.json`` the way a user does (``python -m monai.bundle run``), alternating:

- **single**: 1 process, ``OMP_NUM_THREADS=2``, batch 8;
- **DDP**: ``torchrun --standalone --nproc_per_node=2`` with ``multi_gpu_train.json``,
  ``OMP_NUM_THREADS=1``, batch 4 per rank (the same global batch of 8).

Speed: the training time of each epoch as Ignite measures it (``state.times['EPOCH_COMPLETED']``:
the epoch's iterations, without start-up, caching, validation or checkpoints; printed by a small
handler added through an extra config file); the first epoch is a warm-up and not counted. Samples/s
= training samples / median epoch time; goal DDP / single >= 1.1.

Equality: DDP with ``even_divisible`` shards and averaged gradients computes the same step as one
process on the global batch only when nothing random or per-rank remains, so both runs get
overrides that make them comparable: augmentation off (``train::preprocessing::train false``), no
dropout, only fully labelled training cases (a masked per-task mean over 4 + 4 samples equals the
mean over 8 only when every sample carries every label), an even number of them, and the single
process draws its batches through a ``DistributedSampler`` with 1 replica and the same seed (the
union of the two ranks' batches is then exactly the single process's batch). ``multi_gpu_train.json``
seeds rank r with ``seed + r``; rank 0's initial weights (broadcast by DDP) then equal the single
run's. What remains is float summation order (gloo's all-reduce, per-rank batches), so the per-epoch
training losses should agree to a small relative difference that may grow slowly over epochs.

Run: ``python benchmarks/ddp_scaling.py [--quick] [--epochs 7] [--rounds 2]``; prints tables and
writes ``benchmarks/results/ddp_scaling.json`` (``--quick``: 32 px, 2 epochs, 1 round, into
``ddp_scaling.quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import REPO, machine, print_table, summary, write_results

from medmtl.data.demo import generate_demo2d

NAME = "ddp_scaling"
CONFIGS = REPO / "bundles" / "demo" / "configs"
SPEC = REPO / "data_specs" / "demo.yaml"
GLOBAL_BATCH = 8
EPOCH_LINE = re.compile(r"^BENCH_EPOCH rank=(\d+) epoch=(\d+) seconds=([0-9.eE+-]+)$", re.MULTILINE)
SAMPLES_LINE = re.compile(r"^BENCH_SAMPLES (\d+)$", re.MULTILINE)

# Extra config merged after train.json (and multi_gpu_train.json): comparable runs + epoch timing.
# (No "import" anywhere in an expression: MONAI then parses it as Python before resolving "@" ids.)
COMMON_OVERRIDES: dict[str, Any] = {
    "train::preprocessing::train": False,
    "network_def::backbone_kwargs::dropout": 0.0,
    "train::dataset::data": "$(lambda cs: cs[: len(cs) // 2 * 2])("
    "(lambda cs: [c for c in cs if c['lesion_present'] and c['malignant_present']])(@train_cases[0]))",
    "run": [
        "$@validate::early_stop.set_trainer(@train::trainer)",
        "$print('BENCH_SAMPLES', len(@train::dataset), flush=True) if medmtl.engines.is_main_process() else None",
        "$@train::trainer.add_event_handler(monai.engines.workflow.Events.EPOCH_COMPLETED, "
        'lambda e: print(f"BENCH_EPOCH rank={medmtl.engines.get_rank()} epoch={e.state.epoch} '
        "seconds={e.state.times['EPOCH_COMPLETED']}\", flush=True))",
        "$@train::trainer.run()",
    ],
}
SINGLE_OVERRIDES: dict[str, Any] = {  # the batches of DDP's sampler, in one process
    "train::sampler": {
        "_target_": "DistributedSampler",
        "dataset": "@train::dataset",
        "num_replicas": 1,
        "rank": 0,
        "even_divisible": True,
        "shuffle": True,
        "seed": "@seed",
    },
    "train::dataloader::sampler": "@train::sampler",
    "train::dataloader::shuffle": False,
}


def run_bundle(mode: str, work: Path, data: Path, args: argparse.Namespace, index: int) -> dict[str, Any]:
    """One training run; returns its epoch times, per-epoch losses and wall time."""
    extra = work / f"bench_{mode}.json"
    extra.write_text(json.dumps({**COMMON_OVERRIDES, **(SINGLE_OVERRIDES if mode == "single" else {})}))
    configs = [CONFIGS / "train.json"] + ([CONFIGS / "multi_gpu_train.json"] if mode == "ddp" else []) + [extra]
    out = work / f"run_{mode}_{index}"
    cmd = [sys.executable]
    if mode == "ddp":
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", "[" + ",".join(f"'{c}'" for c in configs) + "]"]
    per_rank_batch = GLOBAL_BATCH // (args.nproc if mode == "ddp" else 1)
    overrides = {
        "data_spec": SPEC,
        "dataset_dir": data,
        "output_dir": out,
        "epochs": args.epochs,
        "batch_size": per_rank_batch,
        "spatial_size": f"[{args.size},{args.size}]",
        "val_interval": 10**6,  # no validation: training time only
        "validate_data": False,  # the generator's output is valid; start-up is not measured anyway
        "resume": False,
        "seed": 0,
    }
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    threads = 1 if mode == "ddp" else args.nproc
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"[{time.strftime('%X')}] {mode} run {index + 1}: {args.epochs} epochs...", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{mode} run failed (exit {result.returncode}):\n{log[-6000:]}")
    epochs: dict[int, dict[int, float]] = {}
    for rank, epoch, seconds in EPOCH_LINE.findall(log):
        epochs.setdefault(int(epoch), {})[int(rank)] = float(seconds)
    samples = [int(n) for n in SAMPLES_LINE.findall(log)]
    if len(epochs) != args.epochs or not samples:
        raise RuntimeError(f"{mode} run printed {len(epochs)} epoch times, expected {args.epochs}:\n{log[-4000:]}")
    history = json.loads((out / "history.json").read_text())
    return {
        "mode": mode,
        "wall_s": wall,
        "samples": samples[0],
        # the slowest rank sets the pace (the ranks wait for each other at every all-reduce)
        "epoch_s": [max(epochs[e].values()) for e in sorted(epochs)],
        "epoch_s_per_rank": {str(e): epochs[e] for e in sorted(epochs)},
        "losses": [
            {k: v for k, v in record.items() if k == "epoch" or k.startswith(("train_loss", "train_weight"))}
            for record in history
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 px, 40 cases, 2 epochs, 1 round: a smoke check")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run, the first a warm-up (default 7)")
    parser.add_argument("--rounds", type=int, default=None, help="single/DDP run pairs, alternating (default 2)")
    parser.add_argument("--cases", type=int, default=None, help="demo images to generate (default 480)")
    parser.add_argument("--nproc", type=int, default=2, help="DDP processes = threads of the single process")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per run")
    args = parser.parse_args()
    args.epochs = args.epochs or (2 if args.quick else 7)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.cases = args.cases or (40 if args.quick else 480)
    args.size = 32 if args.quick else 64
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is a warm-up")

    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medmtl_ddp_bench_") as tmp:
        work = Path(tmp)
        data = work / "data" / "demo2d"
        generate_demo2d(data, num_cases=args.cases, seed=0)
        for index in range(args.rounds):
            order = ("single", "ddp") if index % 2 == 0 else ("ddp", "single")
            runs += [run_bundle(mode, work, data, args, index) for mode in order]
    elapsed = time.perf_counter() - start

    modes: dict[str, dict[str, Any]] = {}
    for mode in ("single", "ddp"):
        mine = [r for r in runs if r["mode"] == mode]
        timed = [t for r in mine for t in r["epoch_s"][1:]]  # epoch 1 of every run: warm-up
        samples = mine[0]["samples"]
        modes[mode] = {
            "processes": args.nproc if mode == "ddp" else 1,
            "threads_per_process": 1 if mode == "ddp" else args.nproc,
            "batch_per_process": GLOBAL_BATCH // (args.nproc if mode == "ddp" else 1),
            "train_samples": samples,
            "epoch": summary(timed),
            "samples_per_s": samples / statistics.median(timed),
            "wall_s_per_run": [r["wall_s"] for r in mine],
        }
    ratio = modes["ddp"]["samples_per_s"] / modes["single"]["samples_per_s"]

    # equality: the first run of each mode, epoch by epoch
    single, ddp = (next(r for r in runs if r["mode"] == m) for m in ("single", "ddp"))
    keys = sorted({k for rec in single["losses"] for k in rec if k.startswith("train_loss")})
    comparison = []
    for a, b in zip(single["losses"], ddp["losses"], strict=True):
        row = {"epoch": a["epoch"]}
        for key in keys:
            va, vb = a.get(key), b.get(key)
            row[key] = {"single": va, "ddp": vb}
            row[key]["rel_diff"] = abs(va - vb) / max(abs(va), 1e-12) if va is not None and vb is not None else None
        comparison.append(row)
    max_rel = max((row[k]["rel_diff"] or 0.0) for row in comparison for k in keys)

    print_table(
        ["mode", "processes x threads", "batch/process", "samples", "epoch s (median)", "samples/s"],
        [
            [m, f"{v['processes']} x {v['threads_per_process']}", v["batch_per_process"], v["train_samples"]]
            + [v["epoch"]["median_s"], v["samples_per_s"]]
            for m, v in modes.items()
        ],
        f"demo bundle, {args.size} px, global batch {GLOBAL_BATCH}, {args.epochs} epochs x {args.rounds} runs "
        "per mode (first epoch of each run not timed)",
    )
    print(f"DDP / single samples/s: {ratio:.3f} (goal >= 1.1)")
    print_table(
        ["epoch"] + [f"{k} single" for k in keys] + [f"{k} DDP" for k in keys] + ["max rel diff"],
        [
            [row["epoch"]]
            + [row[k]["single"] for k in keys]
            + [row[k]["ddp"] for k in keys]
            + [max((row[k]["rel_diff"] or 0.0) for k in keys)]
            for row in comparison
        ],
        "per-epoch training loss, single process vs DDP (first run of each)",
    )
    print(f"max relative difference of the per-epoch training losses: {max_rel:.3g}")
    print(f"benchmark time {elapsed:.0f} s")
    results = {
        "modes": modes,
        "ratio_ddp_vs_single": {"goal": ">= 1.1", "measured": ratio},
        "loss_comparison": comparison,
        "max_rel_diff_train_loss": max_rel,
        "setup": {
            "configs_single": ["train.json"],
            "configs_ddp": ["train.json", "multi_gpu_train.json"],
            "extra_config": {**COMMON_OVERRIDES, "single process only": SINGLE_OVERRIDES},
            "demo_cases": args.cases,
            "spatial_size": args.size,
            "global_batch": GLOBAL_BATCH,
            "epochs": args.epochs,
            "rounds": args.rounds,
            "backend": "gloo",
        },
        "runs": runs,
    }
    meta = machine(
        quick=args.quick,
        duration_s=elapsed,
        nproc=args.nproc,
        torch_threads="single: OMP_NUM_THREADS=nproc; DDP: OMP_NUM_THREADS=1 per process",
    )
    write_results(NAME, meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
