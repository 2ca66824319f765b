"""Multi-task network vs separate single-task networks: FLOPs, training and inference time, peak memory.

Sharing an encoder is the point of multi-task learning for users with one GPU (or none): this
script measures what it saves on medmtl's own networks. Each configuration pairs one multi-task
``MultiTaskNet`` with the separate single-task networks that answer the same questions (the
separate classifier is the same encoder + classification head the multi-task net shares: for a
UNet backbone its unused decoder is dropped, so it is really encoder + head):

- ``resnet2d_3heads``: 3 binary heads on one 2D ResNet-18 encoder (the radiograph bundle's
  backbone) vs 3 single-head ResNet-18 classifiers; 128 px, batch 16.
- ``basicunet2d``: the ultrasound bundle's default network, a 2D BasicUNet (features
  32, 32, 64, 128, 256, 32, dropout 0.1) with lesion segmentation + 3-class diagnosis, vs a
  seg-only BasicUNet + a BasicUNet-encoder classifier; 128 px, batch 16 (the bundle's settings).
- ``resunet2d``: the network of the BUSI accuracy runs (``--accuracy-json``): the ultrasound
  bundle with ``--backbone resunet`` and channels 16..256 (MONAI ``UNet``, 2 residual units),
  lesion + diagnosis vs seg-only + encoder classifier; 128 px, batch 16.
- ``resunet3d``: the brain MRI bundle's ``resunet`` preset, MONAI ``UNet`` (channels 16..256,
  strides 2, 2 residual units) seg + binary vs seg-only + UNet-encoder classifier; 96^3, batch 2.
- ``basicunet3d``: a small 3D BasicUNet (features 8, 8, 16, 32, 64, 8) seg + binary vs seg-only +
  classifier; 64^3, batch 2.

For each configuration and for **training** (one AdamW step: forward, loss, backward, update) and
**inference** (forward in eval mode under ``torch.inference_mode()``, on copies of the networks):

- **FLOPs** with ``torch.utils.flop_counter.FlopCounterMode`` (training: forward + backward;
  inference: forward). The FLOP ratio multi / separate is the limit sharing allows. The counter
  sees matmuls and convolutions only, so normalisation, activations and the optimizer are time
  without FLOPs: they are why time can exceed the limit.
- **Time**: the multi-task network and each single-task network, training and inference,
  interleaved with ``_bench.interleaved`` (warm-up, then ``--repeats`` rounds, order
  alternating); the separate time of a round is the sum of its single-task networks' times;
  medians. Goal: ``time_ratio / flop_ratio <= 1.05`` per row, taken per round (median and
  interquartile range, ``_bench.ratio_spread``) and ``met`` only when the whole range is at most
  1.05 (``_bench.verdict``; ``unclear`` when it straddles the goal). Because each single-task network
  is timed on its own, the row also gives the multi-task time over the **largest** single-task
  network's (what medmtl's heads and glue add; ~1.0 means no overhead) and the limit measured in
  time instead of FLOPs (largest / sum): where the FLOP limit is missed but the multi-task
  network costs what its largest single-task network costs, the encoder is cheaper per FLOP
  than the decoder, which no sharing can change. On CPU the timing process tunes the allocator as
  the bundles do (``tune_host_allocator``).
- **Peak memory**: each network is measured in a fresh subprocess (this script with
  ``--memory-worker``), so nothing of another model or of the timing runs is counted. The worker
  builds the input batch, runs a throwaway copy of the network once on it and frees it (lazy
  imports, thread pools and per-thread library caches, 10-40 MB per process on CPU, would otherwise
  be counted once per separate network), records the baseline, builds the network (+ targets, loss,
  optimizer), runs one untimed call (optimizer state), resets the peak and runs a second call;
  peak memory = the peak during that call minus the baseline, i.e. parameters, optimizer state,
  gradients, activations and workspace, without the interpreter, torch or the input. On
  CUDA the counters are ``torch.cuda.memory_allocated`` / ``max_memory_allocated``. On CPU they
  are the process's resident set (``VmRSS``) and its peak (``VmHWM``, reset by writing 5 to
  ``/proc/self/clear_refs``), with glibc's mmap threshold fixed at 64 KiB in the worker so freed
  tensors go back to the system and the peak is that of live memory, not of malloc's cache
  (on systems without ``clear_refs`` the worker falls back to ``ru_maxrss`` growth over the first
  call). Goal: the multi-task peak below the **sum** of the separate networks' peaks.

``--accuracy-json PATH`` merges the per-task metrics of trained multi-task vs single-task models
(the BUSI bundle trainings, run separately) into the results and the printed table: a JSON object
``{"multi_task": {"lesion/dice": x, "diagnosis/balanced_accuracy": y}, "seg_only": {...},
"cls_only": {...}, "command": "..."}``; every metric of ``multi_task`` is put side by side with the
single-task model that has it (its difference multi - single is reported; the goal is that sharing
costs no accuracy); a ``<metric>_ci95`` pair is printed beside its metric, other keys (notes,
setting) are kept in the results as given.

Run: ``python benchmarks/multitask_vs_single.py [--quick] [--repeats 5] [--threads 2]
[--configs resunet3d ...] [--accuracy-json PATH]``; prints a table and writes
``benchmarks/results/multitask_vs_single.json`` (``--quick``: 64 px / 32^3 inputs, batch 4 / 2,
2 repeats, into ``multitask_vs_single.quick.json``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _bench import interleaved, machine, print_table, ratio_spread, spread_text, summary, verdict, write_results
from torch.utils.flop_counter import FlopCounterMode

from medmtl.data import Task, TaskKind
from medmtl.engines import tune_host_allocator
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskNet

NAME = "multitask_vs_single"
GOAL = 1.05
"""Goal: time ratio within this factor of the FLOP ratio (issue goal 1), training and inference."""
MEMORY_TAG = "MEMORY_JSON "
CI_SUFFIX = "_ci95"
"""``--accuracy-json``: ``<metric>_ci95`` holds the 95 % interval of ``<metric>``, printed beside it."""
WORKER_ENV = {  # freed tensors go straight back to the system (see the module docstring)
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=65536",
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "65536",
}

LESION = Task(name="lesion", kind="segmentation", classes=["background", "lesion"])
DIAGNOSIS = Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"])
ABNORMAL = Task(name="abnormal", kind="binary")
FINDINGS = tuple(Task(name=n, kind="binary") for n in ("effusion", "fracture", "hardware"))


@dataclass(frozen=True)
class Config:
    """One comparison: a multi-task network vs one single-task network per task.

    Args:
        key: short name (``--configs``).
        title: what is compared, for the table.
        backbone: registry name of the backbone.
        backbone_kwargs: its arguments (a bundle preset where there is one).
        tasks: the multi-task network's tasks; each separate network has one of them.
        shape: input batch shape ``(B, C, *spatial)`` of the full run.
        quick_shape: the shape of ``--quick``.
    """

    key: str
    title: str
    backbone: str
    backbone_kwargs: Mapping[str, Any]
    tasks: tuple[Task, ...]
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    notes: str = ""

    def input_shape(self, quick: bool) -> tuple[int, ...]:
        return self.quick_shape if quick else self.shape

    def task_sets(self) -> list[tuple[Task, ...]]:
        """Index -1: the multi-task network's tasks; 0..n-1: the separate networks' tasks."""
        return [self.tasks, *((t,) for t in self.tasks)]


CONFIGS: dict[str, Config] = {
    c.key: c
    for c in (
        Config(
            "resnet2d_3heads",
            "3 binary heads on one 2D ResNet-18 encoder vs 3 classifiers",
            "resnet18",
            {"spatial_dims": 2, "in_channels": 1},
            FINDINGS,
            (16, 1, 128, 128),
            (4, 1, 64, 64),
            "radiograph bundle backbone (resnet18); issue limit 0.333",
        ),
        Config(
            "basicunet2d",
            "2D BasicUNet seg + cls vs seg-only + encoder classifier",
            "unet",
            {"spatial_dims": 2, "in_channels": 1, "features": (32, 32, 64, 128, 256, 32), "dropout": 0.1},
            (LESION, DIAGNOSIS),
            (16, 1, 128, 128),
            (4, 1, 64, 64),
            "ultrasound bundle default unet preset and batch; issue limit 0.755",
        ),
        Config(
            "resunet2d",
            "2D ResUNet seg + cls vs seg-only + encoder classifier",
            "resunet",
            {
                "spatial_dims": 2,
                "in_channels": 1,
                "channels": (16, 32, 64, 128, 256),
                "strides": (2, 2, 2, 2),
                "num_res_units": 2,
            },
            (LESION, DIAGNOSIS),
            (16, 1, 128, 128),
            (4, 1, 64, 64),
            "the network of the BUSI accuracy runs (ultrasound bundle, --backbone resunet, channels 16..256)",
        ),
        Config(
            "resunet3d",
            "3D UNet (resunet) seg + cls vs seg-only + encoder classifier",
            "resunet",
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "channels": (16, 32, 64, 128, 256),
                "strides": (2, 2, 2, 2),
                "num_res_units": 2,
            },
            (LESION, ABNORMAL),
            (2, 1, 96, 96, 96),
            (2, 1, 32, 32, 32),
            "brain MRI bundle 'resunet' preset (MONAI UNet); issue limit 0.649 for its own 3D UNet",
        ),
        Config(
            "basicunet3d",
            "3D BasicUNet seg + cls vs seg-only + encoder classifier",
            "unet",
            {"spatial_dims": 3, "in_channels": 1, "features": (8, 8, 16, 32, 64, 8)},
            (LESION, ABNORMAL),
            (2, 1, 64, 64, 64),
            (2, 1, 32, 32, 32),
            "small BasicUNet of the sliding-window benchmark",
        ),
    )
}


def build_network(config: Config, tasks: Sequence[Task]) -> MultiTaskNet:
    """A ``MultiTaskNet`` for ``tasks``; without a segmentation task the unused decoder is dropped.

    A classification-only ``MultiTaskNet`` on a UNet backbone never runs the decoder, but still
    holds its parameters; emptying them makes the separate classifier exactly encoder + head in
    memory as well as in FLOPs (what a user would build as a separate classifier).
    """
    net = MultiTaskNet(config.backbone, tasks, backbone_kwargs=dict(config.backbone_kwargs))
    if not net.has_dense:
        for module in net.backbone.decoder_modules():
            for param in module.parameters():
                param.data = torch.empty(0, dtype=param.dtype, device=param.device)
                param.requires_grad_(False)
    return net


def make_targets(tasks: Sequence[Task], shape: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
    """Random labels in the shapes ``MultiTaskLoss`` takes, every sample labelled for every task."""
    g = torch.Generator().manual_seed(1)
    batch, spatial = shape[0], tuple(shape[2:])
    targets: dict[str, torch.Tensor] = {}
    for task in tasks:
        if task.is_dense:
            target = torch.randint(0, task.num_outputs, (batch, 1, *spatial), generator=g).float()
        elif task.kind == TaskKind.MULTICLASS:
            target = torch.randint(0, task.num_outputs, (batch,), generator=g)
        else:
            target = torch.randint(0, 2, (batch, task.num_outputs), generator=g).float()
        targets[task.name] = target.to(device)
        targets[task.present_key] = torch.ones(batch, dtype=torch.bool, device=device)
    return targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Model:
    """One network with its loss and optimizer (training) and an eval-mode copy (inference).

    Args:
        network: the network (moved to ``x``'s device).
        tasks: its tasks (they build the loss and the targets).
        x: the input batch.
        inference_copy: keep an eval-mode deep copy for :meth:`infer` (else :meth:`infer` switches
            ``network`` to eval and :meth:`train_step` back to train: what the memory worker uses).
    """

    def __init__(self, network: torch.nn.Module, tasks: Sequence[Task], x: torch.Tensor, inference_copy: bool) -> None:
        self.x = x
        self.device = x.device
        self.network = network.to(self.device).train()
        self.eval_network = copy.deepcopy(network).eval() if inference_copy else None
        self.loss = MultiTaskLoss(tasks).to(self.device)
        self.targets = make_targets(tasks, x.shape, self.device)
        self.optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-4)

    def train_step(self) -> None:
        if self.eval_network is None:
            self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.network(self.x), self.targets).backward()
        self.optimizer.step()
        _sync(self.device)

    def infer(self) -> None:
        net = self.eval_network if self.eval_network is not None else self.network.eval()
        with torch.inference_mode():
            net(self.x)
        _sync(self.device)

    def flops(self, mode: str) -> int:
        """FLOPs of one training step (forward + backward) or one inference forward pass."""
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


def make_input(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g).to(device)


# -- peak memory (subprocess) -----------------------------------------------------------------------
def _proc_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_kib("VmHWM") is not None


def _maxrss_kib() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB on Linux


def measure_memory(config: Config, index: int, quick: bool, device: torch.device) -> dict[str, Any]:
    """Peak memory (bytes) of one inference pass and one training step of one network (run in a worker).

    Args:
        config: the configuration.
        index: -1 for the multi-task network, ``i`` for the separate network of task ``i``.
        quick: use the ``--quick`` input shape.
        device: where to run.
    """
    logging.disable(logging.WARNING)
    tasks = config.task_sets()[index + 1]
    x = make_input(config.input_shape(quick), device)
    # One step of a throwaway copy of the network on the same input first: lazy imports, thread
    # pools and per-thread library caches then belong to the baseline and are not counted once per
    # network (warming up on a smaller input left a second thread idle and its caches uncounted).
    warm = Model(build_network(config, tasks), tasks, x, inference_copy=False)
    warm.infer()
    warm.train_step()
    del warm
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = (_proc_kib("VmRSS") or 0) * 1024
    model = Model(build_network(config, tasks), tasks, x, inference_copy=False)
    result: dict[str, Any] = {"tasks": [t.name for t in tasks]}
    for mode, fn in (("inference", model.infer), ("training", model.train_step)):
        if device.type == "cuda":
            fn()
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            result[mode] = torch.cuda.max_memory_allocated(device) - base
            result["method"] = "torch.cuda.max_memory_allocated - memory_allocated before building"
        elif _reset_cpu_peak() and base:
            fn()
            _reset_cpu_peak()
            fn()
            result[mode] = (_proc_kib("VmHWM") or 0) * 1024 - base
            result["method"] = "VmHWM (reset via clear_refs) - VmRSS before building, mmap threshold 64 KiB"
        else:  # no /proc: growth of the lifetime peak over the first call of each mode
            before = _maxrss_kib()
            fn()
            fn()
            result[mode] = max(0, _maxrss_kib() - before) * 1024
            result["method"] = "ru_maxrss growth over the first call (lower bound)"
    return result


def memory_in_subprocess(config: Config, index: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`measure_memory` in a fresh interpreter and return its result."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-worker",
        config.key,
        str(index),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        *(["--quick"] if args.quick else []),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **WORKER_ENV}, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MEMORY_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"memory worker for {config.key} network {index} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(MEMORY_TAG) :])


# -- the comparison -------------------------------------------------------------------------------
def compare(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """FLOPs, times and peak memory of one configuration, training and inference."""
    device = torch.device(args.device)
    shape = config.input_shape(args.quick)
    x = make_input(shape, device)
    torch.manual_seed(0)
    multi = Model(build_network(config, config.tasks), config.tasks, x, inference_copy=True)
    separate = [Model(build_network(config, [t]), [t], x, inference_copy=True) for t in config.tasks]

    flops = {mode: (multi.flops(mode), sum(m.flops(mode) for m in separate)) for mode in ("training", "inference")}
    names = [t.name for t in config.tasks]
    candidates: dict[str, Callable[[], None]] = {}
    for mode, fn_name in (("training", "train_step"), ("inference", "infer")):
        candidates[f"{mode} multi"] = getattr(multi, fn_name)
        for name, model in zip(names, separate, strict=True):
            candidates[f"{mode} only {name}"] = getattr(model, fn_name)
    times = interleaved(candidates, args.repeats, warmup=args.warmup)
    for mode in ("training", "inference"):  # the separate networks of one round, summed round by round
        times[f"{mode} separate"] = [
            sum(each) for each in zip(*(times[f"{mode} only {n}"] for n in names), strict=True)
        ]
    memory = None
    if not args.no_memory:
        memory = [memory_in_subprocess(config, i, args) for i in range(-1, len(config.tasks))]

    row: dict[str, Any] = {
        "key": config.key,
        "configuration": config.title,
        "notes": config.notes,
        "backbone": config.backbone,
        "backbone_kwargs": dict(config.backbone_kwargs),
        "tasks": {t.name: t.kind.value for t in config.tasks},
        "input_shape": list(shape),
        "params_multi": multi.num_parameters(),
        "params_separate": [m.num_parameters() for m in separate],
    }
    for mode in ("training", "inference"):
        flops_multi, flops_separate = flops[mode]
        t_multi, t_sep = statistics.median(times[f"{mode} multi"]), statistics.median(times[f"{mode} separate"])
        largest = max(statistics.median(times[f"{mode} only {n}"]) for n in names)
        flop_ratio, time_ratio = flops_multi / flops_separate, t_multi / t_sep
        # per round: (multi / separate time) / FLOP ratio, its median and interquartile range
        over_flop = ratio_spread([t / flop_ratio for t in times[f"{mode} multi"]], times[f"{mode} separate"])
        entry: dict[str, Any] = {
            "flops_multi": flops_multi,
            "flops_separate": flops_separate,
            "flop_ratio": flop_ratio,
            "time_multi": summary(times[f"{mode} multi"]),
            "time_separate": summary(times[f"{mode} separate"]),
            "time_ratio": time_ratio,  # ratio of the medians
            "time_ratio_spread": ratio_spread(times[f"{mode} multi"], times[f"{mode} separate"]),  # per round
            "time_over_flop_ratio": over_flop["median"],
            "time_over_flop_spread": over_flop,
            "time_goal_verdict": verdict(over_flop, GOAL),  # met only when the whole IQR is <= GOAL
            "time_each_separate": {n: summary(times[f"{mode} only {n}"]) for n in names},
            # what medmtl adds on top of the largest single-task network (its heads and glue): the
            # multi-task network can never be cheaper than that network, whatever the FLOP ratio says
            "time_multi_over_largest_separate": t_multi / largest,
            "time_limit_from_separate_times": largest / t_sep,
        }
        if memory is not None:
            peak_multi = memory[0][mode]
            peaks_separate = [m[mode] for m in memory[1:]]
            entry["memory"] = {
                "method": memory[0]["method"],
                "peak_multi_bytes": peak_multi,
                "peak_separate_bytes": peaks_separate,
                "peak_separate_sum_bytes": sum(peaks_separate),
                "ratio_to_sum": peak_multi / sum(peaks_separate),
                "goal_met": peak_multi < sum(peaks_separate),
            }
        row[mode] = entry
    return row


def load_accuracy(path: Path) -> dict[str, Any]:
    """Read ``--accuracy-json`` and pair every multi-task metric with the single-task model that has it.

    Raises:
        ValueError: when the file has no ``multi_task`` dict or no single-task model dict.
    """
    data = json.loads(path.read_text())
    multi = data.get("multi_task") if isinstance(data, dict) else None
    singles = {k: v for k, v in data.items() if k != "multi_task" and isinstance(v, dict)} if multi else {}
    if not isinstance(multi, dict) or not singles:
        raise ValueError(
            f"{path}: expected {{'multi_task': {{metric: value}}, 'seg_only': {{...}}, 'cls_only': {{...}}, "
            f"'command': '...'}}, got keys {sorted(data) if isinstance(data, dict) else type(data).__name__}"
        )
    rows = []
    for metric, value in multi.items():
        if metric.endswith(CI_SUFFIX):
            continue  # shown next to its metric
        owner = next((name for name, metrics in singles.items() if metric in metrics), None)
        single = singles[owner][metric] if owner else None
        numeric = isinstance(value, (int, float)) and isinstance(single, (int, float))
        rows.append(
            {
                "metric": metric,
                "multi_task": value,
                "multi_task_ci95": multi.get(metric + CI_SUFFIX),
                "single_task": single,
                "single_task_ci95": singles[owner].get(metric + CI_SUFFIX) if owner else None,
                "single_task_model": owner,
                "difference": value - single if numeric else None,
            }
        )
    return {"source": str(path), "command": data.get("command"), "rows": rows, "raw": data}


def _with_ci(value: Any, ci: Any) -> Any:
    if isinstance(value, float) and isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"{value:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]"
    return value


def _mb(n: int | None) -> float | None:
    return None if n is None else n / 2**20


def report(rows: list[dict[str, Any]], accuracy: dict[str, Any] | None) -> None:
    table = []
    for r in rows:
        for mode in ("training", "inference"):
            e, mem = r[mode], r[mode].get("memory")
            table.append(
                [
                    r["key"],
                    mode,
                    e["flop_ratio"],
                    e["time_ratio_spread"]["median"],
                    spread_text(e["time_over_flop_spread"]),
                    e["time_goal_verdict"],
                    e["time_limit_from_separate_times"],
                    e["time_multi_over_largest_separate"],
                    e["time_multi"]["median_s"],
                    e["time_separate"]["median_s"],
                    _mb(mem["peak_multi_bytes"]) if mem else None,
                    _mb(mem["peak_separate_sum_bytes"]) if mem else None,
                    ("pass" if mem["goal_met"] else "FAIL") if mem else None,
                ]
            )
    print_table(
        [
            "configuration",
            "mode",
            "FLOP ratio",
            "time ratio",
            "time/FLOP (per round)",
            f"<= {GOAL}",
            "time limit",
            "multi/largest",
            "multi s",
            "separate s",
            "peak MiB multi",
            "sum separate",
            "mem < sum",
        ],
        table,
        "multi-task vs separate single-task networks (ratios multi / separate; per-round medians, IQR)",
    )
    for r in rows:
        print(f"  {r['key']}: {r['configuration']}, input {'x'.join(map(str, r['input_shape']))} ({r['notes']})")
    if accuracy:
        print_table(
            ["metric", "multi-task", "single-task", "single model", "multi - single"],
            [
                [
                    a["metric"],
                    _with_ci(a["multi_task"], a["multi_task_ci95"]),
                    _with_ci(a["single_task"], a["single_task_ci95"]),
                    a["single_task_model"],
                    a["difference"],
                ]
                for a in accuracy["rows"]
            ],
            f"accuracy, trained models ({accuracy['source']})",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 px / 32^3 inputs, 2 repeats: a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 2)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed calls of each candidate (default 2; --quick: 1)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--accuracy-json", type=Path, default=None, help="per-task metrics to merge (see docstring)")
    parser.add_argument("--memory-worker", nargs=2, metavar=("CONFIG", "INDEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        if args.device == "cpu" and any(os.environ.get(k) != v for k, v in WORKER_ENV.items()):
            sys.exit("--memory-worker measures CPU memory only with WORKER_ENV set: use memory_in_subprocess()")
        key, index = args.memory_worker
        result = measure_memory(CONFIGS[key], int(index), args.quick, torch.device(args.device))
        print(MEMORY_TAG + json.dumps(result), flush=True)
        return
    tune_host_allocator(args.device)  # the timings run as the bundles do on CPU (not the memory workers)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    accuracy = load_accuracy(args.accuracy_json) if args.accuracy_json else None
    logging.disable(logging.WARNING)  # classification-only UNets warn that their decoder is unused

    start = time.perf_counter()
    rows = []
    for key in args.configs:
        print(f"[{time.strftime('%X')}] {key}...", flush=True)
        rows.append(compare(CONFIGS[key], args))
    elapsed = time.perf_counter() - start
    report(rows, accuracy)
    met: dict[str, str] = {}  # goal -> met / missed / unclear (the per-round IQR straddles the time goal)
    for r in rows:
        for mode in ("training", "inference"):
            met[f"{r['key']} {mode} time"] = r[mode]["time_goal_verdict"]
            if "memory" in r[mode]:
                met[f"{r['key']} {mode} memory"] = "met" if r[mode]["memory"]["goal_met"] else "missed"
    counts = ", ".join(f"{sum(v == k for v in met.values())} {k}" for k in ("met", "missed", "unclear"))
    print(f"goals: {counts} of {len(met)}; benchmark time {elapsed:.0f} s")
    results: dict[str, Any] = {
        "goal": f"time_ratio / flop_ratio <= {GOAL} (training and inference); multi-task peak memory < sum of "
        "the separate networks' peaks; sharing must not cost accuracy",
        "rows": rows,
        "goal_verdicts": met,
    }
    if accuracy:
        results["accuracy"] = accuracy
    meta = machine(
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        quick=args.quick,
        device=args.device,
        duration_s=elapsed,
    )
    write_results(NAME, meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
