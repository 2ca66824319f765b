"""Multi-task network vs separate single-task networks: FLOPs, training-step time, peak memory.

Sharing an encoder is the point of multi-task learning for users with one GPU (or none): this
script measures what it saves on medmtl's own networks. For each configuration it builds the
multi-task network and the separate single-task networks that answer the same questions, counts
the FLOPs of one training step (forward + backward, ``torch.utils.flop_counter.FlopCounterMode``),
and times training steps interleaved (warm-up, then the median of ``--repeats`` rounds, alternating
multi-task and separate models so machine noise hits both alike). Ratios < 1 mean the multi-task
network is cheaper; the FLOP ratio is the limit that sharing allows.

Run: ``python benchmarks/multitask_vs_single.py [--repeats 7] [--threads 2]``; prints a table and
writes ``benchmarks/results/multitask_vs_single.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from medmtl.data import Task
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskClassifier, MultiTaskNet

RESULTS = Path(__file__).parent / "results"

SEG = Task(name="lesion", kind="segmentation", classes=["background", "lesion"])
CLS = Task(name="malignant", kind="binary")
FINDINGS = [Task(name=n, kind="binary") for n in ("abnormal", "acl", "meniscus")]


def _targets(tasks: list[Task], batch: int, spatial: tuple[int, ...]) -> dict[str, torch.Tensor]:
    targets: dict[str, torch.Tensor] = {}
    for task in tasks:
        if task.is_dense:
            targets[task.name] = (torch.rand(batch, 1, *spatial) > 0.7).float()
        else:
            targets[task.name] = (torch.rand(batch, task.num_outputs) > 0.5).float()
        targets[f"{task.name}_present"] = torch.ones(batch, dtype=torch.bool)
    return targets


class _Model:
    """One network with its loss and optimizer: ``step()`` is one training iteration."""

    def __init__(self, network: torch.nn.Module, tasks: list[Task], x: torch.Tensor) -> None:
        self.network, self.x = network, x
        self.loss = MultiTaskLoss(tasks)
        self.targets = _targets(tasks, x.shape[0], tuple(x.shape[2:]))
        self.optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.network(self.x), self.targets).backward()
        self.optimizer.step()


def _flops(models: list[_Model]) -> int:
    total = 0
    for model in models:
        with FlopCounterMode(display=False) as counter:
            model.optimizer.zero_grad(set_to_none=True)
            model.loss(model.network(model.x), model.targets).backward()
        total += counter.get_total_flops()
    return total


def _peak_bytes(models: list[_Model]) -> int | None:
    """Peak CUDA memory of one training step of each model in turn (None on CPU: torch's CPU
    allocator has no peak counter, and process RSS would mix in the other models)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.reset_peak_memory_stats()
    for model in models:
        model.step()
    return torch.cuda.max_memory_allocated()


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, multi: _Model, separate: list[_Model], repeats: int) -> dict:
    run_multi = multi.step

    def run_separate() -> None:
        for model in separate:
            model.step()

    for _ in range(2):  # warm-up: allocator, kernels, lazy init
        run_multi()
        run_separate()
    multi_times, separate_times = [], []
    for _ in range(repeats):  # interleaved
        multi_times.append(_time(run_multi))
        separate_times.append(_time(run_separate))
    flops_multi, flops_separate = _flops([multi]), _flops(separate)
    peak_multi, peak_separate = _peak_bytes([multi]), _peak_bytes(separate)
    params_multi = sum(p.numel() for p in multi.network.parameters())
    params_separate = sum(p.numel() for m in separate for p in m.network.parameters())
    return {
        "configuration": name,
        "flops_multi": flops_multi,
        "flops_separate": flops_separate,
        "flop_ratio": flops_multi / flops_separate,
        "time_multi_s": statistics.median(multi_times),
        "time_separate_s": statistics.median(separate_times),
        "time_ratio": statistics.median(multi_times) / statistics.median(separate_times),
        "params_multi": params_multi,
        "params_separate": params_separate,
        "memory_ratio": None if peak_multi is None else peak_multi / peak_separate,
    }


def configurations(batch: int) -> list[tuple[str, _Model, list[_Model]]]:
    torch.manual_seed(0)
    x2d = torch.randn(batch, 1, 128, 128)
    x3d = torch.randn(max(1, batch // 4), 1, 64, 64, 64)
    res = {"backbone_kwargs": {"layers": (1, 1, 1, 1), "block_inplanes": (32, 64, 128, 256)}}
    unet2d = {"spatial_dims": 2, "features": (16, 16, 32, 64, 128, 16)}
    unet3d = {"spatial_dims": 3, "features": (8, 8, 16, 32, 64, 8)}
    return [
        (
            "3 classification heads, one 2D ResNet encoder",
            _Model(MultiTaskClassifier(FINDINGS, backbone="resnet", **res), FINDINGS, x2d),
            [_Model(MultiTaskClassifier([t], backbone="resnet", **res), [t], x2d) for t in FINDINGS],
        ),
        (
            "2D BasicUNet seg+cls vs seg-only + classifier",
            _Model(MultiTaskNet("unet", [SEG, CLS], backbone_kwargs=unet2d), [SEG, CLS], x2d),
            [
                _Model(MultiTaskNet("unet", [SEG], backbone_kwargs=unet2d), [SEG], x2d),
                _Model(MultiTaskNet("unet", [CLS], backbone_kwargs=unet2d), [CLS], x2d),
            ],
        ),
        (
            "3D BasicUNet seg+cls vs seg-only + classifier",
            _Model(MultiTaskNet("unet", [SEG, CLS], backbone_kwargs=unet3d), [SEG, CLS], x3d),
            [
                _Model(MultiTaskNet("unet", [SEG], backbone_kwargs=unet3d), [SEG], x3d),
                _Model(MultiTaskNet("unet", [CLS], backbone_kwargs=unet3d), [CLS], x3d),
            ],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [compare(name, multi, separate, args.repeats) for name, multi, separate in configurations(args.batch)]
    header = f"{'configuration':<48} {'FLOP ratio':>10} {'time ratio':>10} {'time/FLOP':>9} {'memory':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['configuration']:<48} {r['flop_ratio']:>10.3f} {r['time_ratio']:>10.3f} "
            f"{r['time_ratio'] / r['flop_ratio']:>9.3f} "
            + (f"{r['memory_ratio']:>7.3f}" if r["memory_ratio"] is not None else f"{'n/a':>7}")
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "multitask_vs_single.json"
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "batch": args.batch,
    }
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
