"""Data pipeline: epoch time of MONAI's datasets vs medmtl's TrainingCacheDataset on real images.

On small images the per-item work of a MONAI pipeline (decoding, metadata bookkeeping on every
``MetaTensor``, percentile scaling and anti-aliased resizing at full resolution) can cost more than
the network step, so a 2-core machine waits for data instead of training. This script measures, on
the real data in ``../shared/data`` (``MEDMTL_DATA_DIR`` overrides it):

- **2D, BUSI** (780 ultrasound PNGs + lesion masks, ``build_transforms(spec, 128, train=True)``,
  batch 16, ``num_workers=0``): a plain PIL/NumPy loader (the reference: decode the PNG, resize with
  PIL, scale by 1/255, random flips with NumPy, ``np.stack``; it does *less* than the medmtl chain,
  which also applies a random affine, noise and contrast), the same plain loader with those three
  augmentations hand-written (PIL affine, NumPy noise and gamma: like for like), MONAI ``Dataset``,
  MONAI ``CacheDataset``, medmtl ``TrainingCacheDataset`` with the item-level random transforms,
  medmtl ``TrainingCacheDataset + BatchAugment`` (the 2D bundles' default: the whole chain cached
  by ``build_transforms(..., batch_augment=True)``, the same augmentations drawn per sample and
  applied to each batch by :class:`medmtl.transforms.BatchAugment`, here on the CPU, inside the
  timed epoch) and tensors already in memory (the floor: shuffled batches of stacked tensors, no
  augmentation), and MONAI ``Dataset`` with plain MONAI transforms (:func:`plain_monai_transforms`:
  the same steps with MONAI's own transforms, min-max scaling and no anti-aliasing: what a MONAI
  user writes, the ``Dataset`` yardstick). Ratios are epoch-time speed-ups per round (median and
  interquartile range) over the plain loader and over that ``Dataset``; goals, for the medmtl
  default pipeline: >= 3x faster than plain, >= 10x faster than ``Dataset``, each ``met`` only
  when the whole interquartile range clears it.
- **3D, brain NIfTI** (12 items cycling over the T1 volumes Colin27, MNI152 and the ITK head with
  their brain masks; load, RAS, 2 mm spacing, z-score, pad/crop 96^3, random flips, batch 2):
  ``Dataset``, ``CacheDataset``, ``TrainingCacheDataset``, ``TrainingCacheDataset + BatchAugment``
  (flips per batch) and ``PersistentDataset`` (cache in a temporary folder; its first,
  cache-writing epoch is reported on its own).
- **Loader wait in training**: a short training loop of a small 2D ``MultiTaskNet`` on BUSI, the
  time spent in ``next(iterator)`` as a fraction of the step time, for ``TrainingCacheDataset``
  with item-level augmentation, with ``BatchAugment`` (which runs in ``prepare_batch``, on the
  training device: part of the step, not of the wait) and ``Dataset`` for contrast; and the same
  for the brain MRI bundle's training (its default 3D BasicUNet, 96x112x96 at 2 mm, batch 2, the
  full item-level augmentation after the cached prefix) with ``TrainingCacheDataset`` vs ``Dataset``.
  Goal for the bundles' default pipelines: wait < 10 % of the step.

Cache builds are one-off costs, reported apart from the epoch times. The CPU allocator is tuned as
the bundles tune it (``tune_host_allocator``), for every candidate. A per-transform profile (ms
per item, one pass) shows where uncached time goes.

Run: ``python benchmarks/data_pipeline.py [--quick] [--repeats 5] [--threads 2]``; prints tables and
writes ``benchmarks/results/data_pipeline.json`` (``--quick``: ``data_pipeline.quick.json``; skipped, exit 0, when the data is absent).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

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
    summary,
    verdict,
    write_results,
)
from monai import transforms as mt
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.data.image_reader import PILReader
from monai.utils import set_determinism
from PIL import Image, ImageChops

from medmtl.data import Task
from medmtl.data.datasets import TrainingCacheDataset
from medmtl.data.spec import load_spec
from medmtl.engines import MultiTaskPrepareBatch, tune_host_allocator
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskNet
from medmtl.transforms import BatchAugment, build_transforms

NAME = "data_pipeline"
DEFAULT_2D = "medmtl TrainingCacheDataset + BatchAugment"  # the 2D bundles' default pipeline
DEFAULT_3D = "medmtl TrainingCacheDataset + BatchAugment (flips)"
PLAIN_MONAI_2D = "MONAI Dataset, plain MONAI transforms"  # the Dataset yardstick of the 2D goal
BUSI = SHARED_DATA / "busi" / "Dataset_BUSI_with_GT"
BRAIN = SHARED_DATA / "brain"
BRAIN_PAIRS = (  # (T1 volume, its brain mask / tissue labels: binarized)
    ("colin27_ch2.nii.gz", "colin27_brainmask.nii.gz"),
    ("mni152_t1.nii.gz", "mni152_tissue3_labels.nii.gz"),
    ("itk_KmeansTest_T1UCharRaw.nii.gz", "itk_KmeansTest_T1RawSkullStrip.nii.gz"),
)
BRAIN_SPEC = {  # only what build_transforms reads: one image input, one segmentation task
    "name": "brain_benchmark",
    "spatial_dims": 3,
    "cases": {"glob": "*.nii.gz"},
    "inputs": {"image": "{path}"},
    "tasks": [
        {
            "name": "brain",
            "kind": "segmentation",
            "classes": ["background", "brain"],
            "label": {"mask": "{stem}_mask.nii.gz", "binarize": True},
        }
    ],
}


# --------------------------------------------------------------------------- plain MONAI chain
def _grey(image: Any) -> Any:
    return image.convert("L")


def _merged_binary_mask(mask: torch.Tensor) -> torch.Tensor:
    """One channel, 1 where any of the case's mask files (stacked as channels by ``LoadImaged``) is set."""
    return (mask.amax(dim=0, keepdim=True) > 0).float()


