"""Compute efficiency: MONAI engines with medmtl's multi-task parts vs a bare PyTorch loop.

medmtl trains with MONAI's ``SupervisedTrainer`` unchanged, made multi-task by
``MultiTaskPrepareBatch`` (batch -> ``(image, {task: target, <task>_present: flags})``),
``MultiTaskLoss`` (masked per-task losses, here with learned uncertainty weighting) and
``MultiTaskLossHandler`` (per-task logging, epoch hooks); it evaluates with ``SupervisedEvaluator``
and ``FlattenTaskOutputsd``. This script measures what that machinery costs against the loop a
user would write by hand, on the same network, loss and tensors:

- **training**: samples/s of ``SupervisedTrainer`` (+ a ``monai.data.DataLoader`` over in-memory
  sample dicts, collation included) vs a bare ``zero_grad / loss(net(x), targets).backward() / step``
  over the same tensors pre-batched. The engines run with the bundles' settings
  (``non_blocking=True`` host-to-device copies); one more row gives the trainer with MONAI's
  default blocking copies (each one waits for the GPU to drain) and one with ``decollate=False``
  (MONAI decollates every batch and output by default; reading a GPU scalar per sample waits too);
- **inference**: ``SupervisedEvaluator`` with ``EvalModePerRun`` and ``FlattenTaskOutputsd`` (the
  bundles' evaluator handlers) vs ``with torch.no_grad(): net(x)``; one more row gives MONAI's default
  per-batch ``eval_mode`` (``network.eval()`` and ``.train()`` walk every module around each batch).

Network: 2D ``MultiTaskNet`` (BasicUNet features (16, 16, 32, 64, 128, 16)), tasks: lesion
(segmentation, 2 classes) + diagnosis (multiclass, 3 classes), 128 px, batch 16, random tensors.
Goal: engine / bare throughput >= 0.9 for both. One epoch of each candidate per round, interleaved;
the ratios are per round (median and interquartile range, ``_bench.ratio_spread``) and the goal is
``met`` only when the whole range clears it (``_bench.verdict``).
On CPU the allocator is tuned as the bundles tune it (``tune_host_allocator``), for both candidates.

On CUDA (``--device cuda``, the default when a GPU is visible) every candidate runs in three
settings, each with its own network, loss and optimizer: fp32, AMP (``torch.autocast`` + GradScaler;
the engines' ``amp=True``) and AMP with a channels-last network. Each row gives its throughput
against the bare loop of the same setting (the pipeline's overhead) and against the first
setting's bare loop (what AMP and channels-last gain). Timings end with ``torch.cuda.synchronize``;
results go to ``compute_efficiency_cuda.json``, so the CPU figures stay.

Run: ``python benchmarks/compute_efficiency.py [--quick] [--repeats 5] [--threads 2] [--device cuda]``; prints a
table and writes ``benchmarks/results/compute_efficiency.json`` (``--quick``: 2 batches, 2 repeats,
``compute_efficiency.quick.json``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _bench import interleaved, machine, print_table, ratio_spread, spread_text, summary, verdict, write_results
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.utils import set_determinism

from medmtl.data import Task
from medmtl.engines import (
    EvalModePerRun,
    FlattenTaskOutputsd,
    MultiTaskLossHandler,
    MultiTaskPrepareBatch,
    tune_host_allocator,
)
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskNet

NAME = "compute_efficiency"
TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"]),
]
FEATURES = (16, 16, 32, 64, 128, 16)


def samples(n: int, size: int) -> list[dict[str, torch.Tensor]]:
    """``n`` sample dicts as medmtl's transforms end them (``EnsureTaskLabelsd``'s shapes and dtypes)."""
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(1, size, size, generator=g),
            "lesion": (torch.rand(1, size, size, generator=g) > 0.8).float(),
            "lesion_present": torch.tensor(True),
            "diagnosis": torch.randint(0, 3, (), generator=g),
            "diagnosis_present": torch.tensor(True),
        }
        for _ in range(n)
    ]


def batches(data: list[dict[str, torch.Tensor]], batch: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The same samples stacked into ``(image, targets)`` batches once, for the bare loops."""
    out = []
    for start in range(0, len(data), batch):
        chunk = data[start : start + batch]
        stacked = {k: torch.stack([d[k] for d in chunk]) for k in chunk[0]}
        out.append((stacked.pop("image"), stacked))
    return out


