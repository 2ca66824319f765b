"""DDP scaling on CPU: the demo bundle on 2 processes (torchrun, gloo) vs 1 process with 2 threads.

``multi_gpu_train.json`` is how a user scales out: the same training config run by ``torchrun``.
On a CPU machine the question is whether 2 single-threaded processes train faster than 1 process
using both cores through intra-op threads, and whether they train *the same model*. This script
generates demo data (``medmtl.data.demo.generate_demo2d``) in a temporary folder, then runs the demo
bundle's ``train.json`` the way a user does (``python -m monai.bundle run``) with the ultrasound
bundle's default network and batch (BasicUNet 32..256, ``--features``; 128 px, ``--size``; global
batch 16, ``--global-batch``), alternating:

- **single**: 1 process, ``OMP_NUM_THREADS=2``, batch 16;
- **DDP**: ``torchrun --standalone --nproc_per_node=2`` with ``multi_gpu_train.json``,
  ``OMP_NUM_THREADS=1``, batch 8 per rank (the same global batch, the same 2 cores).

Speed: the training time of each epoch as Ignite measures it (``state.times['EPOCH_COMPLETED']``:
the epoch's iterations, without start-up, caching, validation or checkpoints; printed by a small
handler added through an extra config file); the first epoch is a warm-up and not counted. Samples/s
= training samples / median epoch time; goal DDP / single >= 1.1, taken per epoch pair (epoch k of
a round's single and DDP runs: median and interquartile range, ``_bench.ratio_spread``) and ``met``
only when the whole range clears it (``_bench.verdict``). Where the time goes is printed
per phase of an iteration (:class:`PhaseTimes`).

Two yardsticks run in the same session:

- **the bare loop** (``_bare_training_loop.py``): the same network on tensors already in memory,
  plain losses, ``AdamW``, launched the same two ways. Its DDP / single ratio is what this machine
  allows for this network with no pipeline at all; ``bundle / bare`` per mode is the pipeline's
  share.
- **glibc's default allocator** (one more run of each, ``tune_host_allocator: false``): the bundles
  tune the CPU allocator (:func:`medmtl.engines.tune_host_allocator`). Without it, every step of a
  batch whose activations exceed glibc's 32 MiB mmap threshold (16 x 32 channels x 128^2) faults
  its memory in again, which costs the single 2-thread process far more than the 1-thread ranks
  (8 samples each, under the threshold): the default allocator makes DDP look better by slowing
  the single process down. Both are printed so that the gain is not mistaken for scaling.

Equality: DDP with ``even_divisible`` shards and averaged gradients computes the same step as one
process on the global batch only when nothing random or per-rank remains, so every run gets
overrides that make them comparable: augmentation off (``train::preprocessing::train false``), no
dropout, an even number of training cases, and the single process draws its batches through a
``DistributedSampler`` with 1 replica and the same seed (the union of the two ranks' batches is then
exactly the single process's batch). The demo's partly labelled cases are kept: ``MultiTaskLoss``
scales each rank's per-task mean by its share of the labelled samples (``global_label_mean``), so
the averaged gradient is the masked mean over the global batch. ``multi_gpu_train.json`` seeds rank
r with ``seed + r``; rank 0's initial weights (broadcast by DDP) equal the single run's.

What remains is float summation order (gloo's all-reduce, per-rank batches), and training amplifies
it: in float32 the per-epoch losses of DDP and single drift apart after a few dozen steps, exactly
as a single process run with 1 thread instead of 2 drifts from itself (a different summation order
in the convolutions). So the script reports three comparisons of the per-epoch training losses:

- **float32**, DDP vs single (the timed runs): the drift users see;
- **float32 reference**, single with 1 thread vs single with 2 threads: the drift of the same
  computation in another summation order, the yardstick for the line above;
- **float64**, DDP vs single (``--f64-epochs`` epochs, network, loss and batches in float64 through
  config overrides): rounding starts near 1e-16 instead of 1e-7, so a real difference between the
  two computations (a rank-local statistic, an unsynchronised parameter) would show while rounding
  stays far below the 1e-9 tolerance. This is the equality check.

Run: ``python benchmarks/ddp_scaling.py [--quick] [--epochs 5] [--rounds 2] [--size 128]
[--global-batch 16] [--features 32,32,64,128,256,32]`` (about 12 minutes on 2 cores); prints tables
and writes ``benchmarks/results/ddp_scaling.json`` (``--quick``: 32 px, the demo's own small
network, global batch 8, 40 cases, 2 epochs, 1 round, into ``ddp_scaling.quick.json``).
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

from _bench import REPO, machine, print_table, ratio_spread, spread_text, summary, verdict, write_results

from medmtl.bundle_layers import bundle_dir, config_layers
from medmtl.data.demo import generate_demo2d

NAME = "ddp_scaling"
PHASES = ("forward", "loss", "backward", "optimizer", "between")
SPEC = REPO / "data_specs" / "demo.yaml"
F64_TOLERANCE = 1e-9
EPOCH_LINE = re.compile(r"^BENCH_EPOCH rank=(\d+) epoch=(\d+) seconds=([0-9.eE+-]+)$", re.MULTILINE)
SAMPLES_LINE = re.compile(r"^BENCH_SAMPLES (\d+)$", re.MULTILINE)
BARE_LINE = re.compile(r"^BENCH_BARE step_s=([0-9.eE+-]+)$", re.MULTILINE)
BARE_LOOP = Path(__file__).resolve().parent / "_bare_training_loop.py"
PHASES_LINE = re.compile(r"^BENCH_PHASES rank=(\d+) (\{.*\})$", re.MULTILINE)


class PhaseTimes:
    """Median wall and main-thread CPU milliseconds of each part of a training iteration.

    Also prints each epoch's training time (``BENCH_EPOCH``). Attached to the trainer by the extra config (this file is importable in the bundle's process:
    ``run_bundle`` puts ``benchmarks/`` on ``PYTHONPATH``); prints one ``BENCH_PHASES`` line per rank
    at the end. Phases (each with the bundle's handlers on the event that ends it, which run first):
    ``forward`` (zero_grad, prepare_batch, network), ``loss`` (with the non-finite guard's and the
    label counts' all-reduce), ``backward`` (with DDP's gradient all-reduce and the loss weights'
    gradient sync), ``optimizer`` (step), ``between`` (the iteration's end, loading the next batch). Why: the epoch time alone
    does not say whether DDP loses on compute, communication or waiting; for a 1-thread DDP rank,
    wall minus CPU is time spent waiting for the other rank or for gloo, while for the 2-thread
    single process the main thread's CPU includes OpenMP's spinning. The first epoch is skipped.
    """

    _MARKS = ("ITERATION_STARTED", "FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED")

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, float]]] = {p: [] for p in PHASES}
        self._marks: dict[str, tuple[float, float]] = {}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        for name in self._MARKS:
            event = getattr(Events, name, None) or getattr(IterationEvents, name)
            engine.add_event_handler(event, self._mark, name)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_time)
        engine.add_event_handler(Events.COMPLETED, self._report)

    @staticmethod
    def emit(line: str) -> None:
        """One line in one ``write``: the ranks share torchrun's stdout, and ``print`` writes the
        text and the newline separately, so two ranks' lines could interleave."""
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def _epoch_time(self, engine: Any) -> None:
        import medmtl.engines

        seconds = engine.state.times["EPOCH_COMPLETED"]
        self.emit(f"BENCH_EPOCH rank={medmtl.engines.get_rank()} epoch={engine.state.epoch} seconds={seconds}")

    def _mark(self, engine: Any, name: str) -> None:
        now = (time.perf_counter(), time.thread_time())
        if name == "ITERATION_STARTED" and "MODEL_COMPLETED" in self._marks:
            self._record("between", self._marks["MODEL_COMPLETED"], now, engine)
            self._marks = {}
        self._marks[name] = now
        previous = self._MARKS[self._MARKS.index(name) - 1] if name != "ITERATION_STARTED" else None
        if previous in self._marks:
            phase = PHASES[self._MARKS.index(name) - 1]
            self._record(phase, self._marks[previous], now, engine)

    def _record(self, phase: str, start: tuple[float, float], end: tuple[float, float], engine: Any) -> None:
        if engine.state.epoch > 1:
            self.samples[phase].append((end[0] - start[0], end[1] - start[1]))

    def _report(self, engine: Any) -> None:
        import medmtl.engines

        out = {
            phase: {
                "wall_ms": statistics.median(w for w, _ in values) * 1e3,
                "cpu_ms": statistics.median(c for _, c in values) * 1e3,
            }
            for phase, values in self.samples.items()
            if values
        }
        self.emit(f"BENCH_PHASES rank={medmtl.engines.get_rank()} {json.dumps(out)}")


# Extra config merged after the demo's train (or multi_gpu_train) layers: comparable runs + epoch timing.
# (No "import" anywhere in an expression: MONAI then parses it as Python before resolving "@" ids.)
COMMON_OVERRIDES: dict[str, Any] = {
    "train::preprocessing::train": False,
    "backbone_presets::unet::dropout": 0.0,  # the network's kwargs: the bundle's preset of its backbone
    "train::dataset::data": "$(lambda cs: cs[: len(cs) // 2 * 2])(@train_cases[0])",
    "bench_phases": {"_target_": "ddp_scaling.PhaseTimes"},
    "run": [
        "$@bench_phases.attach(@train::trainer)",
        "$@validate::early_stop.set_trainer(@train::trainer)",
        "$@bench_phases.emit('BENCH_SAMPLES ' + str(len(@train::dataset))) if medmtl.engines.is_main_process() else None",
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
# float64: the batches through the trainer's ``to_kwargs`` (the demo's targets are all float), the
# network and the loss (its uncertainty log-variances and pos_weight) with ``.double()``
F64_OVERRIDES: dict[str, Any] = {
    "train::trainer::to_kwargs": {"dtype": "$torch.float64"},
    "loss_function": "$@loss.double().to(@device)",
}
F64_NETWORK = {
    "single": {"network": "$@network_def.double().to(@device)"},
    "ddp": {"network::module": "$@network_def.double().to(@device)"},
}


def network_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The backbone's feature widths of the timed network (``--features``)."""
    return {"backbone_presets::unet::features": list(args.features)}


def launcher(mode: str, args: argparse.Namespace) -> list[str]:
    """The start of a command: ``python`` for single, ``python -m torch.distributed.run ...`` for DDP."""
    cmd = [sys.executable]
    if mode == "ddp":
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    return cmd


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with ``threads`` intra-op threads per process and no GPU visible.

    No GPU: the CPU (gloo) comparison this benchmark is about, also on GPU machines.
    """
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}


def run_bundle(
    mode: str,
    work: Path,
    data: Path,
    args: argparse.Namespace,
    label: str,
    epochs: int,
    threads: int | None = None,
    f64: bool = False,
    default_allocator: bool = False,
) -> dict[str, Any]:
    """One training run; returns its epoch times, per-epoch losses and wall time.

    Args:
        mode: ``"single"`` or ``"ddp"``.
        label: names the run's output folder and extra config (unique per run).
        epochs: epochs of this run.
        threads: ``OMP_NUM_THREADS`` of each process (default: ``nproc`` for single, 1 for DDP).
        f64: train in float64 (the equality check).
        default_allocator: ``tune_host_allocator: false`` (glibc's default behaviour, for comparison).
    """
    extra_config = {**COMMON_OVERRIDES, **network_overrides(args), **(SINGLE_OVERRIDES if mode == "single" else {})}
    if default_allocator:
        extra_config["tune_host_allocator"] = False
    if f64:
        extra_config.update({**F64_OVERRIDES, **F64_NETWORK[mode]})
    extra = work / f"bench_{label}.json"
    extra.write_text(json.dumps(extra_config))
    configs = [*config_layers("demo", "multi_gpu_train" if mode == "ddp" else "train"), extra]
    out = work / f"run_{label}"
    cmd = launcher(mode, args) + [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "[" + ",".join(f"'{c}'" for c in configs) + "]",
        "--meta_file",
        str(bundle_dir("demo") / "configs" / "metadata.json"),
    ]
    per_rank_batch = args.global_batch // (args.nproc if mode == "ddp" else 1)
    overrides = {
        "data_spec": SPEC,
        "dataset_dir": data,
        "output_dir": out,
        "epochs": epochs,
        "batch_size": per_rank_batch,
        "spatial_size": f"[{args.size},{args.size}]",
        "val_interval": 10**6,  # no validation: training time only
        "validate_data": False,  # the generator's output is valid; start-up is not measured anyway
        "resume": False,
        "seed": 0,
    }
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    threads = threads or (1 if mode == "ddp" else args.nproc)
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**thread_env(threads), "PYTHONPATH": path}
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"[{time.strftime('%X')}] {label}: {mode}, {threads} thread(s), {epochs} epochs...", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{label} run failed (exit {result.returncode}):\n{log[-6000:]}")
    times: dict[int, dict[int, float]] = {}
    for rank, epoch, seconds in EPOCH_LINE.findall(log):
        times.setdefault(int(epoch), {})[int(rank)] = float(seconds)
    samples = [int(n) for n in SAMPLES_LINE.findall(log)]
    if len(times) != epochs or not samples:
        raise RuntimeError(f"{label} run printed {len(times)} epoch times, expected {epochs}:\n{log[-4000:]}")
    history = json.loads((out / "history.json").read_text())
    phases = {int(rank): json.loads(text) for rank, text in PHASES_LINE.findall(log)}
    return {
        "mode": mode,
        "label": label,
        "threads_per_process": threads,
        "dtype": "float64" if f64 else "float32",
        "wall_s": wall,
        "samples": samples[0],
        # the slowest rank sets the pace (the ranks wait for each other at every all-reduce)
        "epoch_s": [max(times[e].values()) for e in sorted(times)],
        "epoch_s_per_rank": {str(e): times[e] for e in sorted(times)},
        "phases_ms_per_rank": {str(rank): phases[rank] for rank in sorted(phases)},
        "losses": [
            {k: v for k, v in record.items() if k == "epoch" or k.startswith(("train_loss", "train_weight"))}
            for record in history
        ],
    }


def run_bare(mode: str, args: argparse.Namespace, label: str, default_allocator: bool = False) -> dict[str, Any]:
    """The same network in a bare loop (``_bare_training_loop.py``), launched like :func:`run_bundle`.

    Why: the ratio the machine allows for this network, with no pipeline around it (see that file).
    """
    cmd = launcher(mode, args) + [
        str(BARE_LOOP),
        "--data-spec",
        str(SPEC),
        "--global-batch",
        str(args.global_batch),
        "--size",
        str(args.size),
    ]
    cmd += ["--steps", str(args.bare_steps), "--warmup", "3", "--features", ",".join(map(str, args.features))]
    cmd += ["--default-allocator"] if default_allocator else []
    threads = 1 if mode == "ddp" else args.nproc
    env = thread_env(threads)
    print(
        f"[{time.strftime('%X')}] {label}: bare loop, {mode}, {threads} thread(s), {args.bare_steps} steps...",
        flush=True,
    )
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    log = result.stdout + result.stderr
    found = BARE_LINE.search(log)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"{label} bare loop failed (exit {result.returncode}):\n{log[-4000:]}")
    step_s = float(found.group(1))
    return {
        "mode": mode,
        "label": label,
        "threads_per_process": threads,
        "default_allocator": default_allocator,
        "step_s": step_s,
        "samples_per_s": args.global_batch / step_s,
    }


def compare(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> dict[str, Any]:
    """Per-epoch training losses and weights of runs ``a`` and ``b`` with their relative differences."""
    keys = sorted({k for rec in a["losses"] for k in rec if k != "epoch"})
    rows = []
    for ra, rb in zip(a["losses"], b["losses"], strict=True):
        row: dict[str, Any] = {"epoch": ra["epoch"]}
        for key in keys:
            va, vb = ra.get(key), rb.get(key)
            rel = abs(va - vb) / max(abs(va), 1e-12) if va is not None and vb is not None else None
            row[key] = {names[0]: va, names[1]: vb, "rel_diff": rel}
        rows.append(row)
    loss_keys = [k for k in keys if k.startswith("train_loss")]
    return {
        "runs": list(names),
        "epochs": rows,
        "max_rel_diff_train_loss": max((row[k]["rel_diff"] or 0.0) for row in rows for k in loss_keys),
        "max_rel_diff_per_epoch": [max((row[k]["rel_diff"] or 0.0) for k in keys) for row in rows],
    }


def print_comparison(result: dict[str, Any], title: str) -> None:
    a, b = result["runs"]
    keys = [k for k in result["epochs"][0] if k.startswith("train_loss")]
    print_table(
        ["epoch"] + [f"{k} {a}" for k in keys] + [f"{k} {b}" for k in keys] + ["max rel diff"],
        [
            [row["epoch"]] + [row[k][a] for k in keys] + [row[k][b] for k in keys] + [worst]
            for row, worst in zip(result["epochs"], result["max_rel_diff_per_epoch"], strict=True)
        ],
        title,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 px, 40 cases, 2 epochs, 1 round: a smoke check")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per timed run, the first a warm-up (default 5)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="single/DDP run pairs, alternating (default 2)")
    parser.add_argument("--cases", type=int, default=None, help="demo images to generate (default 240)")
    parser.add_argument("--size", type=int, default=None, help="image size in px (default 128; --quick 32)")
    parser.add_argument(
        "--global-batch", type=int, default=None, help="samples per step over all processes (default 16; --quick 8)"
    )
    parser.add_argument(
        "--features",
        type=lambda text: [int(v) for v in text.split(",")],
        default=None,
        help="BasicUNet features (default 32,32,64,128,256,32: the ultrasound bundle's `unet` preset; "
        "--quick: the demo's 16,16,32,64,128,16)",
    )
    parser.add_argument("--f64-epochs", type=int, default=None, help="epochs of the float64 runs (default 3)")
    parser.add_argument("--nproc", type=int, default=2, help="DDP processes = threads of the single process")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per run")
    parser.add_argument(
        "--bare-steps",
        type=int,
        default=None,
        help="timed steps of each bare-loop run (default 15, after 3 untimed; --quick 20)",
    )
    args = parser.parse_args()
    args.epochs = args.epochs or (2 if args.quick else 5)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.cases = args.cases or (40 if args.quick else 240)
    args.size = args.size or (32 if args.quick else 128)
    args.global_batch = args.global_batch or (8 if args.quick else 16)
    args.features = args.features or ([16, 16, 32, 64, 128, 16] if args.quick else [32, 32, 64, 128, 256, 32])
    args.f64_epochs = args.f64_epochs or (2 if args.quick else 3)
    args.bare_steps = args.bare_steps or (20 if args.quick else 15)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is a warm-up")

    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    bare_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medmtl_ddp_bench_") as tmp:
        work = Path(tmp)
        data = work / "data" / "demo2d"
        generate_demo2d(data, num_cases=args.cases, seed=0)
        for index in range(args.rounds):
            order = ("single", "ddp") if index % 2 == 0 else ("ddp", "single")
            runs += [run_bundle(mode, work, data, args, f"{mode}_{index}", args.epochs) for mode in order]
            for repeat, pair in enumerate((order, order[::-1])):  # short runs: two pairs per round
                bare_runs += [run_bare(mode, args, f"bare_{mode}_{index}_{repeat}") for mode in pair]
        # glibc's default allocator (the bundles' ``tune_host_allocator: false``): one round, for comparison
        untuned = {
            mode: run_bundle(mode, work, data, args, f"{mode}_default_allocator", args.epochs, default_allocator=True)
            for mode in ("single", "ddp")
        }
        bare_runs += [run_bare(mode, args, f"bare_{mode}_default_allocator", True) for mode in ("ddp", "single")]
        reference = run_bundle("single", work, data, args, "single_1thread", args.epochs, threads=1)
        f64 = {
            mode: run_bundle(mode, work, data, args, f"{mode}_f64", args.f64_epochs, f64=True)
            for mode in ("single", "ddp")
        }
    elapsed = time.perf_counter() - start

    modes: dict[str, dict[str, Any]] = {}
    for mode in ("single", "ddp"):
        mine = [r for r in runs if r["mode"] == mode]
        timed = [t for r in mine for t in r["epoch_s"][1:]]  # epoch 1 of every run: warm-up
        samples = mine[0]["samples"]
        modes[mode] = {
            "processes": args.nproc if mode == "ddp" else 1,
            "threads_per_process": 1 if mode == "ddp" else args.nproc,
            "batch_per_process": args.global_batch // (args.nproc if mode == "ddp" else 1),
            "train_samples": samples,
            "epoch": summary(timed),
            "samples_per_s": samples / statistics.median(timed),
            "wall_s_per_run": [r["wall_s"] for r in mine],
            "phases_ms_rank0_first_run": mine[0]["phases_ms_per_rank"].get("0", {}),
        }
    ratio = modes["ddp"]["samples_per_s"] / modes["single"]["samples_per_s"]  # ratio of the medians
    # per round: the DDP and single runs of a round paired epoch by epoch (same samples per epoch), so
    # the ratio of throughputs is single epoch time / DDP epoch time
    paired = [
        (single_s, ddp_s)
        for index in range(args.rounds)
        for single_s, ddp_s in zip(
            *(next(r for r in runs if r["label"] == f"{m}_{index}")["epoch_s"][1:] for m in ("single", "ddp")),
            strict=True,
        )
    ]
    ratio_spread_ = ratio_spread([s for s, _ in paired], [d for _, d in paired])
    ratio_verdict = verdict(ratio_spread_, 1.1, at_most=False)
    bare: dict[str, dict[str, Any]] = {}
    for mode in ("single", "ddp"):
        steps = [r["step_s"] for r in bare_runs if r["mode"] == mode and not r["default_allocator"]]
        samples_per_s = args.global_batch / statistics.median(steps)
        bare[mode] = {
            "step_s": summary(steps),
            "samples_per_s": samples_per_s,
            "bundle_vs_bare": modes[mode]["samples_per_s"] / samples_per_s,
        }
    bare_ratio = bare["ddp"]["samples_per_s"] / bare["single"]["samples_per_s"]
    tuned_bare = {r["label"]: r["step_s"] for r in bare_runs if not r["default_allocator"]}
    pairs = [label.split("_", 2)[2] for label in tuned_bare if label.startswith("bare_single_")]  # "<round>_<repeat>"
    bare_spread = ratio_spread(
        [tuned_bare[f"bare_single_{p}"] for p in pairs], [tuned_bare[f"bare_ddp_{p}"] for p in pairs]
    )
    allocator: dict[str, dict[str, float]] = {}
    for mode in ("single", "ddp"):
        bundle_untuned = untuned[mode]["samples"] / statistics.median(untuned[mode]["epoch_s"][1:])
        bare_untuned = next(r for r in bare_runs if r["mode"] == mode and r["default_allocator"])["samples_per_s"]
        allocator[mode] = {
            "bundle_samples_per_s": bundle_untuned,
            "bundle_tuned_speedup": modes[mode]["samples_per_s"] / bundle_untuned,
            "bare_samples_per_s": bare_untuned,
            "bare_tuned_speedup": bare[mode]["samples_per_s"] / bare_untuned,
        }
    allocator_ratio = allocator["ddp"]["bundle_samples_per_s"] / allocator["single"]["bundle_samples_per_s"]

    single, ddp = (next(r for r in runs if r["mode"] == m) for m in ("single", "ddp"))
    float32 = compare(single, ddp, ("single", "ddp"))
    noise = compare(single, reference, ("single", "single_1thread"))
    float64 = compare(f64["single"], f64["ddp"], ("single", "ddp"))
    equal = float64["max_rel_diff_train_loss"] <= F64_TOLERANCE

    print_table(
        ["mode", "processes x threads", "batch/process", "samples", "epoch s (median)", "samples/s"],
        [
            [m, f"{v['processes']} x {v['threads_per_process']}", v["batch_per_process"], v["train_samples"]]
            + [v["epoch"]["median_s"], v["samples_per_s"]]
            for m, v in modes.items()
        ],
        f"demo bundle, {args.size} px, global batch {args.global_batch}, {args.epochs} epochs x {args.rounds} runs "
        "per mode (first epoch of each run not timed)",
    )
    print(f"DDP / single samples/s (per epoch pair): {spread_text(ratio_spread_)} (goal >= 1.1): {ratio_verdict}")
    print(f"bare loop DDP / single samples/s (per run pair): {spread_text(bare_spread)}")
    print_table(
        ["mode", "bare loop samples/s", "bundle samples/s", "bundle / bare"],
        [[m, bare[m]["samples_per_s"], modes[m]["samples_per_s"], bare[m]["bundle_vs_bare"]] for m in modes]
        + [["DDP / single", bare_ratio, ratio, ratio / bare_ratio]],
        f"the same network in a bare loop (tensors in memory, {args.bare_steps} steps x "
        f"{sum(not r['default_allocator'] for r in bare_runs) // 2} runs per mode): the ratio this machine allows",
    )
    print_table(
        ["mode", "bundle samples/s", "tuned speed-up", "bare loop samples/s", "tuned speed-up"],
        [
            [m, v["bundle_samples_per_s"], v["bundle_tuned_speedup"], v["bare_samples_per_s"], v["bare_tuned_speedup"]]
            for m, v in allocator.items()
        ]
        + [["DDP / single", allocator_ratio, "", "", ""]],
        "glibc's default allocator (tune_host_allocator: false; one run each) and what the bundles' tuning gains",
    )
    print_table(
        ["mode"] + [f"{p} wall/cpu ms" for p in PHASES],
        [
            [m]
            + [
                "{wall_ms:.1f} / {cpu_ms:.1f}".format(**v["phases_ms_rank0_first_run"][p])
                if p in v["phases_ms_rank0_first_run"]
                else "-"
                for p in PHASES
            ]
            for m, v in modes.items()
        ],
        "median per iteration, rank 0 of the first run (cpu: main thread)",
    )
    print_comparison(float32, "float32: per-epoch training loss, single process vs DDP (first run of each)")
    print_comparison(noise, "float32 reference: single process, 2 threads vs 1 thread (same computation)")
    print_comparison(float64, "float64: per-epoch training loss, single process vs DDP (the equality check)")
    print(
        f"max relative difference of the per-epoch training losses: float32 DDP vs single "
        f"{float32['max_rel_diff_train_loss']:.3g}, float32 1 vs 2 threads {noise['max_rel_diff_train_loss']:.3g}, "
        f"float64 DDP vs single {float64['max_rel_diff_train_loss']:.3g} "
        f"({'equal' if equal else 'NOT equal'} within {F64_TOLERANCE:g})"
    )
    print(f"benchmark time {elapsed:.0f} s")
    results = {
        "modes": modes,
        "ratio_ddp_vs_single": {
            "goal": ">= 1.1",
            "measured": ratio_spread_["median"],
            "ratio_of_medians": ratio,
            "spread": ratio_spread_,
            "verdict": ratio_verdict,
            "bare_loop_same_network": bare_ratio,
            "bare_loop_spread": bare_spread,
        },
        "bare_loop": {"modes": bare, "runs": bare_runs, "steps_per_run": args.bare_steps},
        "default_allocator": {"modes": allocator, "ratio_ddp_vs_single": allocator_ratio},
        "equality": {
            "goal": f"float64 per-epoch training losses of DDP and single agree within {F64_TOLERANCE:g} (relative)",
            "float64_max_rel_diff": float64["max_rel_diff_train_loss"],
            "met": equal,
            "float32_max_rel_diff": float32["max_rel_diff_train_loss"],
            "float32_reference_1_vs_2_threads_max_rel_diff": noise["max_rel_diff_train_loss"],
        },
        "loss_comparison_float32": float32,
        "loss_comparison_float32_reference": noise,
        "loss_comparison_float64": float64,
        "setup": {
            "configs_single": [str(f.relative_to(REPO)) for f in config_layers("demo", "train")],
            "configs_ddp": [str(f.relative_to(REPO)) for f in config_layers("demo", "multi_gpu_train")],
            "extra_config": {
                **COMMON_OVERRIDES,
                "single process only": SINGLE_OVERRIDES,
                "float64 runs only": {**F64_OVERRIDES, "network": F64_NETWORK},
            },
            "demo_cases": args.cases,
            "spatial_size": args.size,
            "features": args.features,
            "global_batch": args.global_batch,
            "epochs": args.epochs,
            "float64_epochs": args.f64_epochs,
            "rounds": args.rounds,
            "backend": "gloo",
        },
        "runs": runs + [untuned["single"], untuned["ddp"], reference, f64["single"], f64["ddp"]],
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