def plain_monai_transforms(size: int) -> mt.Compose:
    """What a MONAI user writes for BUSI with MONAI's own transforms: the ``Dataset`` yardstick.

    The same steps and augmentation distributions as ``build_transforms(spec, size, train=True)``
    (grey image, masks merged, intensity scaled to [0, 1], resized, flips, affine, noise, contrast),
    but with MONAI's plain transforms: min-max scaling instead of medmtl's percentile scaling, and
    ``Resized`` without anti-aliasing, so the reference does not carry medmtl's heavier preprocessing.
    """
    keys = ["image", "lesion"]
    return mt.Compose(
        [
            mt.LoadImaged(keys=keys, reader=PILReader(converter=_grey), image_only=True),
            mt.EnsureChannelFirstd(keys=keys),
            mt.Lambdad(keys="lesion", func=_merged_binary_mask),
            mt.ScaleIntensityd(keys="image"),
            mt.Resized(keys=keys, spatial_size=(size, size), mode=("bilinear", "nearest")),
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            mt.RandAffined(
                keys=keys,
                prob=0.5,
                rotate_range=math.radians(15),
                scale_range=0.1,
                translate_range=0.05 * size,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            mt.RandGaussianNoised(keys="image", prob=0.5, std=0.05),
            mt.RandAdjustContrastd(keys="image", prob=0.5, gamma=(0.75, 1.35)),
            mt.EnsureTyped(keys=[*keys, "diagnosis"], track_meta=False),
        ]
    )


# --------------------------------------------------------------------------- loaders
class PlainLoader:
    """The reference: PIL decode + resize, NumPy flips, ``np.stack`` per batch (no MONAI, no torch Dataset).

    With ``augment=True`` it also does what the medmtl chain adds after the flips, hand-written:
    a PIL affine (rotation, zoom, shift) with probability 0.5, Gaussian noise and gamma contrast
    with probability 0.5 each: the same work, for a like-for-like comparison.
    """

    def __init__(self, datalist: Sequence[dict], size: int, batch: int, augment: bool = False, seed: int = 0) -> None:
        self.items = [(d["image"], _as_list(d.get("lesion")), int(d["diagnosis"])) for d in datalist]
        self.size, self.batch, self.augment = size, batch, augment
        self.rng = np.random.default_rng(seed)

    def _affine(self, img: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        rng, c = self.rng, (self.size - 1) / 2
        angle = rng.uniform(-math.radians(15), math.radians(15))
        zoom = rng.uniform(0.9, 1.1)
        dx, dy = rng.uniform(-0.05 * self.size, 0.05 * self.size, 2)
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom  # output -> input mapping
        coeffs = (cos, sin, c - cos * c - sin * c + dx, -sin, cos, c + sin * c - cos * c + dy)
        shape = (self.size, self.size)
        return (
            img.transform(shape, Image.AFFINE, coeffs, resample=Image.BILINEAR),
            mask.transform(shape, Image.AFFINE, coeffs, resample=Image.NEAREST),
        )

    def _load(self, image: str, masks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.size, self.size)
        img = Image.open(image).convert("L").resize(shape, Image.BILINEAR)
        mask_img = Image.new("L", shape)
        for path in masks:
            mask_img = ImageChops.lighter(mask_img, Image.open(path).convert("L").resize(shape, Image.NEAREST))
        if self.augment and self.rng.random() < 0.5:
            img, mask_img = self._affine(img, mask_img)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        mask = np.asarray(mask_img) > 0
        for axis in (0, 1):
            if self.rng.random() < 0.5:
                arr, mask = np.flip(arr, axis), np.flip(mask, axis)
        if self.augment:
            if self.rng.random() < 0.5:
                arr = arr + self.rng.normal(0.0, self.rng.uniform(0, 0.05), arr.shape).astype(np.float32)
            if self.rng.random() < 0.5:
                lo, hi = arr.min(), arr.max()
                arr = ((arr - lo) / max(hi - lo, 1e-7)) ** self.rng.uniform(0.75, 1.35) * (hi - lo) + lo
        return arr, mask

    def __iter__(self) -> Iterable[dict[str, torch.Tensor]]:
        order = self.rng.permutation(len(self.items))
        for start in range(0, len(order), self.batch):
            images, masks, labels = [], [], []
            for i in order[start : start + self.batch]:
                image, mask_paths, label = self.items[i]
                img, mask = self._load(image, mask_paths)
                images.append(img)
                masks.append(mask)
                labels.append(label)
            yield {
                "image": torch.from_numpy(np.stack(images)[:, None]),
                "lesion": torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)),
                "diagnosis": torch.tensor(labels),
            }


