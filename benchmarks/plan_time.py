"""How long ``medmtl plan`` takes on BUSI: a first run (cold caches) and a second run on unchanged data.

The issue's goal on this project's 2-core machine: <= 60 s for the first run (validation, fingerprint,
duplicate search, trial steps) and <= 10 s for the second (everything from the caches). Each run
is a fresh ``medmtl plan`` process, as a user runs it, so imports count; the first run gets empty
caches (a new plan folder, a new signature cache folder). Both plans must be identical.

``python benchmarks/plan_time.py [--quick] [--time-budget 10m]``; writes
``benchmarks/results/plan_time.json`` (``--quick``: the demo dataset, ``plan_time.quick.json``).
"""

from __future__ import annotations

import argparse
import os
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plan_time_") as scratch:
        work = Path(scratch)
        if args.quick:
            from medmtl.data.demo import generate_demo_data

            generate_demo_data(work / "data", seed=0)
            spec, root, extra = REPO / "data_specs" / "demo.yaml", work / "data" / "demo2d", ["--bundle", "demo"]
        else:
            if missing_data(BUSI):
                return
            spec, root, extra = REPO / "data_specs" / "breast_ultrasound.yaml", BUSI, ["--spec-overrides", SPLIT]
        out = work / "plan" / "plan.yaml"
        first = _plan(spec, root, out, args.time_budget, work / "cache", extra)
        planned = yaml.safe_load(out.read_text())
        second = _plan(spec, root, out, args.time_budget, work / "cache", extra)
        again = yaml.safe_load(out.read_text())
        same = {k: v for k, v in planned.items() if k != "plan"} == {k: v for k, v in again.items() if k != "plan"}
        shown = {k: planned[k] for k in ("spatial_size", "batch_size", "epochs", "backbone") if k in planned}
    rows = [
        ["first run (cold caches)", f"{first:.1f}", "<= 60"],
        ["second run (unchanged data)", f"{second:.1f}", "<= 10"],
    ]
    print_table(["medmtl plan on " + ("demo2d" if args.quick else "BUSI (780 images)"), "seconds", "goal"], rows)
    print(f"plans identical: {same}; planned {shown}")
    results = {"first_s": first, "second_s": second, "identical": same, "planned": shown}
    write_results("plan_time", machine(time_budget=args.time_budget), results, quick=args.quick)


if __name__ == "__main__":
    main()
