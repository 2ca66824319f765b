"""Start-up: ``medmtl predict`` on one 2D image against a bare script, and ``medmtl --help`` / ``validate``.

Why: on one image the engine run is a fraction of a second; what a user waits for is Python starting
and importing torch, MONAI, ignite and MLflow (``import monai`` loads every MONAI module). Each command
here is a fresh process, timed from start to exit, side by side in interleaved rounds:

* ``bare``: ``benchmarks/_bare_predict.py``: imports torch, builds the run's network, loads
  ``models/best.pt``, one forward pass (the yardstick; it pays ``import monai`` too, the network being
  MONAI's);
* ``predict``: ``medmtl predict -i IMAGE -o OUT -m RUN`` (the bundle's inference in the same process);
* ``predict, bundle in a subprocess``: the same prediction through the library's default runner
  (``predict()`` without ``runner``: ``medmtl run`` in a new Python, as the command did before);
* ``import torch`` and ``import monai`` alone (what every command that touches a network pays);
* ``medmtl --help``; ``medmtl validate`` of the demo data (the warm-up round fills medmtl's caches in a
  folder of this run: image signatures and the per-file validation results, so the timed runs open no
  unchanged file, as a user's second run) and of the spec and case table only (``--no-files
  --no-duplicates``, a split that ignores duplicates: no image is read even with cold caches);
* with ``--before DIR`` (the package of an earlier commit: ``git archive HEAD medmtl | tar -x -C DIR``),
  the same three medmtl commands of that code too, on ``PYTHONPATH``.

Per pair the ratio is taken per round (median, interquartile range, rounds: ``_bench.ratio_spread``), and
the goal counts as met only when the whole interquartile range clears it (``_bench.verdict``). Each
medmtl command is also run with a probe that lists which of monai, monai.handlers, ignite and MLflow it
loaded: once before the warm-up (caches cold: a first ``validate`` opens every file) and once after.

Run: ``python benchmarks/startup.py [--rounds 7] [--run RUN_DIR] [--before DIR] [--quick]``. Without
``--run`` it writes the demo data and trains the demo bundle for one epoch in a temporary folder first
(about 30 s). Prints the table and writes ``benchmarks/results/startup.json`` (``--quick``: 3 rounds,
``startup.quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from _bench import REPO, machine, print_table, ratio_spread, spread_text, verdict, write_results

from medmtl.data.demo import generate_demo2d

PYTHON = sys.executable
HEAVY = ("monai", "monai.handlers", "ignite", "mlflow")
GOAL = 2.0  # predict <= 2x the bare script (issue 23)
LIGHT = ("medmtl --help", "medmtl validate", "medmtl validate --no-files --no-duplicates")

# a medmtl command in this interpreter, then the heavy modules it loaded (one JSON line on stderr)
_PROBE = f"""
import json, sys
sys.argv = ["medmtl", *sys.argv[1:]]
from medmtl.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)
"""
# what the predict command did before it ran the bundle in its own process: predict() with the default runner
_PREDICT_SUBPROCESS = """
import sys
from medmtl.deploy.predict import predict
predict(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True)
"""


def _train_demo(work: Path, env: Mapping[str, str]) -> Path:
    """The demo bundle trained for one epoch on the demo data in ``work``: the run folder."""
    run = work / "run"
    cmd = [PYTHON, "-m", "medmtl.cli", "run", "demo", "train", "--epochs", "1", "--val_interval", "1"]
    cmd += ["--output_dir", str(run), "--data_spec", str(REPO / "data_specs" / "demo.yaml")]
    cmd += ["--dataset_dir", str(work / "demo2d")]
    print(f"training the demo bundle for one epoch into {run} ...", flush=True)
    subprocess.run(cmd, cwd=work, env=dict(env), check=True, capture_output=True)
    return run


def _commands(work: Path, run: Path, image: Path, before: bool) -> dict[str, list[str]]:
    spec = str(REPO / "data_specs" / "demo.yaml")
    table_only = work / "demo_ignore_duplicates.yaml"  # a split that reads no image (see the docstring)
    data = yaml.safe_load(Path(spec).read_text())
    data["splits"]["duplicates"] = "ignore"
    table_only.write_text(yaml.safe_dump(data))
    medmtl = [PYTHON, "-m", "medmtl.cli"]
    root = ["--root", str(work / "demo2d")]
    commands = {
        "bare script": [PYTHON, str(REPO / "benchmarks" / "_bare_predict.py"), str(run), str(image)],
        "medmtl predict": [*medmtl, "predict", "-i", str(image), "-o", str(work / "out"), "-m", str(run), "--overwrite"],
        "predict, bundle in a subprocess": [PYTHON, "-c", _PREDICT_SUBPROCESS, str(image), str(work / "out_sub"), str(run)],
        "import torch": [PYTHON, "-c", "import torch"],
        "import monai": [PYTHON, "-c", "import monai"],
        "medmtl --help": [*medmtl, "--help"],
        "medmtl validate": [*medmtl, "validate", spec, *root, "--duplicates-csv", str(work / "duplicates.csv")],
        "medmtl validate --no-files --no-duplicates": [*medmtl, "validate", str(table_only), *root, "--no-files", "--no-duplicates"],
    }  # fmt: skip
    if before:  # run with the earlier package on PYTHONPATH (see _env)
        commands.update({f"before: {name}": commands[name] for name in LIGHT})
    return commands


def _env(name: str, env: Mapping[str, str], before: Path | None) -> dict[str, str]:
    """The environment of command ``name``: the earlier package first on the path for the ``before:`` ones."""
    if not name.startswith("before: ") or before is None:
        return dict(env)
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(before), env.get("PYTHONPATH", "")) if p)}


def _wall(cmd: Sequence[str], cwd: Path, env: Mapping[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(list(cmd), cwd=cwd, env=dict(env), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def _loaded(cmd: Sequence[str], cwd: Path, env: Mapping[str, str]) -> list[str] | None:
    """The heavy modules a medmtl command loads (``None`` for the other commands)."""
    if cmd[1:3] != ["-m", "medmtl.cli"]:
        return None
    result = subprocess.run([PYTHON, "-c", _PROBE, *cmd[3:]], cwd=cwd, env=dict(env), capture_output=True, text=True)
    return json.loads(result.stderr.strip().splitlines()[-1])


def quartiles(values: Sequence[float]) -> dict[str, float]:
    """Median and interquartile range of wall times (inclusive quartiles, as ``_bench.ratio_spread``)."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (each runs every command once)")
    parser.add_argument("--run", type=Path, default=None, help="a trained 2D demo run (default: train one)")
    parser.add_argument("--before", type=Path, default=None, help="folder holding an earlier medmtl package")
    parser.add_argument("--quick", action="store_true", help="3 rounds, written to startup.quick.json")
    args = parser.parse_args()
    before = args.before.resolve() if args.before else None
    if before is not None and not (before / "medmtl" / "cli.py").is_file():
        parser.error(f"--before {before}: no medmtl/cli.py inside (git archive HEAD medmtl | tar -x -C DIR)")
    rounds = 3 if args.quick else args.rounds
    meta = machine(  # the load average as the script starts
        rounds=rounds,
        run=str(args.run) if args.run else "demo bundle, 1 epoch, trained by this script",
        before=str(before) if before else None,
    )
    with tempfile.TemporaryDirectory(prefix="medmtl_startup_") as tmp:
        work = Path(tmp)
        env = {**os.environ, "MEDMTL_CACHE_DIR": str(work / "cache")}
        generate_demo2d(work / "demo2d", seed=0)
        run = args.run.resolve() if args.run else _train_demo(work, env)
        image = work / "one" / "case_000.png"
        image.parent.mkdir()
        shutil.copy(work / "demo2d" / "images" / "case_000.png", image)
        commands = _commands(work, run, image, before is not None)
        envs = {name: _env(name, env, before) for name in commands}
        first = {name: _loaded(cmd, work, envs[name]) for name, cmd in commands.items()}  # caches cold
        for name, cmd in commands.items():  # warm-up: file cache, bytecode, image signatures, validation results
            _wall(cmd, work, envs[name])
        loaded = {name: _loaded(cmd, work, envs[name]) for name, cmd in commands.items()}  # as the timed runs
        times: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                times[name].append(_wall(commands[name], work, envs[name]))
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in names), flush=True)

    pairs = {
        "medmtl predict / bare script": ("medmtl predict", "bare script"),
        "predict, bundle in a subprocess / bare script": ("predict, bundle in a subprocess", "bare script"),
        "medmtl predict / predict, bundle in a subprocess": ("medmtl predict", "predict, bundle in a subprocess"),
    }
    if before is not None:
        pairs.update({f"{name} / before": (name, f"before: {name}") for name in LIGHT})
    ratios = {name: ratio_spread(times[a], times[b]) for name, (a, b) in pairs.items()}
    goal = verdict(ratios["medmtl predict / bare script"], GOAL)

    def modules(found: list[str] | None) -> str:
        return "-" if found is None else ", ".join(found) or "none"

    rows = [
        [
            name,
            quartiles(times[name])["median"],
            quartiles(times[name])["iqr"],
            modules(first[name]),
            modules(loaded[name]),
        ]
        for name in commands
    ]
    headers = ["command", "median s", "IQR s", "loads (first run)", "loads (timed runs)"]
    print_table(headers, rows, title=f"wall time of a fresh process, {rounds} rounds")
    print_table(["ratio (per round)", "median (IQR)"], [[name, spread_text(r)] for name, r in ratios.items()])
    print(f"\ngoal medmtl predict <= {GOAL}x the bare script: {goal}")
    results: dict[str, Any] = {
        "commands": {name: " ".join(cmd) for name, cmd in commands.items()},
        "times": {name: {**quartiles(t), "times_s": t} for name, t in times.items()},
        "loads_first_run": first,
        "loads_timed_runs": loaded,
        "ratios": ratios,
        "goal": {"ratio": GOAL, "verdict": goal},
    }
    write_results("startup", meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
