"""The ``resunet`` backbone vs the MONAI ``UNet`` it wraps, with the same heads: FLOPs and time.

Why: ``MultiTaskNet("resunet")`` should cost what MONAI's ``UNet`` with the same channels costs
(issue 23: it took 1.75-2.2x, 7.41 vs 3.03 GFLOP per 64^3 forward, because its top up-layer worked
at full resolution with ``channels[0]`` outputs). This script puts the two side by side on the
same input batch, tasks, loss and optimizer:

- **medmtl**: ``MultiTaskNet("resunet", tasks, backbone_kwargs=...)``;
- **MONAI**: ``monai.networks.nets.UNet`` with the same channels, strides and residual units and
  ``out_channels`` = the segmentation task's classes, plus the same classification heads
  (``medmtl.networks.ClassificationHead``, average + max pooling) on its bottleneck, read by a
  forward hook on the UNet's bottom layer: the cheapest multi-task network a MONAI user would build
  around MONAI's UNet. It returns the same ``{task: logits}`` dict.

Configurations: ``2d``, the ultrasound bundle with ``--backbone resunet`` (channels 16..256, 2
residual units; lesion segmentation + 3-class diagnosis; 128 px, batch 16) and ``3d``, the brain
bundle's ``resunet`` preset (16..256, 2 residual units; lesion + binary; 64^3, batch 2, the issue's
step). For a **training** step (``MultiTaskLoss``, forward, backward, AdamW) and an **inference**
pass (eval copies, ``torch.inference_mode()``):

- **FLOPs** of both (``torch.utils.flop_counter.FlopCounterMode``: training forward + backward,
  inference forward) and parameter counts. Goal: equal within 5 %.
- **Time**: ``_bench.interleaved`` (warm-up, then ``--repeats`` rounds, one call of each network
  per round, order alternating); the ratio medmtl / MONAI is taken **per round** and reported as
  median and interquartile range with the number of rounds (``_bench.ratio_spread``). Goal: <= 1.05,
  ``met`` only when the whole interquartile range is at most 1.05 (``_bench.verdict``; ``unclear``
  when it straddles the goal).

Run: ``OMP_NUM_THREADS=1 python benchmarks/resunet_cost.py [--quick] [--repeats 21] [--threads 1]
[--configs 2d 3d]``; prints a table and writes ``benchmarks/results/resunet_cost.json``
(``--quick``: 64 px / 32^3, 3 rounds, ``resunet_cost.quick.json``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from _bench import interleaved, machine, print_table, ratio_spread, spread_text, summary, verdict, write_results
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import UNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medmtl.data import Task, TaskKind
from medmtl.engines import tune_host_allocator
from medmtl.losses import MultiTaskLoss
from medmtl.networks import ClassificationHead, MultiTaskNet

NAME = "resunet_cost"
TIME_GOAL = 1.05
"""medmtl time / MONAI time per round: the whole interquartile range must be at most this."""
FLOP_GOAL = 0.05
"""|medmtl FLOPs / MONAI FLOPs - 1| at most this."""

LESION = Task(name="lesion", kind="segmentation", classes=["background", "lesion"])
DIAGNOSIS = Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"])
ABNORMAL = Task(name="abnormal", kind="binary")
PRESET = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}


@dataclass(frozen=True)
class Config:
    """One comparison: the bundle preset, its tasks and the input batch (full and ``--quick``)."""

    key: str
    title: str
    spatial_dims: int
    tasks: tuple[Task, ...]
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]


CONFIGS = {
    c.key: c
    for c in (
        Config(
            "2d",
            "2D, ultrasound bundle --backbone resunet (16..256, 2 res units), lesion + diagnosis",
            2,
            (LESION, DIAGNOSIS),
            (16, 1, 128, 128),
            (4, 1, 64, 64),
        ),
        Config(
            "3d",
            "3D, brain bundle resunet preset (16..256, 2 res units), lesion + abnormal",
            3,
            (LESION, ABNORMAL),
            (2, 1, 64, 64, 64),
            (2, 1, 32, 32, 32),
        ),
    )
}


class MonaiUNetWithHeads(nn.Module):
    """MONAI ``UNet`` for the segmentation task + classification heads on its bottleneck.

    The bottleneck is MONAI's innermost block (found by walking the public ``model`` nesting
    ``Sequential(down, SkipConnection(sub), up)``), read by a forward hook, so the UNet runs
    exactly as MONAI builds it.
    """

    def __init__(self, spatial_dims: int, tasks: Sequence[Task], preset: Mapping[str, Any]) -> None:
        super().__init__()
        dense = [t for t in tasks if t.is_dense]
        if len(dense) != 1:
            raise ValueError(f"the MONAI reference has one segmentation output, got tasks {[t.name for t in tasks]}")
        self.names = [t.name for t in tasks]
        self.seg_name = dense[0].name
        self.unet = UNet(spatial_dims, 1, dense[0].num_outputs, **preset)
        self.heads = nn.ModuleDict(
            {t.name: ClassificationHead(preset["channels"][-1], t.num_outputs) for t in tasks if not t.is_dense}
        )
        bottom: nn.Module = self.unet.model
        while isinstance(bottom, nn.Sequential) and len(bottom) == 3 and isinstance(bottom[1], SkipConnection):
            bottom = bottom[1].submodule
        self.bottleneck: list[torch.Tensor] = []
        bottom.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.bottleneck = [output]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        seg = self.unet(x)
        bottleneck = self.bottleneck.pop()
        return {n: seg if n == self.seg_name else self.heads[n](bottleneck) for n in self.names}


def make_targets(tasks: Sequence[Task], shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """Random labels in ``MultiTaskLoss``'s shapes, every sample labelled for every task."""
    g = torch.Generator().manual_seed(1)
    batch, spatial = shape[0], tuple(shape[2:])
    targets: dict[str, torch.Tensor] = {}
    for task in tasks:
        if task.is_dense:
            targets[task.name] = torch.randint(0, task.num_outputs, (batch, 1, *spatial), generator=g).float()
        elif task.kind == TaskKind.MULTICLASS:
            targets[task.name] = torch.randint(0, task.num_outputs, (batch,), generator=g)
        else:
            targets[task.name] = torch.randint(0, 2, (batch, task.num_outputs), generator=g).float()
        targets[task.present_key] = torch.ones(batch, dtype=torch.bool)
    return targets