SETTINGS: dict[str, dict[str, bool]] = {  # name -> autocast (AMP) and channels-last memory format
    "fp32": {"amp": False, "channels_last": False},
    "amp": {"amp": True, "channels_last": False},
    "amp+channels_last": {"amp": True, "channels_last": True},
}


ROLES = ("bare", "bundles", "variant")  # the order of each candidates dict of candidates_for


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` followed by a CUDA synchronize, so a timed call includes the kernels it queued."""
    if device.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def candidates_for(
    setting: str, device: torch.device, data: list[dict[str, torch.Tensor]], batch: int, variant_rows: bool
) -> tuple[dict[str, Callable[[], None]], dict[str, Callable[[], None]]]:
    """Training and inference candidates of one setting, each with its own network, loss and optimizer.

    Each dict lists the bare loop first, then the engine as the bundles configure it, then the
    variant rows (``variant_rows``), which explain the gap and carry no goal.

    The bare loops get the batches already on ``device`` (the floor); the engines get the sample
    dicts through a ``monai.data.DataLoader`` and ``MultiTaskPrepareBatch`` (collation and the host
    to device copy are part of the pipeline's cost).
    """
    amp, channels_last = SETTINGS[setting]["amp"], SETTINGS[setting]["channels_last"]
    torch.manual_seed(0)
    network = MultiTaskNet("unet", TASKS, backbone_kwargs={"spatial_dims": 2, "features": FEATURES}).to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    loss = MultiTaskLoss(TASKS, weighting="uncertainty").to(device)
    optimizer = torch.optim.AdamW(loss.param_groups(network.parameters(), 1e-4), lr=1e-3)
    prepare = MultiTaskPrepareBatch(TASKS)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    pre_batched = [
        (x.to(device).contiguous(memory_format=memory_format), {k: v.to(device) for k, v in t.items()})
        for x, t in batches(data, batch)
    ]
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    def loader() -> DataLoader:
        return DataLoader(data, batch_size=batch, shuffle=False, num_workers=0)  # as the bundles: no pinning

    def trainer(non_blocking: bool = True, decollate: bool = True) -> SupervisedTrainer:
        return SupervisedTrainer(
            device=device,
            max_epochs=1,
            train_data_loader=loader(),
            network=network,
            optimizer=optimizer,
            loss_function=loss,
            prepare_batch=prepare,
            train_handlers=[MultiTaskLossHandler(loss, network)],
            decollate=decollate,
            non_blocking=non_blocking,
            amp=amp,
        )

    def evaluator(eval_mode_per_run: bool = True) -> SupervisedEvaluator:
        mode_handler = [EvalModePerRun()] if eval_mode_per_run else []  # the bundles attach it
        return SupervisedEvaluator(
            device=device,
            val_data_loader=loader(),
            network=network,
            prepare_batch=prepare,
            val_handlers=[*mode_handler, FlattenTaskOutputsd(TASKS)],
            non_blocking=True,
            amp=amp,
        )

    def bare_train() -> None:
        network.train()
        for x, targets in pre_batched:
            optimizer.zero_grad()
            with torch.autocast(device.type, enabled=amp):
                value = loss(network(x), targets)
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()

    def bare_infer() -> None:
        network.eval()
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            for x, _ in pre_batched:
                network(x)

    tag = "" if setting == "fp32" and device.type == "cpu" else f" [{setting}]"
    training = {f"bare loop{tag}": bare_train, f"SupervisedTrainer + medmtl{tag}": trainer().run}
    if variant_rows:
        training[f"SupervisedTrainer + medmtl, blocking copies{tag}"] = trainer(non_blocking=False).run
        training[f"SupervisedTrainer + medmtl, decollate=False{tag}"] = trainer(decollate=False).run
    inference = {
        f"bare no_grad forward{tag}": bare_infer,
        f"SupervisedEvaluator + FlattenTaskOutputsd{tag}": evaluator().run,
    }
    if variant_rows:
        inference[f"SupervisedEvaluator + FlattenTaskOutputsd, MONAI's per-batch eval_mode{tag}"] = evaluator(
            eval_mode_per_run=False
        ).run
    return (
        {k: synced(v, device) for k, v in training.items()},
        {k: synced(v, device) for k, v in inference.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 batches of 64 px, 2 repeats: a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batches", type=int, default=None, help="batches per epoch (default 8 on CPU, 64 on CUDA; --quick: 2)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(SETTINGS),
        default=None,
        help="precision / memory format (default: fp32 on CPU, all three on CUDA)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    args.repeats = args.repeats or (2 if args.quick else 5)
    n_batches = args.batches or (2 if args.quick else 64 if device.type == "cuda" else 8)
    settings = args.settings or (list(SETTINGS) if device.type == "cuda" else ["fp32"])
    size, batch = (64 if args.quick else 128), 16
    torch.set_num_threads(args.threads)
    tune_host_allocator(device)  # as the bundles do on CPU (both candidates run in this process)
    set_determinism(seed=0)
    logging.getLogger("ignite").setLevel(logging.WARNING)  # engines log every run start at INFO
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # what a GPU user turns on for fixed shapes

    data = samples(n_batches * batch, size)
    training: dict[str, Callable[[], None]] = {}
    inference: dict[str, Callable[[], None]] = {}
    pairs: list[tuple[str, str, str, str, str]] = []  # (kind, candidate, its bare loop, setting, role)
    for i, setting in enumerate(settings):
        train_s, infer_s = candidates_for(setting, device, data, batch, variant_rows=i == 0)
        training.update(train_s)
        inference.update(infer_s)
        for kind, candidates in (("training", train_s), ("inference", infer_s)):
            names = list(candidates)  # the bare loop, the bundles' setting, then the variant rows
            pairs += [(kind, name, names[0], setting, ROLES[min(j, 2)]) for j, name in enumerate(names)]
    start = time.perf_counter()
    print(
        f"[{time.strftime('%X')}] timing {n_batches} batches of {batch} at {size} px per epoch on {device} "
        f"({', '.join(settings)})...",
        flush=True,
    )
    times = interleaved({**training, **inference}, args.repeats)
    elapsed = time.perf_counter() - start

    n = len(data)
    results: dict[str, Any] = {
        "samples_per_epoch": n,
        "batch_size": batch,
        "spatial_size": size,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "rows": [],
    }
    first_bare: dict[str, float] = {}  # per kind, the bare loop of the first setting (AMP/channels-last gains)
    for kind, _, bare, _, _ in pairs:
        first_bare.setdefault(kind, statistics.median(times[bare]))
    goals: dict[str, dict[str, Any]] = {}
    for kind, name, bare, setting, role in pairs:
        median = statistics.median(times[name])
        row = {
            "kind": kind,
            "method": name,
            "setting": setting,
            "role": role,
            "epoch": summary(times[name]),
            "samples_per_s": n / median,
            "throughput_vs_bare": statistics.median(times[bare]) / median,  # ratio of the medians
            "throughput_vs_bare_spread": ratio_spread(times[bare], times[name]),  # per round
            "speedup_vs_first_bare": first_bare[kind] / median,  # AMP / channels-last gains on CUDA
        }
        results["rows"].append(row)
        if role == "bundles":  # the variant rows explain; the goal is the bundles' setting
            key = f"{kind}_engine_vs_bare" + ("" if len(settings) == 1 else f"[{setting}]")
            spread = row["throughput_vs_bare_spread"]
            goals[key] = {
                "goal": ">= 0.9",
                "measured": spread["median"],
                "spread": spread,
                "verdict": verdict(spread, 0.9, at_most=False),
            }
    results["goals"] = goals
    print_table(
        [
            "kind",
            "method",
            "epoch s (median)",
            "samples/s",
            "x bare (per-round median, IQR)",
            f"x bare [{settings[0]}]",
        ],
        [
            [
                r["kind"],
                r["method"],
                r["epoch"]["median_s"],
                r["samples_per_s"],
                spread_text(r["throughput_vs_bare_spread"]),
                r["speedup_vs_first_bare"],
            ]
            for r in results["rows"]
        ],
        f"2D MultiTaskNet unet {FEATURES}, lesion (seg) + diagnosis (multiclass), uncertainty weighting, "
        f"{size} px, batch {batch}, {n} samples per epoch, {results['gpu'] or device}",
    )
    print(
        "goals (engine / bare throughput): "
        + ", ".join(
            f"{k} {spread_text(v['spread'])} ({v['goal']}): {v['verdict']}" for k, v in results["goals"].items()
        )
    )
    print(f"benchmark time {elapsed:.0f} s")
    results["network"] = {"backbone": "unet", "features": list(FEATURES), "tasks": [t.name for t in TASKS]}
    meta = machine(threads=args.threads, repeats=args.repeats, quick=args.quick, duration_s=elapsed)
    write_results(NAME if device.type == "cpu" else f"{NAME}_cuda", meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
