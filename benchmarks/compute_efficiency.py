"""Compute efficiency: MONAI engines with medmtl's multi-task parts vs a bare PyTorch loop.

medmtl trains with MONAI's ``SupervisedTrainer`` unchanged, made multi-task by
``MultiTaskPrepareBatch`` (batch -> ``(image, {task: target, <task>_present: flags})``),
``MultiTaskLoss`` (masked per-task losses, here with learned uncertainty weighting) and
``MultiTaskLossHandler`` (per-task logging, epoch hooks); it evaluates with ``SupervisedEvaluator``
and ``FlattenTaskOutputsd``. This script measures what that machinery costs against the loop a
user would write by hand, on the same network, loss and tensors:

- **training**: samples/s of ``SupervisedTrainer`` (+ a ``monai.data.DataLoader`` over in-memory
  sample dicts, collation included) vs a bare ``zero_grad / loss(net(x), targets).backward() / step``
  over the same tensors pre-batched; also the trainer with ``decollate=False`` (MONAI decollates
  every batch and output by default) to show where a gap comes from;
- **inference**: ``SupervisedEvaluator`` with ``FlattenTaskOutputsd`` vs ``with torch.no_grad(): net(x)``.

Network: 2D ``MultiTaskNet`` (BasicUNet features (16, 16, 32, 64, 128, 16)), tasks: lesion
(segmentation, 2 classes) + diagnosis (multiclass, 3 classes), 128 px, batch 16, random tensors.
Goal: engine / bare throughput >= 0.9 for both. One epoch of each candidate per round, interleaved.

Run: ``python benchmarks/compute_efficiency.py [--quick] [--repeats 5] [--threads 2]``; prints a
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
from _bench import interleaved, machine, print_table, summary, write_results
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.utils import set_determinism

from medmtl.data import Task
from medmtl.engines import FlattenTaskOutputsd, MultiTaskLossHandler, MultiTaskPrepareBatch
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 batches of 64 px, 2 repeats: a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=None, help="batches per epoch (default 8; --quick: 2)")
    args = parser.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 5)
    n_batches = args.batches or (2 if args.quick else 8)
    size, batch = (64 if args.quick else 128), 16
    torch.set_num_threads(args.threads)
    set_determinism(seed=0)
    logging.getLogger("ignite").setLevel(logging.WARNING)  # engines log every run start at INFO

    device = torch.device("cpu")
    data = samples(n_batches * batch, size)
    pre_batched = batches(data, batch)
    network = MultiTaskNet("unet", TASKS, backbone_kwargs={"spatial_dims": 2, "features": FEATURES})
    loss = MultiTaskLoss(TASKS, weighting="uncertainty")
    optimizer = torch.optim.AdamW(loss.param_groups(network.parameters(), 1e-4), lr=1e-3)
    prepare = MultiTaskPrepareBatch(TASKS)

    def loader() -> DataLoader:
        return DataLoader(data, batch_size=batch, shuffle=False, num_workers=0)

    def trainer(decollate: bool) -> SupervisedTrainer:
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
        )

    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=loader(),
        network=network,
        prepare_batch=prepare,
        val_handlers=[FlattenTaskOutputsd(TASKS)],
    )

    def bare_train() -> None:
        network.train()
        for x, targets in pre_batched:
            optimizer.zero_grad()
            loss(network(x), targets).backward()
            optimizer.step()

    def bare_infer() -> None:
        network.eval()
        with torch.no_grad():
            for x, _ in pre_batched:
                network(x)

    def run(engine: Any) -> Callable[[], None]:
        return engine.run

    training = {
        "bare loop": bare_train,
        "SupervisedTrainer + medmtl": run(trainer(decollate=True)),
        "SupervisedTrainer + medmtl, decollate=False": run(trainer(decollate=False)),
    }
    inference = {"bare no_grad forward": bare_infer, "SupervisedEvaluator + FlattenTaskOutputsd": run(evaluator)}
    start = time.perf_counter()
    print(f"[{time.strftime('%X')}] timing {n_batches} batches of {batch} at {size} px per epoch...", flush=True)
    times = interleaved({**{f"train: {k}": v for k, v in training.items()}, **inference}, args.repeats)
    elapsed = time.perf_counter() - start

    n = len(data)
    results: dict[str, Any] = {"samples_per_epoch": n, "batch_size": batch, "spatial_size": size, "rows": []}
    for kind, names, bare in (
        ("training", [f"train: {k}" for k in training], "train: bare loop"),
        ("inference", list(inference), "bare no_grad forward"),
    ):
        ref = statistics.median(times[bare])
        for name in names:
            median = statistics.median(times[name])
            results["rows"].append(
                {
                    "kind": kind,
                    "method": name.removeprefix("train: "),
                    "epoch": summary(times[name]),
                    "samples_per_s": n / median,
                    "throughput_vs_bare": ref / median,
                }
            )
    by_name = {(r["kind"], r["method"]): r for r in results["rows"]}
    results["goals"] = {
        "training_engine_vs_bare": {
            "goal": ">= 0.9",
            "measured": by_name[("training", "SupervisedTrainer + medmtl")]["throughput_vs_bare"],
        },
        "inference_engine_vs_bare": {
            "goal": ">= 0.9",
            "measured": by_name[("inference", "SupervisedEvaluator + FlattenTaskOutputsd")]["throughput_vs_bare"],
        },
    }
    print_table(
        ["kind", "method", "epoch s (median)", "samples/s", "x bare"],
        [
            [r["kind"], r["method"], r["epoch"]["median_s"], r["samples_per_s"], r["throughput_vs_bare"]]
            for r in results["rows"]
        ],
        f"2D MultiTaskNet unet {FEATURES}, lesion (seg) + diagnosis (multiclass), uncertainty weighting, "
        f"{size} px, batch {batch}, {n} samples per epoch",
    )
    print(
        "goals (engine / bare throughput): "
        + ", ".join(f"{k} {v['measured']:.3f} ({v['goal']})" for k, v in results["goals"].items())
    )
    print(f"benchmark time {elapsed:.0f} s")
    results["network"] = {"backbone": "unet", "features": list(FEATURES), "tasks": [t.name for t in TASKS]}
    meta = machine(threads=args.threads, repeats=args.repeats, quick=args.quick, duration_s=elapsed)
    write_results(NAME, meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