class Model:
    """A network with its loss and AdamW (training) and an eval-mode copy (inference)."""

    def __init__(self, network: nn.Module, tasks: Sequence[Task], x: torch.Tensor) -> None:
        self.x = x
        self.network = network.train()
        self.eval_network = copy.deepcopy(network).eval()
        self.loss = MultiTaskLoss(tasks)
        self.targets = make_targets(tasks, x.shape)
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

    def train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.network(self.x), self.targets).backward()
        self.optimizer.step()

    def infer(self) -> None:
        with torch.inference_mode():
            self.eval_network(self.x)

    def flops(self, mode: str) -> int:
        with FlopCounterMode(display=False) as counter:
            if mode == "training":
                self.optimizer.zero_grad(set_to_none=True)
                self.loss(self.network(self.x), self.targets).backward()
            else:
                self.infer()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())


def compare(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """FLOPs, parameters and per-round time ratios of one configuration, training and inference."""
    shape = config.quick_shape if args.quick else config.shape
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    medmtl_net = MultiTaskNet(
        "resunet", config.tasks, backbone_kwargs={"spatial_dims": config.spatial_dims, "in_channels": 1, **PRESET}
    )
    torch.manual_seed(0)
    monai_net = MonaiUNetWithHeads(config.spatial_dims, config.tasks, PRESET)
    models = {"medmtl": Model(medmtl_net, config.tasks, x), "monai": Model(monai_net, config.tasks, x)}
    candidates: dict[str, Callable[[], None]] = {}
    for mode, fn in (("training", "train_step"), ("inference", "infer")):
        for name, model in models.items():
            candidates[f"{mode} {name}"] = getattr(model, fn)
    times = interleaved(candidates, args.repeats, warmup=args.warmup)
    row: dict[str, Any] = {
        "key": config.key,
        "configuration": config.title,
        "input_shape": list(shape),
        "backbone_kwargs": {"spatial_dims": config.spatial_dims, **PRESET},
        "tasks": {t.name: t.kind.value for t in config.tasks},
        "parameters": {name: m.num_parameters() for name, m in models.items()},
    }
    for mode in ("training", "inference"):
        flops = {name: m.flops(mode) for name, m in models.items()}
        spread = ratio_spread(times[f"{mode} medmtl"], times[f"{mode} monai"])
        flop_ratio = flops["medmtl"] / flops["monai"]
        row[mode] = {
            "flops": flops,
            "flop_ratio": flop_ratio,
            "flop_goal_met": abs(flop_ratio - 1.0) <= FLOP_GOAL,
            "time": {name: summary(times[f"{mode} {name}"]) for name in models},
            "time_ratio": spread,
            "time_goal_verdict": verdict(spread, TIME_GOAL),  # met only when the whole IQR is <= TIME_GOAL
        }
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
                    e["flops"]["medmtl"] / 1e9,
                    e["flops"]["monai"] / 1e9,
                    e["flop_ratio"],
                    "met" if e["flop_goal_met"] else "missed",
                    e["time"]["medmtl"]["median_s"],
                    e["time"]["monai"]["median_s"],
                    spread_text(e["time_ratio"]),
                    e["time_goal_verdict"],
                ]
            )
    print_table(
        [
            "config",
            "mode",
            "GFLOP medmtl",
            "GFLOP MONAI",
            "FLOP ratio",
            f"within {FLOP_GOAL:.0%}",
            "medmtl s",
            "MONAI s",
            "time ratio per round",
            f"<= {TIME_GOAL}",
        ],
        table,
        "MultiTaskNet('resunet') / MONAI UNet + the same heads (time ratio: median of per-round ratios, IQR)",
    )
    for r in rows:
        print(
            f"  {r['key']}: {r['configuration']}, input {'x'.join(map(str, r['input_shape']))}, "
            f"parameters medmtl {r['parameters']['medmtl']:,} / MONAI {r['parameters']['monai']:,}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 px / 32^3 inputs, 3 rounds: a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 21; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each candidate first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_host_allocator("cpu")  # as the bundles run on CPU
    args.repeats = args.repeats or (3 if args.quick else 21)
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    rows = []
    for key in args.configs:
        print(f"[{time.strftime('%X')}] {key}...", flush=True)
        rows.append(compare(CONFIGS[key], args))
    elapsed = time.perf_counter() - start
    report(rows)
    verdicts: dict[str, str] = {}
    for r in rows:
        for mode in ("training", "inference"):
            verdicts[f"{r['key']} {mode} time"] = r[mode]["time_goal_verdict"]
            verdicts[f"{r['key']} {mode} flops"] = "met" if r[mode]["flop_goal_met"] else "missed"
    met = sum(v == "met" for v in verdicts.values())
    print(f"goals met: {met}/{len(verdicts)}; benchmark time {elapsed:.0f} s")
    results = {
        "goal": f"medmtl / MONAI time per round <= {TIME_GOAL} (met only when the whole interquartile range is); "
        f"FLOPs equal within {FLOP_GOAL:.0%} (training and inference, 2D and 3D)",
        "rows": rows,
        "verdicts": verdicts,
    }
    meta = machine(threads=args.threads, repeats=args.repeats, warmup=args.warmup, quick=args.quick, duration_s=elapsed)
    write_results(NAME, meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
