"""Two sets of evaluated runs on one test split, compared image by image, split by near-copies in training.

Why: seed-to-seed spread hides small differences between two settings, and on data with duplicates a
test image that has a near-copy in training scores what the model memorised. Averaging each image's
metric over the seeds of a setting, pairing the images of the two settings and bootstrapping the mean
difference over images gives a CI for the change; splitting the images by ``duplicates.csv`` (written
by ``medmtl plan`` / ``medmtl validate``) shows whether the change lies on the images the model has
nearly seen. Used for the "Segmentation head width" figures in benchmarks/README.md.

``python benchmarks/paired_runs.py --a RUN [RUN ...] --b RUN [RUN ...] [--duplicates duplicates.csv]
[--task lesion] [--metric dice] [--name paired_runs]``; every RUN is a training ``--output_dir`` evaluated with
``medmtl run NAME evaluate`` (its ``eval/predictions.npz`` and ``splits.json``). Writes
``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from _bench import machine, print_table, write_results
from scipy.stats import bootstrap


def per_image(runs: Sequence[Path], task: str, metric: str) -> dict[str, float]:
    """Each test image's metric averaged over ``runs`` (images without a value in any run left out)."""
    values: dict[str, list[float]] = {}
    for run in runs:
        with np.load(run / "eval" / "predictions.npz") as saved:
            ids = [str(i) for i in saved[f"{task}.case_ids"]]
            scores = saved[f"{task}.metric.{metric}"].reshape(len(ids), -1)[:, 0]
        for case, score in zip(ids, scores, strict=True):
            values.setdefault(case, []).append(float(score))
    return {case: float(np.mean(v)) for case, v in values.items() if len(v) == len(runs) and not np.isnan(v).any()}


def seen_in_training(duplicates: Path, train: set[str], test: set[str]) -> set[str]:
    """Test cases with a duplicate (exact or near) among the training cases."""
    found = set()
    with open(duplicates, newline="") as handle:
        for row in csv.DictReader(handle):
            for mine, other in ((row["case_a"], row["case_b"]), (row["case_b"], row["case_a"])):
                if mine in test and other in train:
                    found.add(mine)
    return found


def paired(a: dict[str, float], b: dict[str, float], cases: Sequence[str]) -> dict[str, float]:
    """Mean of ``a`` and ``b`` over ``cases`` and of their difference, with a 95 % bootstrap CI over images."""
    diff = np.array([b[c] - a[c] for c in cases])
    ci = bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=5000, random_state=0).confidence_interval
    return {
        "images": len(cases),
        "a": float(np.mean([a[c] for c in cases])),
        "b": float(np.mean([b[c] for c in cases])),
        "b_minus_a": float(diff.mean()),
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", type=Path, required=True, help="evaluated runs of setting A (seeds)")
    parser.add_argument("--b", nargs="+", type=Path, required=True, help="evaluated runs of setting B (seeds)")
    parser.add_argument("--duplicates", type=Path, help="duplicates.csv of the dataset (medmtl plan / validate)")
    parser.add_argument("--task", default="lesion")
    parser.add_argument("--metric", default="dice")
    parser.add_argument("--name", default="paired_runs", help="results file: benchmarks/results/NAME.json")
    args = parser.parse_args(argv)

    splits = [json.loads((run / "splits.json").read_text()) for run in (*args.a, *args.b)]
    if any(s.get("test") != splits[0].get("test") for s in splits):
        raise SystemExit("the runs were tested on different images: compare runs of one split only")
    a, b = per_image(args.a, args.task, args.metric), per_image(args.b, args.task, args.metric)
    cases = sorted(set(a) & set(b))
    groups = {"all test images": cases}
    if args.duplicates is not None:
        seen = seen_in_training(args.duplicates, set(splits[0].get("train", [])), set(splits[0]["test"]))
        groups["with a near-copy in training"] = [c for c in cases if c in seen]
        groups["without"] = [c for c in cases if c not in seen]
    results = {name: paired(a, b, chosen) for name, chosen in groups.items() if chosen}
    print_table(
        ["test images", "n", f"A {args.metric}", f"B {args.metric}", "B - A (95 % CI over images)"],
        [
            [
                name,
                r["images"],
                f"{r['a']:.3f}",
                f"{r['b']:.3f}",
                f"{r['b_minus_a']:+.4f} ({r['ci_low']:+.4f} to {r['ci_high']:+.4f})",
            ]
            for name, r in results.items()
        ],
        title=f"{args.task} {args.metric}, each image averaged over {len(args.a)} / {len(args.b)} run(s)",
    )
    meta = machine(a=[str(r) for r in args.a], b=[str(r) for r in args.b], duplicates=str(args.duplicates))
    write_results(args.name, meta, results)


if __name__ == "__main__":
    main()
