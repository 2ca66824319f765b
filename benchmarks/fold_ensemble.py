"""Fold ensemble inference cost: ``FoldEnsemble`` of K folds vs K separate forward passes of one fold.

``medmtl cv`` evaluates the fold ensemble (``medmtl.networks.FoldEnsemble``) inside one bundle
evaluation: every case is read and preprocessed once and the K members run on it, so the cost over
K single-fold passes is only the averaging of the probabilities. Goal: ensemble time <= 1.1x the sum
of K forward passes of one member (same input, same process), per round and as the median of the
rounds, with the interquartile range of the per-round ratios; ``met`` only when the whole range is
at most 1.1 (``_bench.verdict``).

Networks: the 2D ultrasound plan's (``resunet`` 16..256, 160x160, batch 1, lesion + 3-class
diagnosis) and the 3D brain plan's (BasicUNet 8..64, 64x80x64 at 3 mm, brain + tissue + abnormal),
each as K = 5 members with different random weights.

Run: ``python benchmarks/fold_ensemble.py [--quick] [--repeats 7] [--threads 2] [--folds 5]``; prints
a table and writes ``benchmarks/results/fold_ensemble.json`` (``--quick``: 2 repeats, smaller inputs,
into ``fold_ensemble.quick.json``).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from _bench import interleaved, machine, print_table, ratio_spread, spread_text, summary, verdict, write_results

from medmtl.data import Task
from medmtl.networks import FoldEnsemble, MultiTaskNet

NAME = "fold_ensemble"
GOAL = 1.1  # ensemble time / K separate forward passes, at most
CASES: dict[str, dict[str, Any]] = {
    "2D ultrasound (resunet 16..256)": {
        "backbone": "resunet",
        "kwargs": {"spatial_dims": 2, "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)},
        "tasks": [
            Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
            Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"]),
        ],
        "shape": (1, 1, 160, 160),
        "quick_shape": (1, 1, 64, 64),
    },
    "3D brain (BasicUNet 8..64)": {
        "backbone": "unet",
        "kwargs": {"spatial_dims": 3, "features": (8, 8, 16, 32, 64, 8)},
        "tasks": [
            Task(name="brain", kind="segmentation", classes=["background", "brain"]),
            Task(name="tissue", kind="segmentation", classes=["background", "csf", "grey", "white"]),
            Task(name="abnormal", kind="binary"),
        ],
        "shape": (1, 1, 64, 80, 64),
        "quick_shape": (1, 1, 32, 32, 32),
    },
}


def _members(case: dict[str, Any], folds: int) -> list[torch.nn.Module]:
    members = []
    for seed in range(folds):
        torch.manual_seed(seed)
        members.append(MultiTaskNet(case["backbone"], case["tasks"], backbone_kwargs=case["kwargs"]).eval())
    return members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    results: dict[str, Any] = {}
    rows = []
    for name, case in CASES.items():
        members = _members(case, args.folds)
        ensemble = FoldEnsemble(members, case["tasks"]).eval()
        x = torch.rand(
            *(case["quick_shape"] if args.quick else case["shape"]), generator=torch.Generator().manual_seed(0)
        )

        def separate(x: torch.Tensor = x, members: list = members) -> None:
            with torch.no_grad():
                for member in members:
                    member(x)

        def together(x: torch.Tensor = x, ensemble: FoldEnsemble = ensemble) -> None:
            with torch.no_grad():
                ensemble(x)

        times = interleaved({"separate": separate, "ensemble": together}, repeats)
        spread = ratio_spread(times["ensemble"], times["separate"])
        outcome = verdict(spread, GOAL)
        results[name] = {
            "folds": args.folds,
            "input_shape": list(x.shape),
            "separate": summary(times["separate"]),
            "ensemble": summary(times["ensemble"]),
            "ratio": spread,  # per round: median, q1, q3, rounds and the ratios
            "goal": f"<= {GOAL}",
            "verdict": outcome,
        }
        rows.append(
            [
                name,
                args.folds,
                statistics.median(times["separate"]),
                statistics.median(times["ensemble"]),
                spread_text(spread),
                outcome,
            ]
        )
    print_table(
        ["network", "folds", f"{args.folds} forwards (s)", "ensemble (s)", "ratio (per round)", f"<= {GOAL}"],
        rows,
        title=f"fold ensemble vs separate forward passes ({repeats} rounds, {args.threads} threads)",
    )
    write_results(NAME, machine(threads=args.threads, repeats=repeats), results, quick=args.quick)


if __name__ == "__main__":
    main()
