"""``torch.compile`` (inductor) vs eager for the bundles' networks: a training step and an inference pass.

Why: the bundles' ``--compile True`` (:class:`medmtl.engines.CompiledNetwork`) is opt-in and must be
measured, not assumed (issue 23 item 5): compiling costs time once per shape and mode, and MONAI's
``BasicUNet`` (the ``unet`` backbone) graph-breaks at each up-sampling block (``torch.jit.isinstance``),
so part of it may stay eager. This script compares, on the same input batch, tasks, loss and AdamW:

- **eager**: ``MultiTaskNet`` as the bundles build it;
- **compiled**: the same weights through ``medmtl.engines.compiled_network(net, True, compile_kwargs)``
  with inductor and the bundles' ``compile_kwargs`` default (inductor's layout optimisation off: with
  it the compiled backward of ``BasicUNet``'s replication pad fails a stride assertion, torch 2.13
  CPU), exactly what the trainer and evaluators call with ``--compile True``.

Configurations: ``2d``, the demo bundle's network (``unet`` preset 16..128, lesion segmentation +
binary ``malignant``; 64x64, batch 8) and ``3d``, the brain bundle's ``unet`` preset in 3D (lesion +
binary; 64^3, batch 2). For a **training** step (forward, ``MultiTaskLoss``, backward, AdamW) and an
**inference** forward (eval mode, ``torch.no_grad()`` as the evaluators run it):

- **compile time**: the first call of each compiled candidate minus the first eager call,
  reported separately (it is paid once per input shape and train/eval mode), with the number of
  dynamo graphs and graph breaks of the inference forward (``torch._dynamo.explain``);
- **steady time**: ``_bench.interleaved`` (``--repeats`` rounds after the first calls, one call of
  each candidate per round, order alternating); compiled / eager **per round**, median and
  interquartile range (``_bench.ratio_spread``). "Helps" means at most ``GOAL`` (0.95, 5 % faster)
  over the whole interquartile range (``_bench.verdict``; ``unclear`` when it straddles);
- **break-even**: compile time / (eager - compiled median step time), in steps, where compiling helps;
- on CUDA also **cuDNN autotuning**: eager with ``torch.backends.cudnn.benchmark`` on / off per round
  (the bundles' ``cudnn_benchmark: auto`` turns it on for fixed 3D shapes).

Run: ``OMP_NUM_THREADS=1 python benchmarks/compile_speed.py [--quick] [--repeats 15] [--threads 1]
[--configs 2d 3d] [--device cuda] [--compile-kwargs JSON]``; prints a table and writes ``benchmarks/results/compile_speed.json``
(``--quick``: batch 4 at 64 px / batch 1 at 32^3, 3 rounds, ``compile_speed.quick.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch._dynamo
from _bench import (
    REPO,
    interleaved,
    machine,
    print_table,
    ratio_spread,
    spread_text,
    summary,
    timed,
    verdict,
    write_results,
)
from resunet_cost import make_targets

from medmtl.data import Task
from medmtl.engines import compiled_network, tune_host_allocator
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskNet

NAME = "compile_speed"
GOAL = 0.95
"""compiled / eager time per round: compiling "helps" when the whole interquartile range is at most this."""

LESION = Task(name="lesion", kind="segmentation", classes=["background", "lesion"])
MALIGNANT = Task(name="malignant", kind="binary")
COMMON_TRAIN = json.loads((REPO / "bundles" / "common" / "configs" / "train.json").read_text())
PRESETS = {
    name: {k: v for k, v in COMMON_TRAIN["backbone_presets"][name].items() if k not in ("spatial_dims", "in_channels")}
    for name in ("unet", "resunet")
}
"""The bundles' ``backbone_presets`` as the bundles define them: ``unet`` the default, ``resunet`` what
``medmtl plan`` chooses for 2D segmentation + diagnosis (MONAI's UNet, no graph break)."""
BUNDLE_COMPILE_KWARGS = COMMON_TRAIN["compile_kwargs"]
"""The bundles' ``compile_kwargs`` default (inductor's layout optimisation off: see the benchmark README)."""


@dataclass(frozen=True)
class Config:
    """One comparison: the bundle's network and the input batch (full and ``--quick``)."""

    key: str
    title: str
    spatial_dims: int
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    backbone: str = "unet"


CONFIGS = {
    c.key: c
    for c in (
        Config("2d", "2D, demo bundle network (unet 16..128), lesion + malignant", 2, (8, 1, 64, 64), (4, 1, 64, 64)),
        Config(
            "2d-resunet",
            "2D, the plan's resunet (16..256, MONAI UNet), lesion + malignant",
            2,
            (8, 1, 128, 128),
            (4, 1, 64, 64),
            "resunet",
        ),
        Config(
            "3d",
            "3D U-Net, brain bundle unet preset (16..128), lesion + binary",
            3,
            (2, 1, 64, 64, 64),
            (1, 1, 32, 32, 32),
        ),
    )
}


class Candidate:
    """A network (eager, or through ``compiled_network``) with its loss and AdamW, on one device.

    ``cudnn_benchmark``: the value of ``torch.backends.cudnn.benchmark`` during this candidate's calls
    (restored after each), so one process compares cuDNN autotuning on and off.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        x: torch.Tensor,
        compile_kwargs: dict[str, Any] | None,
        cudnn_benchmark: bool = False,
    ) -> None:
        self.x = x
        self.cudnn_benchmark = cudnn_benchmark
        self.network = network
        self.call = compiled_network(network, compile_kwargs is not None, compile_kwargs)
        self.loss = MultiTaskLoss([LESION, MALIGNANT])
        self.targets = {k: v.to(x.device) for k, v in make_targets([LESION, MALIGNANT], x.shape).items()}
        self.targets.update({k: v.cpu() for k, v in self.targets.items() if k.endswith("_present")})  # host flags
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

    def _sync(self) -> None:
        if self.x.device.type == "cuda":
            torch.cuda.synchronize(self.x.device)

    def train_step(self) -> None:
        saved, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, self.cudnn_benchmark
        try:
            self.call.train()
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.call(self.x), self.targets).backward()
            self.optimizer.step()
            self._sync()
        finally:
            torch.backends.cudnn.benchmark = saved

    def infer(self) -> None:
        saved, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, self.cudnn_benchmark
        try:
            self.call.eval()
            with torch.no_grad():
                self.call(self.x)
            self._sync()
        finally:
            torch.backends.cudnn.benchmark = saved


def graph_breaks(network: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Dynamo's graphs and graph breaks of one eval forward (the reasons' first lines, deduplicated)."""
    network.eval()
    with torch.no_grad():
        explained = torch._dynamo.explain(network)(x)
    reasons = sorted({b.reason.splitlines()[0] for b in explained.break_reasons})
    torch._dynamo.reset()
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count, "reasons": reasons}


