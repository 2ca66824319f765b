"""Time to first epoch on BUSI: what a training waits for before its first iteration, before vs after.

What a bundle run does before its first iteration, on the 780 BUSI images (``data_specs/breast_ultrasound.yaml``,
the ``ultrasound_mtl`` bundle's 128 px, batch 16): validate the dataset (``require_valid_dataset``), cache
the training and the validation transforms, and draw the first batch. Two set-ups, timed in alternating
rounds in one process:

- **before** (medmtl until issue 23): every file validated on every run, MONAI's
  ``ScaleIntensityRangePercentilesd`` and anti-aliased ``Resized`` with the masks merged before them
  (:func:`~medmtl.transforms.fast_preprocess.monai_reference`, the chain the tests pin the fast one
  to), the cache built on one thread and stored as float32;
- **after**: validation results reused by file content (the cache is filled by an untimed run first, as
  by the previous training), :class:`~medmtl.transforms.fast_preprocess.FastPercentileScaled` /
  :class:`~medmtl.transforms.fast_preprocess.FastResized` (same values), the cache built by one thread
  per core and stored compactly (``uint8`` masks, ``float16`` images).

It also times the per-image preprocessing (one thread, the chain up to the cache) of medmtl before and
after against plain MONAI (``LoadImaged``, ``EnsureChannelFirstd``, ``ScaleIntensityd``, ``Resized``
without anti-aliasing; the same output size; goal: medmtl after <= 1.5x plain, judged on the per-round
ratios), reports the cache memory, and checks that the cached items are unchanged (max |difference|).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/time_to_first_epoch.py [--quick] [--repeats 3]``;
writes ``benchmarks/results/time_to_first_epoch.json`` (``--quick``: ``.quick.json``). The validation
cache goes to a temporary ``MEDMTL_CACHE_DIR`` (never the user's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MEDMTL_CACHE_DIR", tempfile.mkdtemp(prefix="ttfe_cache_"))

import torch  # noqa: E402
from _bench import (  # noqa: E402
    REPO,
    SHARED_DATA,
    machine,
    missing_data,
    print_table,
    ratio_spread,
    spread_text,
    summary,
    verdict,
    write_results,
)
from monai.data import CacheDataset, DataLoader  # noqa: E402
from monai.transforms import (  # noqa: E402
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Resized,
    ScaleIntensityd,
)

from medmtl.data.datasets import TrainingCacheDataset, nbytes, strip_meta  # noqa: E402
from medmtl.data.spec import load_spec  # noqa: E402
from medmtl.data.validate import require_valid_dataset  # noqa: E402
from medmtl.transforms import build_transforms  # noqa: E402
from medmtl.transforms.fast_preprocess import monai_reference  # noqa: E402

SPEC = REPO / "data_specs" / "breast_ultrasound.yaml"
ROOT = SHARED_DATA / "busi" / "Dataset_BUSI_with_GT"
SIZE, BATCH = 128, 16
GOAL_PREPROCESSING = 1.5


def plain_monai(keys: tuple[str, str]) -> Compose:
    """What a plain MONAI user would write for the same output: no percentiles, no anti-aliasing."""
    return Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            ScaleIntensityd(keys[0]),
            Resized(keys, spatial_size=(SIZE, SIZE), mode=("bilinear", "nearest")),
        ]
    )


class StartUp:
    """One set-up's start-up, step by step: validate, cache train and val, first batch."""

    def __init__(self, spec: Any, cases: Any, after: bool) -> None:
        self.spec, self.cases, self.after = spec, cases, after
        train = build_transforms(spec, SIZE, train=True, batch_augment=True)
        val = build_transforms(spec, SIZE, train=False)
        self.train_tf = train if after else monai_reference(train)
        self.val_tf = val if after else monai_reference(val)
        self.workers = None if after else 1
        self.steps: dict[str, float] = {}
        self.memory: dict[str, int] = {}
        self.train_ds: TrainingCacheDataset | None = None

    def _step(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        self.steps[name] = time.perf_counter() - start
        return out

    def __call__(self) -> None:
        self.steps = {}
        self._step("validate", lambda: require_valid_dataset(SPEC, ROOT, workers=1, cache=self.after))
        self.train_ds = self._step(
            "train cache",
            lambda: TrainingCacheDataset(
                self.cases.datalist("train"),
                self.train_tf,
                compact=self.after,
                num_workers=self.workers,
                progress=False,
            ),
        )
        val_ds = self._step(
            "val cache",
            lambda: CacheDataset(self.cases.datalist("val"), self.val_tf, num_workers=self.workers, progress=False),
        )
        loader = DataLoader(self.train_ds, batch_size=BATCH, shuffle=True, num_workers=0)
        self._step("first batch", lambda: next(iter(loader)))
        self.memory = {"train cache": self.train_ds.cache_nbytes(), "val cache": nbytes(strip_meta(val_ds._cache))}


def preprocessing_rounds(spec: Any, cases: Any, repeats: int, images: int) -> dict[str, list[float]]:
    """Seconds per image of each chain's deterministic part, one thread, interleaved rounds."""
    datalist = cases.datalist("train")[:images]
    keys = ("image", "lesion")
    after = build_transforms(spec, SIZE, train=False)
    before = monai_reference(after)
    plain = plain_monai(keys)
    plain_list = [
        {"image": d["image"], "lesion": d["lesion"][0] if isinstance(d["lesion"], list) else d["lesion"]}
        for d in datalist
    ]
    chains = {
        "plain MONAI": (plain, plain_list),
        "medmtl before": (before, datalist),
        "medmtl after": (after, datalist),
    }
    times: dict[str, list[float]] = {name: [] for name in chains}
    for chain, data in chains.values():  # warm-up: file cache, lazy imports
        chain(dict(data[0]))
    for r in range(repeats):
        for name in list(chains) if r % 2 == 0 else reversed(list(chains)):
            chain, data = chains[name]
            start = time.perf_counter()
            for item in data:
                chain(dict(item))
            times[name].append((time.perf_counter() - start) / len(data))
    return times


def unchanged(before: TrainingCacheDataset, after: TrainingCacheDataset) -> dict[str, float]:
    """Max |difference| of the cached images and masks (after unpacking) between the two set-ups."""
    image = mask = 0.0
    for i in range(len(before)):
        a, b = before[i], after[i]
        image = max(image, float((a["image"] - b["image"]).abs().max()))
        mask = max(mask, float((a["lesion"] - b["lesion"]).abs().max()))
    return {"image_max_abs_diff": image, "mask_max_abs_diff": mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each set-up (alternating)")
    parser.add_argument("--images", type=int, default=100, help="images per preprocessing round")
    parser.add_argument("--quick", action="store_true", help="one round, 20 images: a smoke run")
    args = parser.parse_args()
    if missing_data(ROOT):
        return
    repeats, images = (1, 20) if args.quick else (args.repeats, args.images)
    torch.set_num_threads(1)
    spec = load_spec(SPEC, root=str(ROOT))
    cases = spec.build_cases(root=str(ROOT))

    set_ups = {"before": StartUp(spec, cases, after=False), "after": StartUp(spec, cases, after=True)}
    set_ups["after"]()  # untimed: fills the validation cache, as the previous run would have
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in set_ups}
    for r in range(repeats):
        for name in list(set_ups) if r % 2 == 0 else reversed(list(set_ups)):
            set_ups[name]()
            rounds[name].append(dict(set_ups[name].steps))
    totals = {name: [sum(steps.values()) for steps in rounds[name]] for name in set_ups}
    spread = ratio_spread(totals["after"], totals["before"])
    step_names = list(rounds["before"][0])
    rows = [[step, *(statistics.median(r[step] for r in rounds[name]) for name in set_ups)] for step in step_names]
    rows.append(["time to first iteration", *(statistics.median(totals[name]) for name in set_ups)])
    for part in ("train cache", "val cache"):
        rows.append([f"{part} memory (MB)", *(set_ups[name].memory[part] / 1e6 for name in set_ups)])
    print_table(["BUSI, seconds (median)", "before", "after"], rows, title=f"Time to first iteration, {repeats} rounds")
    print(f"after / before: {spread_text(spread)}")
    same = unchanged(set_ups["before"].train_ds, set_ups["after"].train_ds)
    print(f"cached training items, after vs before: {same}")

    per_image = preprocessing_rounds(spec, cases, max(repeats, 3) if not args.quick else 1, images)
    ratios = {name: ratio_spread(per_image[name], per_image["plain MONAI"]) for name in per_image}
    goal = verdict(ratios["medmtl after"], GOAL_PREPROCESSING)
    print_table(
        ["per-image preprocessing (1 thread)", "ms / image (median)", "x plain MONAI (per round)"],
        [[name, statistics.median(t) * 1000, spread_text(ratios[name])] for name, t in per_image.items()],
        title=f"Per-image preprocessing, {images} images per round",
    )
    print(f"medmtl after <= {GOAL_PREPROCESSING}x plain MONAI: {goal}")

    results = {
        "time_to_first_iteration": {
            name: {"steps_s": rounds[name], "total": summary(totals[name]), "memory_bytes": set_ups[name].memory}
            for name in set_ups
        },
        "after_over_before": spread,
        "cached_items_unchanged": same,
        "preprocessing_per_image": {name: summary(t) for name, t in per_image.items()},
        "preprocessing_vs_plain_monai": ratios,
        "preprocessing_goal": {"goal": f"<= {GOAL_PREPROCESSING}", "verdict": goal},
    }
    meta = machine(images=len(cases.cases), spatial_size=SIZE, batch_size=BATCH, repeats=repeats, root=str(Path(ROOT)))
    write_results("time_to_first_epoch", meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
