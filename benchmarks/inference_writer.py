"""Inference writer: its share of a brain inference's wall time, before and after mapping back once per case.

``MultiTaskPredictionWriter`` maps each segmentation task's logits back to the input file's grid
(MONAI ``Invertd``: the 2 mm resampling and the reorientation undone) before the argmax. It used to
invert each task on its own (one resampling grid per task), take torch's argmax over the channel
axis (a strided reduction, slow on a CPU) and compute the voxel entropy of the whole volume for a
column that only needs the voxels inside the mask. Now it inverts every task's channels in one call
(one grid per case), takes the argmax class by class and computes the entropy inside the mask only.

Measured here: the brain bundle's inference path on the real Colin27 T1
(``../shared/data/brain/colin27_ch2.nii.gz``, 181x217x181, 1 mm): the network, the evaluation
preprocessing (RAS, 2 mm, z-score) and the sliding-window inferer are built from the bundle's config
layers (``medmtl.bundle_layers.config_layers("brain_mri_mtl")``; ``inference.json`` takes its
``preprocessing`` and ``inferer`` from them), with untrained weights (seeded: no trained brain run
on this machine; the writer's work does not depend on the weights, only on the shapes), run by a
MONAI ``SupervisedEvaluator`` as ``inference.json`` runs it (MONAI ``Dataset``, batch 1,
``MultiTaskPrepareBatch``, ``MirrorTTAInferer`` without mirroring, ``FlattenTaskOutputsd``, the
writer). Left out: checkpoint loading and the MLflow handlers (fixed costs that would only make the
writer's share look smaller).

Three candidates, alternating in each round: the writer as of ``--baseline-rev`` (its source read
with ``git show``, so the old code runs unchanged), the working tree's with its default
``mask_resampling="interpolate"`` (every class channel mapped back, the exact argmax) and the working
tree's with the opt-in ``mask_resampling="nearest"`` (only the argmax label map mapped back, by nearest
neighbour). Per round and candidate: the wall time of ``evaluator.run()`` on the case (load,
preprocess, infer, write) and the time spent in the writer's handlers (timed around them: ignite runs
handlers in the order they were added). Reported: medians and interquartile ranges over the rounds of
both times, of the writer's share (per-round ratios, ``_bench.ratio_spread``) and of the per-round
speed-ups; the goal (writer <= 25 % of the wall time) counts as met only when the upper quartile of
the share is below it (``_bench.verdict``), judged for both modes. The outputs of the last round are
compared: the default's masks against the old writer's (max absolute difference, affines) and
``predictions.csv`` (byte for byte); the nearest mode's masks against the default's (fraction of
voxels that differ, Dice per class between the two). The untrained network's masks are noisy (many
borders), so a second comparison uses structure-like logits: the Colin27 brain mask
(``colin27_brainmask.nii.gz``) through the same preprocessing (bilinear, as the image), its 0-1
values turned into brain logits ``8 * (p - 0.5)``, written in both modes; reported: the voxels that
differ, Dice between the modes and each mode's Dice against the 1 mm mask itself.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference_writer.py [--quick] [--repeats 7]
[--threads 1] [--baseline-rev REV]``; prints a table and writes
``benchmarks/results/inference_writer.json`` (``inference_writer_<n>threads.json`` with ``--threads n``
other than 1; ``--quick``: the ITK subject, 128x128x62, 2 rounds, into ``<name>.quick.json``).
Skipped (exit 0) when the data is absent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from _bench import (
    REPO,
    SHARED_DATA,
    interleaved,
    machine,
    missing_data,
    print_table,
    ratio_spread,
    spread_text,
    timed,
    verdict,
    write_results,
)
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.transforms import Invertd, LoadImage, ResampleToMatch

from medmtl.bundle_layers import config_layers
from medmtl.data.task_keys import pred_key
from medmtl.data.tasks import TaskKind
from medmtl.engines import FlattenTaskOutputsd, tune_host_allocator
from medmtl.inference import MirrorTTAInferer, MultiTaskPredictionWriter

NAME = "inference_writer"
BUNDLE = "brain_mri_mtl"
VOLUME = SHARED_DATA / "brain" / "colin27_ch2.nii.gz"
QUICK_VOLUME = SHARED_DATA / "brain" / "itk_KmeansTest_T1UCharRaw.nii.gz"
BRAIN_MASK = SHARED_DATA / "brain" / "colin27_brainmask.nii.gz"  # on the Colin27 grid
WRITER_SOURCE = "medmtl/inference/writer.py"
BASELINE_REV = "857b0cc"  # the last commit whose writer inverted each task and took torch's argmax
GOAL_SHARE = 0.25


def baseline_writer(rev: str) -> type:
    """``MultiTaskPredictionWriter`` as it was at ``rev`` (this repository's own history, run unchanged)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:{WRITER_SOURCE}"], capture_output=True, text=True, check=False
    )
    if source.returncode != 0:
        raise SystemExit(f"cannot read {WRITER_SOURCE} at {rev!r}: {source.stderr.strip()}; give --baseline-rev")
    module = types.ModuleType(f"writer_at_{rev}")
    module.__file__ = f"{WRITER_SOURCE}@{rev}"
    exec(compile(source.stdout, module.__file__, "exec"), module.__dict__)  # noqa: S102 - the repo's own code
    return module.MultiTaskPredictionWriter