class InMemoryLoader:
    """The floor: shuffled batches indexed out of tensors already in memory."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch: int, seed: int = 0) -> None:
        self.tensors, self.batch = tensors, batch
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterable[dict[str, torch.Tensor]]:
        n = len(next(iter(self.tensors.values())))
        order = torch.randperm(n, generator=self.generator)
        for start in range(0, n, self.batch):
            idx = order[start : start + self.batch]
            yield {k: v.index_select(0, idx) for k, v in self.tensors.items()}


class AugmentedLoader:
    """A loader whose batches go through a :class:`BatchAugment` (what ``MultiTaskPrepareBatch`` does)."""

    def __init__(self, loader: Iterable[dict], augment: BatchAugment) -> None:
        self.loader, self.augment = loader, augment

    def __iter__(self) -> Iterable[dict[str, Any]]:
        for batch in self.loader:
            yield self.augment(batch)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _epoch(loader: Iterable) -> Callable[[], int]:
    def run() -> int:
        count = 0
        for batch in loader:
            count += len(batch["image"])
        return count

    return run


def _first_batches(loader: Iterable, n: int) -> Callable[[], None]:
    """A cheap warm-up: the first ``n`` batches (lazy init; the file cache is warmed by the plain loader)."""

    def run() -> None:
        for _ in itertools.islice(iter(loader), n):
            pass

    return run


def _build(make: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    obj = make()
    return obj, time.perf_counter() - start


def _profile(transform: Any, datalist: Sequence[dict]) -> dict[str, float]:
    """Milliseconds per item of each transform of ``transform`` (one pass, MONAI's defaults)."""
    totals: dict[str, float] = {}
    for item in datalist:
        data = dict(item)
        for t in transform.transforms:
            start = time.perf_counter()
            data = t(data)
            name = type(t).__name__
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start
    return {k: 1000 * v / len(datalist) for k, v in totals.items()}


def _rows(times: dict[str, list[float]], items: int, reference: str, second: str | None = None) -> list[dict]:
    """One row per loader: epoch times and its speed-ups over the references, per round (``ratio_spread``)."""
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        row = {"loader": name, "items": items, "epoch": summary(values), "items_per_s": items / median}
        for ref in (reference, second) if second else (reference,):
            row[f"speedup_vs_{ref}"] = ratio_spread(times[ref], values)
        rows.append(row)
    return rows


def _goal(spread: dict[str, Any], goal: float, at_most: bool = False) -> dict[str, Any]:
    return {
        "goal": f"{'<=' if at_most else '>='} {goal:g}",
        "measured": spread["median"],
        "spread": spread,
        "verdict": verdict(spread, goal, at_most=at_most),
    }


# --------------------------------------------------------------------------- 2D BUSI
def bench_busi(args: argparse.Namespace) -> dict[str, Any]:
    spec = load_spec(REPO / "data_specs" / "breast_ultrasound.yaml")
    datalist = spec.datalist("all")
    if args.quick:
        datalist = datalist[:: max(1, len(datalist) // 32)][:32]
    size, batch = 128, 16

    def transforms(batch_augment: bool = False) -> Any:  # one chain per dataset: each keeps its own random state
        return build_transforms(spec, size, train=True, batch_augment=batch_augment)

    def loader(ds: Any) -> DataLoader:
        return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)

    print(f"[{time.strftime('%X')}] BUSI: {len(datalist)} images, building caches...", flush=True)
    cache, cache_s = _build(lambda: CacheDataset(datalist, transforms(), cache_rate=1.0, progress=False))
    training, training_s = _build(lambda: TrainingCacheDataset(datalist, transforms(), cache_rate=1.0, progress=False))
    default, default_s = _build(
        lambda: TrainingCacheDataset(datalist, transforms(batch_augment=True), cache_rate=1.0, progress=False)
    )
    # the floor: the deterministic chain's items (what ``default`` caches; no random transform at item level)
    items = [default[i] for i in range(len(default))]
    floor = {
        key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in ("image", "lesion", "diagnosis")
    }
    loaders = {
        "plain PIL/NumPy": PlainLoader(datalist, size, batch),
        "plain + same augmentation": PlainLoader(datalist, size, batch, augment=True),
        PLAIN_MONAI_2D: loader(Dataset(datalist, plain_monai_transforms(size))),
        "MONAI Dataset": loader(Dataset(datalist, transforms())),
        "MONAI CacheDataset": loader(cache),
        "medmtl TrainingCacheDataset": loader(training),
        DEFAULT_2D: AugmentedLoader(loader(default), BatchAugment(2, label_keys=["lesion"], seed=0)),
        "in-memory tensors": InMemoryLoader(floor, batch),
    }
    candidates = {name: _epoch(ld) for name, ld in loaders.items()}
    # warm-up: an epoch of each, but only 2 batches of the Datasets (a full epoch of them teaches nothing more)
    warmups = [
        _first_batches(ld, 2) if name in ("MONAI Dataset", PLAIN_MONAI_2D) else _epoch(ld)
        for name, ld in loaders.items()
    ]
    print(f"[{time.strftime('%X')}] BUSI: timing epochs...", flush=True)
    times = interleaved(candidates, args.repeats, warmups=warmups)
    rows = _rows(times, len(datalist), "plain PIL/NumPy", PLAIN_MONAI_2D)
    medmtl = next(r for r in rows if r["loader"] == DEFAULT_2D)
    like_for_like = ratio_spread(times["plain + same augmentation"], times[DEFAULT_2D])
    return {
        "images": len(datalist),
        "spatial_size": size,
        "batch_size": batch,
        "cache_build_s": {
            "MONAI CacheDataset": cache_s,
            "medmtl TrainingCacheDataset": training_s,
            DEFAULT_2D: default_s,
        },
        "loaders": rows,
        "medmtl_default": DEFAULT_2D,
        "medmtl_default_vs_plain_same_augmentation": like_for_like,
        "goals": {  # per-round speed-ups; the Dataset yardstick runs plain MONAI transforms
            "medmtl_default_vs_plain": _goal(medmtl["speedup_vs_plain PIL/NumPy"], 3),
            "medmtl_default_vs_Dataset": _goal(medmtl[f"speedup_vs_{PLAIN_MONAI_2D}"], 10),
        },
        "transform_profile_ms_per_item": _profile(transforms(), datalist[: 4 if args.quick else 40]),
    }


# --------------------------------------------------------------------------- 3D brain
def bench_brain(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pairs = BRAIN_PAIRS[2:] if args.quick else BRAIN_PAIRS  # quick: the small ITK head only
    n_items = 2 if args.quick else 12
    size, batch = (48 if args.quick else 96), 2
    # distinct case ids: PersistentDataset hashes the dicts, repeated volumes must not share a cache file
    datalist = [
        {"case_id": f"case_{i:02d}", "image": str(BRAIN / img), "brain": str(BRAIN / mask), "brain_present": 1}
        for i, (img, mask) in zip(range(n_items), itertools.cycle(pairs))
    ]

    def transforms(batch_augment: bool = False) -> Any:  # random flips only: affine, noise and contrast are off
        return build_transforms(BRAIN_SPEC, size, train=True, pixdim=2.0, aug_prob=0.0, batch_augment=batch_augment)

    def loader(ds: Any) -> DataLoader:
        return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)

    print(f"[{time.strftime('%X')}] brain: {n_items} volumes, building caches...", flush=True)
    cache, cache_s = _build(lambda: CacheDataset(datalist, transforms(), cache_rate=1.0, progress=False))
    training, training_s = _build(lambda: TrainingCacheDataset(datalist, transforms(), cache_rate=1.0, progress=False))
    default, default_s = _build(
        lambda: TrainingCacheDataset(datalist, transforms(batch_augment=True), cache_rate=1.0, progress=False)
    )
    persistent = PersistentDataset(datalist, transforms(), cache_dir=tmp / "persistent")
    loaders = {
        "MONAI Dataset": loader(Dataset(datalist, transforms())),
        "MONAI CacheDataset": loader(cache),
        "medmtl TrainingCacheDataset": loader(training),
        DEFAULT_3D: AugmentedLoader(loader(default), BatchAugment(3, aug_prob=0.0, label_keys=["brain"], seed=0)),
        "MONAI PersistentDataset": loader(persistent),
    }
    print(f"[{time.strftime('%X')}] brain: timing epochs...", flush=True)
    cold_s = _build(_epoch(loaders["MONAI PersistentDataset"]))[1]  # writes the cache: its warm-up
    warmups = [_epoch(loaders[n]) for n in ("MONAI CacheDataset", "medmtl TrainingCacheDataset", DEFAULT_3D)]
    warmups.append(_first_batches(loaders["MONAI Dataset"], 1))
    times = interleaved({name: _epoch(ld) for name, ld in loaders.items()}, args.repeats, warmups=warmups)
    return {
        "volumes": [img for img, _ in pairs],
        "items": n_items,
        "spatial_size": size,
        "pixdim_mm": 2.0,
        "batch_size": batch,
        "cache_build_s": {
            "MONAI CacheDataset": cache_s,
            "medmtl TrainingCacheDataset": training_s,
            DEFAULT_3D: default_s,
            "MONAI PersistentDataset (first epoch, writes the cache)": cold_s,
        },
        "loaders": _rows(times, n_items, "MONAI Dataset"),
        "transform_profile_ms_per_item": _profile(transforms(), datalist[: len(pairs)]),
    }


# --------------------------------------------------------------------------- loader wait in training
def _training_round(
    loader: DataLoader, prepare: MultiTaskPrepareBatch, network: torch.nn.Module, loss: MultiTaskLoss, steps: int
) -> Callable[[], dict[str, float]]:
    """``steps`` training steps from a fresh iterator; time in ``next(iterator)`` vs the whole step."""
    optimizer = torch.optim.AdamW(list(network.parameters()) + list(loss.parameters()), lr=1e-3)

    def run() -> dict[str, float]:
        it = iter(loader)
        wait = total = 0.0
        for _ in range(steps):
            start = time.perf_counter()
            batch = next(it)
            got = time.perf_counter()
            inputs, targets = prepare(batch)
            optimizer.zero_grad(set_to_none=True)
            loss(network(inputs), targets).backward()
            optimizer.step()
            end = time.perf_counter()
            wait += got - start
            total += end - start
        return {"wait_s": wait, "step_s": total}

    return run


def _wait_rows(runs: dict[str, Callable[[], dict[str, float]]], steps: int, repeats: int) -> list[dict[str, Any]]:
    """One warm-up round each, then ``repeats`` rounds alternating the order; median wait fractions."""
    for run in runs.values():
        run()
    records: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for r in range(repeats):
        for name in runs if r % 2 == 0 else reversed(list(runs)):
            records[name].append(runs[name]())
    rows = []
    for name, recs in records.items():
        fraction = ratio_spread([rec["wait_s"] for rec in recs], [rec["step_s"] for rec in recs])  # per round
        rows.append(
            {
                "dataset": name,
                "steps_per_round": steps,
                "wait_fraction_median": fraction["median"],
                "wait_fraction": fraction,
                "step_s_median": statistics.median(rec["step_s"] / steps for rec in recs),
                "wait_s_median": statistics.median(rec["wait_s"] / steps for rec in recs),
                "rounds": recs,
            }
        )
    return rows


def bench_wait(args: argparse.Namespace) -> dict[str, Any]:
    spec = load_spec(REPO / "data_specs" / "breast_ultrasound.yaml")
    cases = spec.build_cases()
    datalist = cases.datalist("train")
    steps = 2 if args.quick else 10
    if args.quick:
        datalist = datalist[: 16 * steps]
    tasks = spec.task_list
    features = (8, 8, 16, 32, 64, 8)
    network = MultiTaskNet("unet", tasks, backbone_kwargs={"spatial_dims": 2, "features": features})
    loss = MultiTaskLoss(tasks, class_weights=cases.class_weights("train"))

    def make_round(ds: Any, augment: BatchAugment | None = None) -> Callable[[], dict[str, float]]:
        loader = DataLoader(ds, batch_size=16, shuffle=True, num_workers=0)
        return _training_round(loader, MultiTaskPrepareBatch(tasks, augment=augment), network, loss, steps)

    print(f"[{time.strftime('%X')}] loader wait: building cache...", flush=True)
    runs = {
        "medmtl TrainingCacheDataset": make_round(
            TrainingCacheDataset(datalist, build_transforms(spec, 128, train=True), cache_rate=1.0, progress=False)
        ),
        DEFAULT_2D: make_round(
            TrainingCacheDataset(
                datalist, build_transforms(spec, 128, train=True, batch_augment=True), cache_rate=1.0, progress=False
            ),
            BatchAugment(2, seed=0),
        ),
        "MONAI Dataset": make_round(Dataset(datalist, build_transforms(spec, 128, train=True))),
    }
    print(f"[{time.strftime('%X')}] loader wait: training...", flush=True)
    rows = _wait_rows(runs, steps, args.repeats)
    return {"network": f"2D MultiTaskNet unet features {features}", "batch_size": 16, "spatial_size": 128, "rows": rows}


def bench_wait_3d(args: argparse.Namespace) -> dict[str, Any]:
    """Loader wait of the brain MRI bundle's training: its default network, size, batch and the full
    item-level augmentation (affine, noise, contrast, flips on the volume) after the cached prefix."""
    pairs = BRAIN_PAIRS[2:] if args.quick else BRAIN_PAIRS
    n_items, steps = (4, 1) if args.quick else (12, 3)
    size, batch = ((48, 48, 48) if args.quick else (96, 112, 96)), 2  # the bundle's spatial_size and batch_size
    datalist = [
        {"case_id": f"case_{i:02d}", "image": str(BRAIN / img), "brain": str(BRAIN / mask), "brain_present": 1}
        for i, (img, mask) in zip(range(n_items), itertools.cycle(pairs))
    ]
    tasks = [Task(name="brain", kind="segmentation", classes=["background", "brain"])]
    features = (16, 16, 32, 64, 128, 16)  # the bundle's "unet" preset (its default backbone)
    network = MultiTaskNet("unet", tasks, backbone_kwargs={"spatial_dims": 3, "features": features, "dropout": 0.1})
    loss = MultiTaskLoss(tasks)

    def make_round(ds: Any) -> Callable[[], dict[str, float]]:
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)
        return _training_round(loader, MultiTaskPrepareBatch(tasks), network, loss, steps)

    def transforms() -> Any:  # as the bundle's train::preprocessing: default augmentation (aug_prob 0.5)
        return build_transforms(BRAIN_SPEC, size, train=True, pixdim=2.0)

    print(f"[{time.strftime('%X')}] 3D loader wait: building cache...", flush=True)
    runs = {
        "medmtl TrainingCacheDataset (the 3D bundles' default)": make_round(
            TrainingCacheDataset(datalist, transforms(), cache_rate=1.0, progress=False)
        ),
        "MONAI Dataset": make_round(Dataset(datalist, transforms())),
    }
    print(f"[{time.strftime('%X')}] 3D loader wait: training...", flush=True)
    rows = _wait_rows(runs, steps, args.repeats)
    return {
        "network": f"3D MultiTaskNet unet features {features}",
        "batch_size": batch,
        "spatial_size": list(size),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats: a smoke check (< 60 s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick: 2)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 5)
    if missing_data(BUSI, *(BRAIN / f for pair in BRAIN_PAIRS for f in pair)):
        return
    torch.set_num_threads(args.threads)
    tune_host_allocator(torch.device("cpu"))  # as the bundles do on CPU: every candidate runs in this process
    set_determinism(seed=0)

    start = time.perf_counter()
    busi = bench_busi(args)
    with tempfile.TemporaryDirectory(prefix="medmtl_bench_") as tmp:
        brain = bench_brain(args, Path(tmp))
    wait = bench_wait(args)
    wait_3d = bench_wait_3d(args)
    elapsed = time.perf_counter() - start

    for title, part, ref_keys in (
        (f"2D BUSI, {busi['images']} images at 128 px, batch 16", busi, ("plain PIL/NumPy", PLAIN_MONAI_2D)),
        (f"3D brain, {brain['items']} volumes at {brain['spatial_size']}^3, batch 2", brain, ("MONAI Dataset",)),
    ):
        headers = ["loader", "epoch s (median)", "items/s"] + [f"x vs {k}" for k in ref_keys]
        rows = [
            [r["loader"], r["epoch"]["median_s"], r["items_per_s"]]
            + [spread_text(r[f"speedup_vs_{k}"]) for k in ref_keys]
            for r in part["loaders"]
        ]
        print_table(headers, rows, title)
        print("one-off: " + ", ".join(f"{k} {v:.3g} s" for k, v in part["cache_build_s"].items()))
    for part in (wait, wait_3d):
        print_table(
            ["dataset", "loader wait / step (per round)", "step s", "wait s"],
            [
                [r["dataset"], spread_text(r["wait_fraction"]), r["step_s_median"], r["wait_s_median"]]
                for r in part["rows"]
            ],
            f"loader wait in a training loop ({part['network']}, batch {part['batch_size']}, {part['spatial_size']})",
        )
    goals = busi["goals"]
    print(
        f"\ngoals ({busi['medmtl_default']} epoch speed-up): "
        + ", ".join(f"{k} {spread_text(v['spread'])} (goal {v['goal']}): {v['verdict']}" for k, v in goals.items())
        + f"; vs plain + same augmentation {spread_text(busi['medmtl_default_vs_plain_same_augmentation'])}"
    )
    wait_goals = {  # the bundles' default pipelines: the 2D bundles' and the brain bundle's
        f"loader_wait_{dims}": _goal(part["rows"][index]["wait_fraction"], 0.10, at_most=True)
        for dims, part, index in (("2d", wait, 1), ("3d", wait_3d, 0))
    }
    print(
        "goals (loader wait / step, default pipelines): "
        + ", ".join(f"{k} {spread_text(v['spread'])} ({v['goal']}): {v['verdict']}" for k, v in wait_goals.items())
    )
    print(f"benchmark time {elapsed:.0f} s")
    meta = machine(
        threads=args.threads, repeats=args.repeats, quick=args.quick, data=str(SHARED_DATA), duration_s=elapsed
    )
    results = {"busi_2d": busi, "brain_3d": brain, "loader_wait": wait, "loader_wait_3d": wait_3d}
    write_results(NAME, meta, {**results, "loader_wait_goals": wait_goals}, quick=args.quick)


if __name__ == "__main__":
    main()
