"""CPU allocator: glibc's default vs ``tune_host_allocator`` on medmtl's CPU training and inference.

The bundles call :func:`medmtl.engines.tune_host_allocator` on CPU runs (``"tune_host_allocator":
true``; its module docstring says why). This script measures what that buys on three hot paths,
each timed in fresh processes (the tuning is process-wide and cannot be undone), alternating
default and tuned processes over ``--rounds`` rounds:

- **2D training step**: the ultrasound bundle's default network (``unet`` preset, BasicUNet
  32..256, lesion + 3-class diagnosis heads), batch 16 at 128 px, ``MultiTaskLoss`` + ``AdamW``;
- **3D training step**: the brain bundle's ``resunet`` preset (MONAI UNet 16..256), batch 2 at
  96^3;
- **3D sliding-window inference**: ``MultiTaskSlidingWindowInferer`` with that network on a
  181x217x181 volume (the Colin27 size; random values, the time does not depend on them), ROI 96^3,
  ``sw_batch_size`` 2, overlap 0.25, Gaussian.

Each process reports the median time of ``--steps`` calls after warm-up, its peak resident memory
(``ru_maxrss``) and its minor page faults per call (pages the kernel had to map and zero). Run:
``python benchmarks/host_allocator.py [--quick] [--rounds 3] [--steps 5] [--threads 2]``; writes
``benchmarks/results/host_allocator.json`` (``--quick``: small sizes, ``host_allocator.quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _bench import machine, print_table, ratio_spread, spread_text, summary, write_results
from multitask_vs_single import CONFIGS, build_network, make_targets

from medmtl.engines import tune_host_allocator
from medmtl.inference import MultiTaskSlidingWindowInferer
from medmtl.losses import MultiTaskLoss

NAME = "host_allocator"
CASES = ("train_2d", "train_3d", "sliding_window_3d")
TITLES = {
    "train_2d": "2D training step: ultrasound `unet` preset, batch 16, 128 px",
    "train_3d": "3D training step: brain `resunet` preset, batch 2, 96^3",
    "sliding_window_3d": "3D sliding-window inference: brain `resunet` preset, 181x217x181, ROI 96^3",
}
CASES_TO_CONFIG = {"train_2d": "basicunet2d", "train_3d": "resunet3d"}  # multitask_vs_single's configurations
VOLUME_SHAPE, QUICK_VOLUME_SHAPE = (1, 1, 181, 217, 181), (1, 1, 64, 72, 64)
RESULT_PREFIX = "BENCH_ALLOCATOR "


def _training_step(key: str, quick: bool) -> Callable[[], Any]:
    """One optimizer step of ``CONFIGS[key]``'s multi-task network on fixed random tensors."""
    config = CONFIGS[key]
    shape = config.input_shape(quick)
    torch.manual_seed(0)
    network = build_network(config, config.tasks).train()
    loss = MultiTaskLoss(config.tasks, weighting="fixed")
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    image, targets = torch.randn(shape), make_targets(config.tasks, shape, torch.device("cpu"))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(network(image), targets).backward()
        optimizer.step()

    return step


def _sliding_window(quick: bool) -> Callable[[], Any]:
    """Multi-task sliding-window inference of the brain network on one volume."""
    config = CONFIGS["resunet3d"]
    torch.manual_seed(0)
    network = build_network(config, config.tasks).eval()
    roi = 32 if quick else 96
    inferer = MultiTaskSlidingWindowInferer(
        config.tasks, roi_size=(roi,) * 3, sw_batch_size=2, overlap=0.25, mode="gaussian"
    )
    volume = torch.randn(QUICK_VOLUME_SHAPE if quick else VOLUME_SHAPE)

    def infer() -> None:
        with torch.inference_mode():
            inferer(volume, network)

    return infer


def worker(case: str, tuned: bool, steps: int, quick: bool) -> None:
    """Time ``case`` in this process (default or tuned allocator) and print one result line."""
    if tuned and not tune_host_allocator("cpu"):
        raise SystemExit("tune_host_allocator is not available here (not glibc)")
    call = _sliding_window(quick) if case == "sliding_window_3d" else _training_step(CASES_TO_CONFIG[case], quick)
    call()  # warm-up: first-call initialisation, and the heap growing to the step's size
    call()
    times, faults = [], []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"median_s": statistics.median(times), "times_s": times, "faults": statistics.median(faults)}
    print(RESULT_PREFIX + json.dumps({**result, "peak_mib": peak_kib / 1024}), flush=True)


def run_worker(case: str, tuned: bool, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`worker` in a fresh process with ``--threads`` intra-op threads."""
    cmd = [sys.executable, __file__, "--worker", case, "--steps", str(args.steps)]
    cmd += (["--tuned"] if tuned else []) + (["--quick"] if args.quick else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["CUDA_VISIBLE_DEVICES"] = ""
    print(f"[{time.strftime('%X')}] {case}: {'tuned' if tuned else 'default'} allocator...", flush=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{case} worker failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round, 2 steps: a smoke check")
    parser.add_argument("--rounds", type=int, default=None, help="default/tuned process pairs per case (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="timed calls per process (default 5)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="intra-op threads")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per process")
    parser.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.steps = args.steps or (2 if args.quick else 5)
    if args.worker:
        worker(args.worker, args.tuned, args.steps, args.quick)
        return

    start = time.perf_counter()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {case: {"default": [], "tuned": []} for case in args.cases}
    for index in range(args.rounds):
        for case in args.cases:
            order = (False, True) if index % 2 == 0 else (True, False)
            for tuned in order:
                runs[case]["tuned" if tuned else "default"].append(run_worker(case, tuned, args))
    elapsed = time.perf_counter() - start

    results: dict[str, Any] = {}
    for case, by_mode in runs.items():
        row: dict[str, Any] = {"title": TITLES[case]}
        for mode, measured in by_mode.items():
            row[mode] = {
                "time": summary([m["median_s"] for m in measured]),
                "faults_per_call": statistics.median(m["faults"] for m in measured),
                "peak_mib": statistics.median(m["peak_mib"] for m in measured),
                "processes": measured,
            }
        row["speedup"] = row["default"]["time"]["median_s"] / row["tuned"]["time"]["median_s"]  # of the medians
        # per round (one default and one tuned process each; no goal: a measurement)
        row["speedup_spread"] = ratio_spread(
            [m["median_s"] for m in by_mode["default"]], [m["median_s"] for m in by_mode["tuned"]]
        )
        row["peak_ratio"] = row["tuned"]["peak_mib"] / row["default"]["peak_mib"]
        results[case] = row
    print_table(
        [
            "path",
            "default s",
            "tuned s",
            "speed-up (per round)",
            "page faults/call default / tuned",
            "peak MiB default / tuned",
        ],
        [
            [
                r["title"],
                r["default"]["time"]["median_s"],
                r["tuned"]["time"]["median_s"],
                spread_text(r["speedup_spread"]),
                f"{r['default']['faults_per_call']:.0f} / {r['tuned']['faults_per_call']:.0f}",
                f"{r['default']['peak_mib']:.0f} / {r['tuned']['peak_mib']:.0f}",
            ]
            for r in results.values()
        ],
        f"glibc default vs tune_host_allocator, {args.threads} threads, median of {args.rounds} processes x "
        f"{args.steps} calls",
    )
    meta = machine(quick=args.quick, duration_s=elapsed, threads=args.threads, rounds=args.rounds, steps=args.steps)
    write_results(NAME, meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