def bundle_parts(output_dir: Path) -> dict[str, Any]:
    """Tasks, network (seeded, untrained), preprocessing, inferer and batch preparation of the brain bundle."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_layers(BUNDLE)])
    parser["output_dir"] = str(output_dir)  # nothing is written there: no run is started
    parser["dataset_dir"] = str(output_dir)
    torch.manual_seed(0)
    return {
        "tasks": parser.get_parsed_content("tasks"),
        "network": parser.get_parsed_content("network_def").eval(),
        "preprocessing": parser.get_parsed_content("validate::preprocessing"),
        "inferer": parser.get_parsed_content("validate::inferer"),
        "prepare_batch": parser.get_parsed_content("prepare_batch"),
    }


class WriterClock:
    """Seconds spent in the writer's handlers: ``tick`` is added before them, ``tock`` after."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since = 0.0

    def tick(self, engine: Any = None) -> None:
        self._since = time.perf_counter()

    def tock(self, engine: Any = None) -> None:
        self.seconds += time.perf_counter() - self._since


class Candidate:
    """One evaluator running the bundle's inference path with one writer class into a fresh folder per run."""

    def __init__(
        self,
        writer_class: type,
        parts: dict[str, Any],
        volume: Path,
        out_root: Path,
        name: str,
        **writer_options: Any,
    ) -> None:
        self.out_root = out_root / name
        self.clock = WriterClock()
        self.writer = writer_class(
            parts["tasks"],
            self.out_root / "predictions",
            image_key="image",
            invert_transform=parts["preprocessing"],
            **writer_options,
        )
        loader = DataLoader(
            Dataset([{"image": str(volume), "case_id": volume.name.split(".")[0]}], parts["preprocessing"]),
            batch_size=1,
            num_workers=0,
        )
        self.evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=loader,
            network=parts["network"],
            inferer=MirrorTTAInferer(parts["inferer"], mirror_axes=[], keep_passes=True),
            prepare_batch=parts["prepare_batch"],
        )
        FlattenTaskOutputsd(parts["tasks"]).attach(self.evaluator)
        for event in (IterationEvents.MODEL_COMPLETED, Events.COMPLETED):
            self.evaluator.add_event_handler(event, self.clock.tick)
        self.writer.attach(self.evaluator)
        for event in (IterationEvents.MODEL_COMPLETED, Events.COMPLETED):
            self.evaluator.add_event_handler(event, self.clock.tock)
        self.writer_times: list[float] = []

    def __call__(self) -> None:
        shutil.rmtree(self.out_root, ignore_errors=True)  # every run writes a fresh folder
        self.clock.seconds = 0.0
        self.evaluator.run()
        self.writer_times.append(self.clock.seconds)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, interquartile range (inclusive quartiles), number of rounds and the raw values."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": median, "q1": q1, "q3": q3, "rounds": len(values), "values": list(values)}