def compare(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """First-call (compile) times and per-round compiled / eager ratios of one configuration."""
    shape = config.quick_shape if args.quick else config.shape
    device = torch.device(args.device)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)
    torch.manual_seed(0)
    backbone_kwargs = {"spatial_dims": config.spatial_dims, "in_channels": 1, **PRESETS[config.backbone]}
    network = MultiTaskNet(config.backbone, [LESION, MALIGNANT], backbone_kwargs=backbone_kwargs).to(device)
    breaks = graph_breaks(copy.deepcopy(network), x)
    models = {
        "eager": Candidate(copy.deepcopy(network), x, None),
        "compiled": Candidate(copy.deepcopy(network), x, {"backend": "inductor", **args.compile_kwargs}),
    }
    if device.type == "cuda":  # the bundles' cudnn_benchmark: eager with cuDNN autotuning on
        models["eager_cudnn_benchmark"] = Candidate(copy.deepcopy(network), x, None, cudnn_benchmark=True)
    first = {}
    for mode, fn in (("training", "train_step"), ("inference", "infer")):
        for name, model in models.items():  # the first call: compiling (once per shape and train/eval mode)
            first[f"{mode} {name}"] = timed(getattr(model, fn))
    candidates: dict[str, Callable[[], None]] = {
        f"{mode} {name}": getattr(model, fn)
        for mode, fn in (("training", "train_step"), ("inference", "infer"))
        for name, model in models.items()
    }
    times = interleaved(candidates, args.repeats, warmups=list(candidates.values()) * (args.warmup - 1))
    row: dict[str, Any] = {
        "key": config.key,
        "configuration": config.title,
        "input_shape": list(shape),
        "backbone_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone_kwargs.items()},
        "dynamo_inference_forward": breaks,
    }
    for mode in ("training", "inference"):
        spread = ratio_spread(times[f"{mode} compiled"], times[f"{mode} eager"])
        eager_s, compiled_s = (statistics.median(times[f"{mode} {n}"]) for n in ("eager", "compiled"))
        compile_s = first[f"{mode} compiled"] - first[f"{mode} eager"]
        row[mode] = {
            "first_call_s": {n: first[f"{mode} {n}"] for n in models},
            "compile_s": compile_s,
            "time": {n: summary(times[f"{mode} {n}"]) for n in models},
            "time_ratio": spread,
            "verdict": verdict(spread, GOAL),  # "met": compiling helps over the whole IQR
            "break_even_steps": compile_s / (eager_s - compiled_s) if compiled_s < eager_s else None,
        }
        if "eager_cudnn_benchmark" in models:
            tuned = ratio_spread(times[f"{mode} eager_cudnn_benchmark"], times[f"{mode} eager"])
            row[mode]["cudnn_benchmark_ratio"] = tuned
            row[mode]["cudnn_benchmark_verdict"] = verdict(tuned, GOAL)
    return row


