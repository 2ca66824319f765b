"""Sliding-window inference: medmtl's multi-task inferer vs MONAI's, and throughput vs volume size.

``MultiTaskSlidingWindowInferer`` runs the windows once, stitches the segmentation heads through
MONAI's ``sliding_window_inference`` and aggregates the per-window class logits on the side. Its
cost should be that of MONAI stitching the segmentation head alone. Measured on the real Colin27 T1
(``../shared/data/brain/colin27_ch2.nii.gz``, 181x217x181, 1 mm, z-scored), with a 3D
``MultiTaskNet`` (BasicUNet backbone, features (8, 8, 16, 32, 64, 8)), one segmentation task and one
binary task:

- **Inferer overhead** on the 1 mm volume, ROI 96^3, overlap 0.25, Gaussian blending: medmtl's
  inferer vs MONAI ``sliding_window_inference`` of a wrapper returning the segmentation logits only
  (goal: ratio <= 1.02, per round; ``met`` only when the whole interquartile range is <= 1.02),
  the naive alternative (class logits returned to MONAI as a 1x1x1 map and blended), and medmtl's whole-volume pass (``whole_volume_budget_mb`` large: one forward pass).
  The stitched masks of medmtl and MONAI are compared (they should be equal).
- **Throughput** (voxels/s of the input) of medmtl's inferer with UNet, ResUNet and MeshNet
  backbones on the volume resampled to 2 mm (91x109x91, ROI 64^3: 2 mm keeps the 4x volumes of
  three backbones within the time budget of a 2-core machine) and tiled to 2x and 4x its size
  (mirrored copies along the first, then the third axis, so the window count grows with the
  volume): the time per voxel should not grow.

The volume and the stitching buffer stay on the host (``device="cpu"``, ``--buffer-device``); the
windows run on ``--device`` (``sw_device``): the CPU, or a GPU when one is visible, where ``--amp``
runs them under ``torch.autocast`` and every timed pass ends with a CUDA synchronize. On the CPU the
allocator is tuned as the bundles tune it (``tune_host_allocator``), for every candidate alike.

Run: ``python benchmarks/sliding_window.py [--quick] [--repeats 5] [--threads 2] [--device cuda]
[--amp] [--buffer-device cuda]``; prints tables and writes ``benchmarks/results/sliding_window.json``
(on CUDA ``sliding_window_cuda[_amp].json``; ``--quick``: a 4 mm volume, ROI 32^3, 2 repeats, into
``<name>.quick.json``). Skipped (exit 0) when the data is absent.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from _bench import (
    SHARED_DATA,
    interleaved,
    machine,
    missing_data,
    print_table,
    ratio_spread,
    spread_text,
    summary,
    verdict,
    write_results,
)
from monai.inferers import sliding_window_inference

from medmtl.data import Task
from medmtl.engines import tune_host_allocator
from medmtl.inference import MultiTaskSlidingWindowInferer
from medmtl.networks import MultiTaskNet

NAME = "sliding_window"
VOLUME = SHARED_DATA / "brain" / "colin27_ch2.nii.gz"
SEG = Task(name="brain", kind="segmentation", classes=["background", "brain"])
CLS = Task(name="abnormal", kind="binary")
TASKS = [SEG, CLS]
BACKBONES: dict[str, dict[str, Any]] = {  # small on purpose: a 2-core CPU runs the 4x volume too
    "unet": {"spatial_dims": 3, "features": (8, 8, 16, 32, 64, 8)},
    "resunet": {"spatial_dims": 3, "channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 1},
    "meshnet": {"spatial_dims": 3, "channels": 8, "dilations": "revisited"},
}
WHOLE_BUDGET_MB = 1e9  # "large": always the whole-volume pass


def load_volume(voxel_mm: float) -> torch.Tensor:
    """Colin27 as ``(1, 1, X, Y, Z)`` float32, z-scored, resampled (trilinear) to ``voxel_mm``."""
    image = nib.load(str(VOLUME))
    data = torch.from_numpy(np.asarray(image.get_fdata(dtype=np.float32)))
    data = (data - data.mean()) / data.std()
    volume = data[None, None]
    spacing = [float(s) for s in image.header.get_zooms()[:3]]
    if any(abs(voxel_mm - s) > 1e-3 for s in spacing):
        size = [math.ceil(n * s / voxel_mm) for n, s in zip(volume.shape[2:], spacing, strict=True)]
        volume = F.interpolate(volume, size=size, mode="trilinear", align_corners=False)
    return volume.contiguous()


TILE_AXES = (0, 2)
"""Spatial axes doubled for 2x, then 4x: Colin27's two 181-voxel axes, where doubling the size also
doubles the number of windows (doubling 109 voxels would take 2 windows to 5, not 4)."""


def tile(volume: torch.Tensor, factor: int) -> torch.Tensor:
    """``factor`` (1, 2 or 4) times the volume: mirrored copies along the :data:`TILE_AXES`."""
    out = volume
    for axis in TILE_AXES[: int(math.log2(factor))]:
        out = torch.cat([out, out.flip(2 + axis)], dim=2 + axis)
    return out.contiguous()


def windows(shape: tuple[int, ...] | list[int], roi: int, overlap: float = 0.25) -> int:
    return math.prod(len(_positions(n, roi, overlap)) for n in shape)


def _positions(size: int, roi: int, overlap: float) -> range:
    """Window starts along one axis, as MONAI places them (the last window ends at the border)."""
    if size <= roi:
        return range(1)
    interval = int(roi * (1 - overlap))
    return range(math.ceil((size - roi) / interval) + 1)


def network(backbone: str, device: torch.device) -> MultiTaskNet:
    torch.manual_seed(0)
    return MultiTaskNet(backbone, TASKS, backbone_kwargs=BACKBONES[backbone]).eval().to(device)


def _pass(
    fn: Callable[[], Any], args: argparse.Namespace, keep: dict[str, Any] | None = None, key: str = ""
) -> Callable[[], Any]:
    """``fn`` under ``no_grad`` (and autocast with ``--amp``), ended by a CUDA synchronize on a GPU.

    Its last result is kept in ``keep[key]`` (to check the answers agree).
    """

    def run() -> Any:
        with torch.no_grad(), torch.autocast(args.device.type, enabled=args.amp):
            out = fn()
        if args.device.type == "cuda":
            torch.cuda.synchronize(args.device)
        if keep is not None:
            keep[key] = out
        return out

    return run


# --------------------------------------------------------------------------- inferer overhead
def bench_overhead(args: argparse.Namespace) -> dict[str, Any]:
    voxel_mm, roi = (4.0, 32) if args.quick else (1.0, 96)
    volume = load_volume(voxel_mm).to(args.buffer_device)
    net = network("unet", args.device)
    common = {
        "roi_size": (roi,) * 3,
        "sw_batch_size": args.sw_batch_size,
        "overlap": 0.25,
        "mode": "gaussian",
        "sw_device": args.device,
        "device": args.buffer_device,
    }
    medmtl = MultiTaskSlidingWindowInferer(TASKS, **common)
    whole = MultiTaskSlidingWindowInferer(TASKS, whole_volume_budget_mb=WHOLE_BUDGET_MB, **common)
    monai_kwargs = {
        "roi_size": common["roi_size"],
        "sw_batch_size": common["sw_batch_size"],
        "overlap": common["overlap"],
        "mode": common["mode"],
        "sw_device": args.device,
        "device": args.buffer_device,
    }

    def seg_only(window: torch.Tensor) -> torch.Tensor:
        return net(window)[SEG.name]

    def naive(window: torch.Tensor) -> dict[str, torch.Tensor]:
        out = net(window)
        logits = out[CLS.name]
        return {SEG.name: out[SEG.name], CLS.name: logits.reshape(*logits.shape, 1, 1, 1)}

    out: dict[str, Any] = {}
    candidates = {
        "medmtl MultiTaskSlidingWindowInferer": _pass(lambda: medmtl(volume, net), args, out, "sliding"),
        "MONAI sliding_window_inference, seg head only": _pass(
            lambda: sliding_window_inference(volume, predictor=seg_only, **monai_kwargs), args, out, "monai"
        ),
        "naive: class logits as a 1x1x1 map through MONAI": _pass(
            lambda: sliding_window_inference(volume, predictor=naive, **monai_kwargs), args
        ),
        "medmtl whole-volume pass": _pass(lambda: whole(volume, net), args, out, "whole"),
    }
    names = list(candidates)
    print(f"[{time.strftime('%X')}] overhead: volume {tuple(volume.shape[2:])}, ROI {roi}^3...", flush=True)
    batch = common["sw_batch_size"]
    last = (windows(volume.shape[2:], roi) % batch) or batch

    def warm_windows() -> None:  # every window shape the sliding candidates use, plus the importance map
        with torch.no_grad(), torch.autocast(args.device.type, enabled=args.amp):
            for n in {batch, last}:
                net(torch.zeros(n, 1, roi, roi, roi, device=args.device))
            medmtl(volume[..., :roi, :roi, :roi], net)

    times = interleaved(candidates, args.repeats, warmups=[warm_windows, candidates[names[3]]])

    ours, reference, whole_out = out["sliding"], out["monai"], out["whole"]
    if (whole.last_pass, medmtl.last_pass) != ("whole", "sliding"):
        raise RuntimeError(f"expected a whole and a sliding pass, got {whole.last_pass} and {medmtl.last_pass}")
    base = statistics.median(times[names[1]])
    rows = [
        {
            "method": name,
            "time": summary(values),
            "ratio_vs_monai_seg_only": statistics.median(values) / base,  # ratio of the medians
            "ratio_vs_monai_seg_only_spread": ratio_spread(values, times[names[1]]),  # per round
        }
        for name, values in times.items()
    ]
    spread = rows[0]["ratio_vs_monai_seg_only_spread"]
    return {
        "volume": VOLUME.name,
        "voxel_mm": voxel_mm,
        "shape": list(volume.shape[2:]),
        "roi_size": roi,
        "overlap": common["overlap"],
        "sw_batch_size": common["sw_batch_size"],
        "mode": common["mode"],
        "buffer_device": str(args.buffer_device),
        "network": f"MultiTaskNet unet features {BACKBONES['unet']['features']}, tasks: {SEG.name} (segmentation), "
        f"{CLS.name} (binary)",
        "methods": rows,
        "goal": {
            "ratio_medmtl_vs_monai_seg_only": {
                "goal": "<= 1.02",
                "measured": spread["median"],
                "spread": spread,
                "verdict": verdict(spread, 1.02),
            }
        },
        "whole_vs_sliding_ratio": statistics.median(times[names[3]]) / statistics.median(times[names[0]]),
        "whole_volume_estimated_activation_mb": max(whole._bytes_per_voxel.values()) * volume[0, 0].numel() / 2**20,
        "checks": {
            "seg_max_abs_diff_medmtl_vs_monai": float((ours[SEG.name].float() - reference.float()).abs().max()),
            "seg_argmax_agreement_whole_vs_sliding": float(
                (whole_out[SEG.name].cpu().argmax(1) == ours[SEG.name].cpu().argmax(1)).float().mean()
            ),
            "class_logit_sliding": ours[CLS.name].flatten().tolist(),
            "class_logit_whole": whole_out[CLS.name].flatten().tolist(),
        },
    }


# --------------------------------------------------------------------------- throughput vs size
def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    voxel_mm, roi = (4.0, 32) if args.quick else (2.0, 64)
    base = load_volume(voxel_mm).to(args.buffer_device)
    volumes = {factor: tile(base, factor) for factor in (1, 2, 4)}
    common = {"roi_size": (roi,) * 3, "sw_batch_size": args.sw_batch_size, "overlap": 0.25, "mode": "gaussian"}
    inferer = MultiTaskSlidingWindowInferer(TASKS, sw_device=args.device, device=args.buffer_device, **common)
    nets = {name: network(name, args.device) for name in BACKBONES}
    candidates = {
        (name, factor): _pass(lambda net=net, vol=vol: inferer(vol, net), args)
        for name, net in nets.items()
        for factor, vol in volumes.items()
    }
    print(
        f"[{time.strftime('%X')}] throughput: {len(nets)} backbones x volumes "
        f"{[tuple(v.shape[2:]) for v in volumes.values()]}, ROI {roi}^3...",
        flush=True,
    )
    keyed = {f"{name} {factor}x": fn for (name, factor), fn in candidates.items()}
    times = interleaved(keyed, args.repeats, warmups=[candidates[(name, 1)] for name in nets])
    rows = []
    for name in nets:
        per_voxel_1x = statistics.median(times[f"{name} 1x"]) / volumes[1][0, 0].numel()
        per_window_1x = statistics.median(times[f"{name} 1x"]) / windows(volumes[1].shape[2:], roi)
        for factor, vol in volumes.items():
            values = times[f"{name} {factor}x"]
            voxels, n_windows = vol[0, 0].numel(), windows(vol.shape[2:], roi)
            per_voxel = statistics.median(values) / voxels
            rows.append(
                {
                    "backbone": name,
                    "scale": factor,
                    "shape": list(vol.shape[2:]),
                    "voxels": voxels,
                    "windows": n_windows,
                    "time": summary(values),
                    "voxels_per_s": 1 / per_voxel,
                    "time_per_voxel_vs_1x": per_voxel / per_voxel_1x,
                    "time_per_window_vs_1x": statistics.median(values) / n_windows / per_window_1x,
                    "parameters": sum(p.numel() for p in nets[name].parameters()),
                }
            )
    return {
        "volume": VOLUME.name,
        "voxel_mm": voxel_mm,
        "roi_size": roi,
        "overlap": common["overlap"],
        "sw_batch_size": common["sw_batch_size"],
        "buffer_device": str(args.buffer_device),
        "backbones": {
            k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()} for k, v in BACKBONES.items()
        },
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 mm volume, ROI 32^3, 2 repeats: a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sw-batch-size", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where windows run")
    parser.add_argument("--amp", action="store_true", help="windows under torch.autocast (CUDA)")
    parser.add_argument("--buffer-device", default="cpu", help="where the volume and the stitched output live")
    args = parser.parse_args()
    args.device, args.buffer_device = torch.device(args.device), torch.device(args.buffer_device)
    name = NAME if args.device.type == "cpu" else f"{NAME}_{args.device.type}" + ("_amp" if args.amp else "")
    args.repeats = args.repeats or (2 if args.quick else 5)
    if missing_data(VOLUME):
        return
    torch.set_num_threads(args.threads)
    tune_host_allocator(args.device)  # as the bundles' inference.json does on CPU; all candidates share it
    start = time.perf_counter()
    overhead = bench_overhead(args)
    throughput = bench_throughput(args)
    elapsed = time.perf_counter() - start

    print_table(
        ["method", "median s", "x MONAI seg-only (per-round median, IQR)"],
        [
            [r["method"], r["time"]["median_s"], spread_text(r["ratio_vs_monai_seg_only_spread"])]
            for r in overhead["methods"]
        ],
        f"inference on {overhead['volume']} {tuple(overhead['shape'])} at {overhead['voxel_mm']:g} mm, "
        f"ROI {overhead['roi_size']}^3, overlap 0.25, gaussian, sw_batch_size {overhead['sw_batch_size']}, "
        f"windows on {args.device}{' (AMP)' if args.amp else ''}, buffer on {args.buffer_device}",
    )
    checks, goal = overhead["checks"], overhead["goal"]["ratio_medmtl_vs_monai_seg_only"]
    print(
        f"goal medmtl / MONAI seg-only {spread_text(goal['spread'])} (<= 1.02): {goal['verdict']}; "
        f"whole / sliding {overhead['whole_vs_sliding_ratio']:.3f}; seg max |medmtl - MONAI| "
        f"{checks['seg_max_abs_diff_medmtl_vs_monai']:.2g}; whole vs sliding argmax agreement "
        f"{checks['seg_argmax_agreement_whole_vs_sliding']:.4f}"
    )
    print_table(
        ["backbone", "scale", "shape", "windows", "median s", "Mvoxels/s", "s/voxel vs 1x", "s/window vs 1x"],
        [
            [r["backbone"], f"{r['scale']}x", "x".join(map(str, r["shape"])), r["windows"], r["time"]["median_s"]]
            + [r["voxels_per_s"] / 1e6, r["time_per_voxel_vs_1x"], r["time_per_window_vs_1x"]]
            for r in throughput["rows"]
        ],
        f"throughput of MultiTaskSlidingWindowInferer, {throughput['voxel_mm']:g} mm volume tiled, "
        f"ROI {throughput['roi_size']}^3",
    )
    print(f"benchmark time {elapsed:.0f} s")
    meta = machine(
        threads=args.threads,
        repeats=args.repeats,
        quick=args.quick,
        data=str(SHARED_DATA),
        duration_s=elapsed,
        buffer_device=str(args.buffer_device),
        device=str(args.device),
        amp=args.amp,
        gpu=torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else None,
    )
    write_results(name, meta, {"overhead": overhead, "throughput": throughput}, quick=args.quick)


if __name__ == "__main__":
    main()