def inversion_floor(parts: dict[str, Any], volume: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of MONAI ``Invertd`` alone on this case: what any writer built on it pays.

    - every class channel of every segmentation task in one call (bilinear): the least an exact
      writer does (the argmax of the interpolated logits and the entropy column need every class);
    - the argmax mask alone (one channel, nearest neighbour): the least any writer does, at the
      price of other masks (nearest-neighbour boundaries instead of interpolated logits).
    """
    data = parts["preprocessing"]({"image": str(volume)})
    image = data["image"]
    with torch.no_grad():
        out = parts["inferer"](image[None], parts["network"])
    seg = [t.name for t in parts["tasks"] if t.kind == TaskKind.SEGMENTATION]
    stacked = torch.cat([out[name][0] for name in seg])
    mask = out[seg[0]][0].argmax(0, keepdim=True).float()

    def invert(values: torch.Tensor, nearest: bool) -> Any:
        inverter = Invertd("pred", transform=parts["preprocessing"], orig_keys="image", nearest_interp=nearest)
        return inverter({"image": image, "pred": MetaTensor(values, meta=dict(image.meta))})

    return interleaved(
        {
            f"Invertd, all {stacked.shape[0]} class channels, bilinear": lambda: invert(stacked, False),
            "Invertd, the argmax mask alone, nearest": lambda: invert(mask, True),
        },
        repeats,
    )


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).astype(np.int64)


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two boolean masks; ``None`` when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else None


def mask_difference(default: np.ndarray, nearest: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """How far two label maps of one task are apart: voxels that differ, Dice per class between them."""
    return {
        "voxels": int(default.size),
        "differ_fraction": float((default != nearest).mean()),
        "dice_per_class": {name: _dice(default == k, nearest == k) for k, name in enumerate(classes)},
        "class_voxels_default": {name: int((default == k).sum()) for k, name in enumerate(classes)},
    }


def compare_modes(default: Path, nearest: Path, tasks: Sequence[Any]) -> dict[str, Any]:
    """The masks of ``mask_resampling="nearest"`` against the default's, per segmentation task."""
    out = {}
    for task in tasks:
        if task.kind == TaskKind.SEGMENTATION:
            files = [next((d / task.name).iterdir()) for d in (default, nearest)]
            out[task.name] = mask_difference(*(_labels(f) for f in files), task.class_names)
    return out


def structure_like_masks(parts: dict[str, Any], volume: Path, out_root: Path) -> dict[str, Any]:
    """Both modes on logits shaped like a trained network's: the Colin27 brain mask as brain logits.

    The 1 mm brain mask is resampled (bilinear, MONAI ``ResampleToMatch``) onto the preprocessed
    Colin27 grid (RAS, 2 mm): its 0-1 values (the share of brain in each 2 mm voxel) give the brain
    logit ``8 * (p - 0.5)`` against 0 for the background, a smooth border where the mask's is. The
    masks written in both modes are compared with each other and with the 1 mm mask.
    """
    image = parts["preprocessing"]({"image": str(volume)})["image"]
    mask = LoadImage(image_only=True, ensure_channel_first=True)(str(BRAIN_MASK)).float()
    share = ResampleToMatch(mode="bilinear", padding_mode="zeros")(mask, img_dst=image).as_tensor()
    logits = torch.cat([torch.zeros_like(share), 8.0 * (share - 0.5)])
    brain = next(t for t in parts["tasks"] if t.name == "brain")
    masks = {}
    for mode in ("interpolate", "nearest"):
        writer = MultiTaskPredictionWriter(
            [brain], out_root / f"brainmask_{mode}", invert_transform=parts["preprocessing"], mask_resampling=mode
        )
        row = writer.write_sample({"image": image, "case_id": "colin27", pred_key("brain"): logits})
        masks[mode] = _labels(out_root / f"brainmask_{mode}" / row["brain_file"])
    truth = np.asarray(nib.load(str(BRAIN_MASK)).dataobj) > 0
    return {
        "task": "brain",
        **mask_difference(masks["interpolate"], masks["nearest"], brain.class_names),
        "dice_vs_1mm_mask": {mode: _dice(m > 0, truth) for mode, m in masks.items()},
    }


def compare_outputs(old: Path, new: Path, tasks: Sequence[Any]) -> dict[str, Any]:
    """Masks (max |difference|, affines) and ``predictions.csv`` of the two candidates' last runs."""
    checks: dict[str, Any] = {
        "predictions_csv_identical": (old / "predictions.csv").read_bytes() == (new / "predictions.csv").read_bytes()
    }
    for task in tasks:
        if task.kind != TaskKind.SEGMENTATION:
            continue
        files = [next((d / task.name).iterdir()) for d in (old, new)]
        a, b = (nib.load(str(f)) for f in files)
        checks[f"{task.name}_mask_max_abs_diff"] = int(
            np.abs(np.asarray(a.dataobj).astype(np.int64) - np.asarray(b.dataobj).astype(np.int64)).max()
        )
        checks[f"{task.name}_mask_shape"] = list(a.shape)
        checks[f"{task.name}_affines_equal"] = bool(np.array_equal(a.affine, b.affine))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 128x128x62 ITK subject, 2 rounds: a smoke check")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; --quick: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shared machine: 1)")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the writer to compare with")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 7)
    volume = QUICK_VOLUME if args.quick else VOLUME
    if missing_data(volume, *(() if args.quick else (BRAIN_MASK,))):
        return
    torch.set_num_threads(args.threads)
    tune_host_allocator(torch.device("cpu"))  # as the bundles' inference does on CPU; both candidates share it
    meta = machine(
        threads=args.threads,
        repeats=repeats,
        quick=args.quick,
        data=str(SHARED_DATA),
        volume=volume.name,
        baseline_rev=args.baseline_rev,
        shared_machine="other jobs ran on the same 2 cores during the run: see the load averages",
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medmtl_writer_bench_") as tmp:
        parts = bundle_parts(Path(tmp) / "run")
        candidates = {
            f"before ({args.baseline_rev})": Candidate(
                baseline_writer(args.baseline_rev), parts, volume, Path(tmp), "old"
            ),
            "after (working tree), interpolate (default)": Candidate(
                MultiTaskPredictionWriter, parts, volume, Path(tmp), "new"
            ),
            "after (working tree), nearest": Candidate(
                MultiTaskPredictionWriter, parts, volume, Path(tmp), "nearest", mask_resampling="nearest"
            ),
        }
        names = list(candidates)
        print(f"[{time.strftime('%X')}] {volume.name}: warm-up, then {repeats} rounds of {names}...", flush=True)
        for candidate in candidates.values():  # warm-up (allocator, file cache, lazy imports): not counted
            candidate()
            candidate.writer_times.clear()
        totals: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            for name in names if r % 2 == 0 else reversed(names):
                totals[name].append(timed(candidates[name]))
        old_out, new_out, nearest_out = (c.out_root / "predictions" for c in candidates.values())
        checks = compare_outputs(old_out, new_out, parts["tasks"])
        modes = compare_modes(new_out, nearest_out, parts["tasks"])
        structure = structure_like_masks(parts, volume, Path(tmp)) if not args.quick else None
        writer_times = {name: c.writer_times for name, c in candidates.items()}
        print(f"[{time.strftime('%X')}] the inversion alone, {repeats} rounds...", flush=True)
        floor = inversion_floor(parts, volume, repeats)
    elapsed = time.perf_counter() - start

    rows = []
    for name in names:
        rows.append(
            {
                "writer": name,
                "writer_s": spread(writer_times[name]),
                "total_s": spread(totals[name]),
                "writer_share": ratio_spread(writer_times[name], totals[name]),
            }
        )
    old, new, nearest = names
    speedup = ratio_spread(writer_times[old], writer_times[new])
    total_ratio = ratio_spread(totals[new], totals[old])
    nearest_speedup = ratio_spread(writer_times[new], writer_times[nearest])
    nearest_total_ratio = ratio_spread(totals[nearest], totals[new])
    goals = {}
    for mode, row in (("interpolate", rows[1]), ("nearest", rows[2])):
        share = row["writer_share"]
        goals[mode] = {
            "goal": f"writer share <= {GOAL_SHARE}",
            "median": share["median"],
            "q1": share["q1"],
            "q3": share["q3"],
            # met only when the whole interquartile range clears the goal, missed when it lies wholly past it
            "verdict": verdict(share, GOAL_SHARE),
        }

    def cell(s: dict[str, Any], digits: int = 3) -> str:
        return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}, {s['q3']:.{digits}f}]"

    print_table(
        ["writer", "writer s", "inference wall s", "writer share"],
        [[r["writer"], cell(r["writer_s"]), cell(r["total_s"]), cell(r["writer_share"])] for r in rows],
        f"brain bundle inference of {volume.name}, {args.threads} thread(s), median [IQR] of {repeats} rounds",
    )
    print(f"writer speed-up (old/new per round) {spread_text(speedup)}; wall time new/old {spread_text(total_ratio)}")
    print(
        f"nearest: writer speed-up (interpolate/nearest per round) {spread_text(nearest_speedup)}; "
        f"wall time nearest/interpolate {spread_text(nearest_total_ratio)}"
    )
    for mode, goal in goals.items():
        print(f"goal share <= {GOAL_SHARE}, {mode}: {goal['verdict']} (IQR {goal['q1']:.3f}-{goal['q3']:.3f})")
    wall_new = rows[1]["total_s"]["median"]
    floor_rows = [
        {"step": step, "seconds": spread(values), "share_of_new_wall_time": statistics.median(values) / wall_new}
        for step, values in floor.items()
    ]
    print_table(
        ["MONAI Invertd alone", "s", "/ new wall time"],
        [[r["step"], cell(r["seconds"]), f"{r['share_of_new_wall_time']:.3f}"] for r in floor_rows],
    )
    print("outputs (default vs before):", checks)
    print_table(
        ["task", "voxels that differ", "Dice per class (nearest vs interpolate)"],
        [
            [task, f"{m['differ_fraction']:.4f}", ", ".join(f"{k} {_fmt(v)}" for k, v in m["dice_per_class"].items())]
            for task, m in modes.items()
        ],
        f"masks of {volume.name} (untrained network), nearest vs interpolate",
    )
    if structure is not None:
        print(
            f"structure-like logits (Colin27 brain mask): voxels that differ {structure['differ_fraction']:.4f}, "
            f"Dice nearest vs interpolate {_fmt(structure['dice_per_class']['brain'])}; Dice vs the 1 mm mask: "
            + ", ".join(f"{mode} {_fmt(d)}" for mode, d in structure["dice_vs_1mm_mask"].items())
        )
    print(f"benchmark time {elapsed:.0f} s")
    meta.update(duration_s=elapsed, load_average_at_end=list(os.getloadavg()))
    results = {
        "bundle": BUNDLE,
        "network": "MultiTaskNet from the brain bundle config (unet preset, 3D), seeded untrained weights",
        "rows": rows,
        "writer_speedup_old_over_new": speedup,
        "total_ratio_new_over_old": total_ratio,
        "writer_speedup_interpolate_over_nearest": nearest_speedup,
        "total_ratio_nearest_over_interpolate": nearest_total_ratio,
        "goal": goals["interpolate"],
        "goal_nearest": goals["nearest"],
        "inversion_floor": floor_rows,
        "checks": checks,
        "nearest_vs_interpolate_masks": modes,
        "nearest_vs_interpolate_structure_like": structure,
    }
    name = NAME if args.threads == 1 else f"{NAME}_{args.threads}threads"
    write_results(name, meta, results, quick=args.quick)
    if not (checks["predictions_csv_identical"] and all(v == 0 for k, v in checks.items() if k.endswith("_diff"))):
        sys.exit("the outputs differ between the two writers")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