def report(rows: list[dict[str, Any]]) -> None:
    table = []
    for r in rows:
        for mode in ("training", "inference"):
            e = r[mode]
            table.append(
                [
                    r["key"],
                    mode,
                    e["compile_s"],
                    e["time"]["eager"]["median_s"],
                    e["time"]["compiled"]["median_s"],
                    spread_text(e["time_ratio"]),
                    e["verdict"],
                    None if e["break_even_steps"] is None else round(e["break_even_steps"]),
                ]
            )
    print_table(
        [
            "config",
            "mode",
            "compile s",
            "eager s",
            "compiled s",
            "compiled/eager per round",
            f"<= {GOAL}",
            "break-even",
        ],
        table,
        "torch.compile (inductor) vs eager, bundles' networks (ratio: median of per-round ratios, IQR)",
    )
    for r in rows:
        for mode in ("training", "inference"):
            if "cudnn_benchmark_ratio" in r[mode]:
                tuned = r[mode]["cudnn_benchmark_ratio"]
                print(f"  {r['key']} {mode}: eager with cudnn.benchmark / without: {spread_text(tuned)}")
        d = r["dynamo_inference_forward"]
        print(
            f"  {r['key']}: {r['configuration']}, input {'x'.join(map(str, r['input_shape']))}; dynamo: "
            f"{d['graphs']} graphs, {d['graph_breaks']} breaks {d['reasons'][:2]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 at 64 px / 1 at 32^3, 3 rounds: a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each candidate (the first compiles)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--compile-kwargs",
        type=json.loads,
        default=BUNDLE_COMPILE_KWARGS,
        help="torch.compile arguments as JSON (default: the bundles' compile_kwargs)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cpu":
        tune_host_allocator("cpu")  # as the bundles run on CPU
    args.repeats = args.repeats or (3 if args.quick else 15)
    args.warmup = max(args.warmup, 1)
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    rows = []
    for key in args.configs:
        print(f"[{time.strftime('%X')}] {key}...", flush=True)
        rows.append(compare(CONFIGS[key], args))
    elapsed = time.perf_counter() - start
    report(rows)
    verdicts = {f"{r['key']} {mode}": r[mode]["verdict"] for r in rows for mode in ("training", "inference")}
    helps = sum(v == "met" for v in verdicts.values())
    print(f"compiling helps (whole IQR <= {GOAL}): {helps}/{len(verdicts)}; benchmark time {elapsed:.0f} s")
    results = {
        "goal": f"compiled / eager time per round <= {GOAL} over the whole interquartile range ('met': compiling "
        "helps); compile time reported separately (once per shape and train/eval mode)",
        "rows": rows,
        "verdicts": verdicts,
    }
    meta = machine(
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        quick=args.quick,
        device=args.device,
        compile_kwargs={"backend": "inductor", **args.compile_kwargs},
        duration_s=elapsed,
    )
    write_results(NAME, meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
