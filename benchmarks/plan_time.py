"""How long ``medmtl plan`` takes on BUSI: a first run (cold caches) and a second run on unchanged data.

The issue's goal on this project's 2-core machine: <= 60 s for the first run (validation, fingerprint,
duplicate search, trial steps) and <= 10 s for the second (everything from the caches). Each run
is a fresh ``medmtl plan`` process, as a user runs it, so imports count; the first run gets empty
caches (a new plan folder, a new signature cache folder). Both plans must be identical.

``python benchmarks/plan_time.py [--quick] [--time-budget 10m] [--rounds N]`` (N cold and cached pairs, the
median reported: the machine's timing varies by several seconds between runs); writes
``benchmarks/results/plan_time.json`` (``--quick``: the demo dataset, ``plan_time.quick.json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _bench import REPO, SHARED_DATA, machine, missing_data, print_table, write_results

BUSI = SHARED_DATA / "busi" / "Dataset_BUSI_with_GT"
SPLIT = (
    "{'splits': {'method': 'fractions', 'fractions': {'train': 0.8, 'test': 0.2}, 'seed': 0, 'stratify': 'diagnosis'}}"
)


def _plan(spec: Path, root: Path, out: Path, budget: str, cache_dir: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "medmtl.cli", "plan", str(spec), "--root", str(root), "-o", str(out)]
    cmd += ["--time-budget", budget, "--no-progress", *extra]
    env = {**os.environ, "MEDMTL_CACHE_DIR": str(cache_dir)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the generated demo dataset instead of BUSI")
    parser.add_argument("--time-budget", default="10m")
    parser.add_argument("--rounds", type=int, default=1, help="cold and cached plans per round (median shown)")
    args = parser.parse_args()
    rounds = [_round(args) for _ in range(max(1, args.rounds))]
    if rounds[0] is None:
        return
    first = statistics.median(r["first_s"] for r in rounds)
    second = statistics.median(r["second_s"] for r in rounds)
    same = all(r["identical"] for r in rounds)
    shown = [r["planned"] for r in rounds]
    rows = [
        ["first run (cold caches)", f"{first:.1f}", " ".join(f"{r['first_s']:.1f}" for r in rounds), "<= 60"],
        ["second run (unchanged data)", f"{second:.1f}", " ".join(f"{r['second_s']:.1f}" for r in rounds), "<= 10"],
    ]
    title = "medmtl plan on " + ("demo2d" if args.quick else "BUSI (780 images)")
    print_table([title, "median s", "each round", "goal"], rows)
    print(f"cold and cached plans identical in every round: {same}; planned {shown}")
    results = {"first_s": first, "second_s": second, "identical": same, "planned": shown, "rounds": rounds}
    write_results("plan_time", machine(time_budget=args.time_budget), results, quick=args.quick)


def _round(args: argparse.Namespace) -> dict | None:
    """One cold plan in fresh folders, then the same plan again on unchanged data."""
    with tempfile.TemporaryDirectory(prefix="plan_time_") as scratch:
        work = Path(scratch)
        if args.quick:
            from medmtl.data.demo import generate_demo_data

            generate_demo_data(work / "data", seed=0)
            spec, root, extra = REPO / "data_specs" / "demo.yaml", work / "data" / "demo2d", ["--bundle", "demo"]
        else:
            if missing_data(BUSI):
                return None
            spec, root, extra = REPO / "data_specs" / "breast_ultrasound.yaml", BUSI, ["--spec-overrides", SPLIT]
        out = work / "plan" / "plan.yaml"
        first = _plan(spec, root, out, args.time_budget, work / "cache", extra)
        planned = yaml.safe_load(out.read_text())
        second = _plan(spec, root, out, args.time_budget, work / "cache", extra)
        again = yaml.safe_load(out.read_text())
        same = {k: v for k, v in planned.items() if k != "plan"} == {k: v for k, v in again.items() if k != "plan"}
        shown = {k: planned[k] for k in ("spatial_size", "batch_size", "epochs", "amp") if k in planned}
    return {"first_s": first, "second_s": second, "identical": same, "planned": shown}


if __name__ == "__main__":
    main()
