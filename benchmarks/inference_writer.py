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

Two candidates, alternating in each round: the writer as of ``--baseline-rev`` (its source read with
``git show``, so the old code runs unchanged) and the working tree's. Per round and candidate: the
wall time of ``evaluator.run()`` on the case (load, preprocess, infer, write) and the time spent in
the writer's handlers (timed around them: ignite runs handlers in the order they were added).
Reported: medians and interquartile ranges over the rounds of both times, of the writer's share and of
the per-round speed-up; the goal (writer <= 25 % of the wall time) counts as met only when the upper
quartile of the new writer's share is below it. The outputs of the last round are compared:
masks (max absolute difference, affines) and ``predictions.csv`` (byte for byte).

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
from _bench import REPO, SHARED_DATA, interleaved, machine, missing_data, print_table, timed, write_results
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.transforms import Invertd

from medmtl.bundle_layers import config_layers
from medmtl.data.tasks import TaskKind
from medmtl.engines import FlattenTaskOutputsd, tune_host_allocator
from medmtl.inference import MirrorTTAInferer, MultiTaskPredictionWriter

NAME = "inference_writer"
BUNDLE = "brain_mri_mtl"
VOLUME = SHARED_DATA / "brain" / "colin27_ch2.nii.gz"
QUICK_VOLUME = SHARED_DATA / "brain" / "itk_KmeansTest_T1UCharRaw.nii.gz"
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

    def __init__(self, writer_class: type, parts: dict[str, Any], volume: Path, out_root: Path, name: str) -> None:
        self.out_root = out_root / name
        self.clock = WriterClock()
        self.writer = writer_class(
            parts["tasks"], self.out_root / "predictions", image_key="image", invert_transform=parts["preprocessing"]
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
    if missing_data(volume):
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
            "after (working tree)": Candidate(MultiTaskPredictionWriter, parts, volume, Path(tmp), "new"),
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
        checks = compare_outputs(*(c.out_root / "predictions" for c in candidates.values()), parts["tasks"])
        writer_times = {name: c.writer_times for name, c in candidates.items()}
        print(f"[{time.strftime('%X')}] the inversion alone, {repeats} rounds...", flush=True)
        floor = inversion_floor(parts, volume, repeats)
    elapsed = time.perf_counter() - start

    rows = []
    for name in names:
        shares = [w / t for w, t in zip(writer_times[name], totals[name], strict=True)]
        rows.append(
            {
                "writer": name,
                "writer_s": spread(writer_times[name]),
                "total_s": spread(totals[name]),
                "writer_share": spread(shares),
            }
        )
    old, new = names
    speedup = spread([o / n for o, n in zip(writer_times[old], writer_times[new], strict=True)])
    total_ratio = spread([n / o for o, n in zip(totals[old], totals[new], strict=True)])
    share = rows[1]["writer_share"]
    goal = {
        "goal": f"writer share <= {GOAL_SHARE}",
        "median": share["median"],
        "q3": share["q3"],
        # met only when the whole interquartile range clears the goal, missed when it lies wholly past it
        "verdict": "met" if share["q3"] <= GOAL_SHARE else "missed" if share["q1"] > GOAL_SHARE else "unclear",
    }

    def cell(s: dict[str, Any], digits: int = 3) -> str:
        return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}, {s['q3']:.{digits}f}]"

    print_table(
        ["writer", "writer s", "inference wall s", "writer share"],
        [[r["writer"], cell(r["writer_s"]), cell(r["total_s"]), cell(r["writer_share"])] for r in rows],
        f"brain bundle inference of {volume.name}, {args.threads} thread(s), median [IQR] of {repeats} rounds",
    )
    print(
        f"writer speed-up (old/new per round) {cell(speedup, 2)}; wall time new/old {cell(total_ratio, 2)}; "
        f"goal share <= {GOAL_SHARE}: {goal['verdict']} (IQR {share['q1']:.3f}-{share['q3']:.3f})"
    )
    wall_new = rows[1]["total_s"]["median"]
    floor_rows = [
        {"step": step, "seconds": spread(values), "share_of_new_wall_time": statistics.median(values) / wall_new}
        for step, values in floor.items()
    ]
    print_table(
        ["MONAI Invertd alone", "s", "/ new wall time"],
        [[r["step"], cell(r["seconds"]), f"{r['share_of_new_wall_time']:.3f}"] for r in floor_rows],
    )
    print("outputs:", checks)
    print(f"benchmark time {elapsed:.0f} s")
    meta.update(duration_s=elapsed, load_average_at_end=list(os.getloadavg()))
    results = {
        "bundle": BUNDLE,
        "network": "MultiTaskNet from the brain bundle config (unet preset, 3D), seeded untrained weights",
        "rows": rows,
        "writer_speedup_old_over_new": speedup,
        "total_ratio_new_over_old": total_ratio,
        "goal": goal,
        "inversion_floor": floor_rows,
        "checks": checks,
    }
    name = NAME if args.threads == 1 else f"{NAME}_{args.threads}threads"
    write_results(name, meta, results, quick=args.quick)
    if not (checks["predictions_csv_identical"] and all(v == 0 for k, v in checks.items() if k.endswith("_diff"))):
        sys.exit("the outputs differ between the two writers")


if __name__ == "__main__":
    main()
