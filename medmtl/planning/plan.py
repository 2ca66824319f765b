"""``medmtl plan``: validate, fingerprint, then choose every training setting, fitted by trial steps.

Why: nnU-Net configures segmentation from a dataset fingerprint; medmtl does the same for
segmentation + image-level tasks with partial labels. The rules (:mod:`medmtl.planning.rules`) turn
the fingerprint into settings; the input size, batch size and epochs are then fitted by running the
bundle's own training steps on the device (:mod:`medmtl.planning.trial`): the batch must fit the
memory budget as measured, and the epochs the time budget as timed.

The precision comes first (``--amp``, :data:`AMP_MODES`): ``on`` / ``off`` as given; with ``auto`` (the
default) on the CPU one trial step at the reference size in float32 and one with bfloat16 autocast (the
bundles' ``amp`` on a CPU, :class:`~medmtl.engines.CPUAutocastNetwork`), ``amp`` chosen when it is at least
:data:`_AMP_MIN_SPEEDUP` faster, so a CPU without native bfloat16 keeps float32; on CUDA the bundle's own
AMP default stands. Size, batch and epochs are then fitted in that precision.

Order of the size/batch/epochs search:
1. one trial at a moderate size of the ladder (finest first) gives seconds per voxel;
2. the finest size whose predicted epochs reach :data:`~medmtl.planning.rules.MIN_EPOCHS` and steps
   :data:`~medmtl.planning.rules.MIN_STEPS` is tried for real at the preferred batch size, the batch
   halved until the measured peak memory fits, the next coarser size taken when batch 1 does not fit
   or the measured time misses the epoch target;
3. epochs = what the measured step time allows in the budget (after the cache build and validation).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import medmtl
from medmtl.byte_size import parse_byte_size
from medmtl.planning.plan_cache import PlanCache, data_digest
from medmtl.planning.plan_file import PLAN_VERSION, Choice, PlanError, spec_digest, write_plan
from medmtl.planning.rules import (
    MIN_EPOCHS,
    MIN_STEPS,
    augmentation_choices,
    intensity_choices,
    main_input,
    network_choices,
    preferred_batch_size,
    size_ladder,
    task_choices,
)
from medmtl.planning.trial import BundleTrial, TrialResult, peak_memory_supported
from medmtl.planning.worker_pool import TrialWorkerPool

__all__ = [
    "AMP_MODES",
    "DEFAULT_AMP",
    "PlanResult",
    "parse_duration",
    "default_bundle",
    "default_memory_budget",
    "make_plan",
]

logger = logging.getLogger(__name__)

_BUDGET_SHARE = 0.95
"""Share of the time budget given to training epochs (the rest: steps slower than the median measured).

The trial's step time is the same step a run takes (a run's per-step median matched it on BUSI), but this
machine's speed drifts by about 10 % over minutes: BUSI runs planned at 0.95 took 1.00-1.05 of the budget
(benchmarks/README.md), and the run's time limit then ends them within the last 5 % of the cosine schedule."""
_START_SECONDS = 15.0
"""Start-up of a bundle run before the cache is built (imports, validation, MLflow)."""
_MAX_EPOCHS = 1000
_WORKERS_AHEAD = 2
"""CPU trial workers started while the data is read: the size search's usual two trials (reference, chosen)."""
_REFERENCE_VOXELS = {2: 128 * 128, 3: 64 * 64 * 64}
"""Size of the first (reference) trial: cheap, and large enough that per-voxel time is representative."""
AMP_MODES = ("auto", "on", "off")
"""``medmtl plan --amp``: ``auto`` times bfloat16 autocast on a CPU (CUDA: the bundle's AMP); ``on`` / ``off`` as given."""
DEFAULT_AMP = "auto"
"""What ``medmtl plan`` does about mixed precision unless told (see benchmarks/README.md, bfloat16 on the CPU)."""
_AMP_MIN_SPEEDUP = 1.1
"""bfloat16 autocast on the CPU is chosen when its trial step is this much faster than float32 (timing noise
is a few per cent)."""


@dataclass
class PlanResult:
    """What ``make_plan`` wrote and measured."""

    plan_path: Path
    fingerprint_path: Path
    choices: list[Choice]
    meta: dict[str, Any]
    trials: list[TrialResult] = field(default_factory=list)
    seconds: float = 0.0


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``"10m"``, ``"90s"``, ``"1.5h"`` or a plain number of minutes."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text) * 60
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*", str(text))
        if not match:
            raise ValueError(f"time budget {text!r} is not a duration; use e.g. 10m, 90s or 1.5h")
        unit = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[match.group(2) or "m"]
        seconds = float(match.group(1)) * unit
    if not seconds > 0:
        raise ValueError(f"time budget must be positive, got {text!r}")
    return seconds


def default_bundle(fingerprint: Mapping[str, Any]) -> str:
    """The bundle for a dataset: by modality and dimensions (``--bundle`` chooses another)."""
    modality = str(fingerprint["spec"].get("modality") or "").upper()
    dims = int(fingerprint["spec"]["spatial_dims"])
    if len(fingerprint["inputs"]) > 1:
        return "knee_mri_mtl"
    if dims == 3:
        return "brain_mri_mtl"
    if modality == "US":
        return "ultrasound_mtl"
    if modality in ("CR", "DX", "XR"):
        return "chest_xray_mtl"
    return "demo"


def default_memory_budget(device: torch.device) -> int:
    """90 % of the GPU's memory, or 50 % of the memory available now on the host."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def _voxels(size: Any) -> int:
    return math.prod(int(v) for v in size)


def _validate(spec_path: Path, root: Any, spec_overrides: Mapping[str, Any], workers: int) -> None:
    from medmtl.data.validate import validate_dataset
    from medmtl.data.validate.dataset import DatasetInvalidError

    # duplicates are the plan's own report (_duplicates), from the case table the fingerprint reads too
    report = validate_dataset(
        spec_path, root=root, workers=workers, spec_overrides=dict(spec_overrides), duplicates=False
    )
    if not report.ok:
        raise DatasetInvalidError(report)


@dataclass
class _Epochs:
    epochs: int
    epoch_seconds: float
    available_seconds: float
    steps_per_epoch: int


def _epochs_for(
    result: TrialResult, counts: Mapping[str, int], budget_s: float, preprocess_s: float, val_windows: float
) -> _Epochs:
    """Epochs the budget allows at a trial's measured step time (cache build, validation, checkpoints subtracted)."""
    train, val = counts.get("train", 0), counts.get("val", 0)
    steps = max(1, math.ceil(train / result.batch_size))
    validation = val * result.forward_seconds / result.batch_size * val_windows
    # about ten validations per run; last.pt saved after every epoch
    epoch = steps * result.step_seconds + validation / 10 + result.checkpoint_seconds
    available = budget_s * _BUDGET_SHARE - _START_SECONDS - preprocess_s * (train + val)
    return _Epochs(max(0, int(available // epoch)), epoch, available, steps)


def _meets_target(estimate: _Epochs) -> bool:
    return estimate.epochs >= MIN_EPOCHS and estimate.epochs * estimate.steps_per_epoch >= MIN_STEPS


def _window_count(fingerprint: Mapping[str, Any], candidate: Mapping[str, Any], overlap: float = 0.25) -> float:
    """Sliding windows per validation volume (3D): the median volume at the candidate's voxel size / ROI."""
    if candidate.get("pixdim") is None:
        return 1.0
    _, summary = main_input(fingerprint)
    extent = [s * d for s, d in zip(summary["median_shape"], summary["median_spacing"], strict=True)]
    count = 1.0
    for e, p, r in zip(extent, candidate["pixdim"], candidate["spatial_size"], strict=True):
        count *= max(1, math.ceil((e / p - r) / (r * (1 - overlap))) + 1)
    return count


def make_plan(
    spec: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike = "plan.yaml",
    bundle: str | None = None,
    device: str | torch.device | None = None,
    time_budget: str | float = "10m",
    memory: str | int | None = None,
    spec_overrides: Mapping[str, Any] | None = None,
    pretrained_weights: str | os.PathLike | None = None,
    amp: str = DEFAULT_AMP,
    workers: int = 0,
    progress: bool = True,
) -> PlanResult:
    """Validate the dataset, fingerprint it, choose the settings, fit size/batch/epochs; write ``plan.yaml``.

    Args:
        spec: data spec YAML.
        root: data root (default: the spec's).
        out: the plan file; ``fingerprint.json`` (the cache of the next run) is written beside it.
        bundle: bundle whose network is fitted (default: :func:`default_bundle`).
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        time_budget: training time (``"10m"``, ``"1h"``, minutes as a number).
        memory: memory budget (``"8GiB"``; default :func:`default_memory_budget`).
        spec_overrides: top-level spec keys replaced (e.g. another ``splits``), recorded in the plan.
        pretrained_weights: encoder weights file the plan's runs start from.
        amp: mixed precision of the planned runs, one of :data:`AMP_MODES` (see :func:`_precision_choices`).
        workers: processes reading the cases (0: every core).
        progress: progress bars on stderr.

    Raises:
        DatasetInvalidError: the data fails validation (the whole report).
        PlanError: even batch 1 at the smallest size exceeds the memory budget (says what would fit).
        ValueError: ``amp`` is not one of :data:`AMP_MODES`.
    """
    from medmtl.data.spec import load_spec
    from medmtl.planning.fingerprint import compute_fingerprint, write_fingerprint

    if amp not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}; got {amp!r}")
    started = time.perf_counter()
    spec_path = Path(spec).resolve()
    overrides = dict(spec_overrides or {})
    budget_s = parse_duration(time_budget)
    run_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    memory_budget = parse_byte_size(memory, "--memory") if memory is not None else default_memory_budget(run_device)
    if memory_budget <= 0:
        raise ValueError(f"--memory must be positive, got {memory!r}")
    if not peak_memory_supported(run_device):
        raise PlanError(
            "peak memory cannot be measured on this system (no VmHWM in /proc/self/status); plan on Linux or on CUDA"
        )
    out_path = Path(out)
    fingerprint_path = out_path.with_name("fingerprint.json")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    loaded = load_spec(spec_path, **overrides)
    data_root = loaded.resolved_root(root)
    cache = PlanCache(out_path.with_name("plan_cache.json"), data_digest(data_root, spec_path, overrides))
    with TrialWorkerPool() as trial_workers:  # idle workers stop on any way out
        if run_device.type == "cpu" and not cache.validated():  # a first plan: trials will run
            trial_workers.start(_WORKERS_AHEAD)
        if not cache.validated():  # the same bytes passed before: not opened again
            _validate(spec_path, root, overrides, workers)
            cache.mark_validated()
        table = loaded.build_cases(root=root)  # one split and duplicate search for the fingerprint and the plan
        fingerprint = compute_fingerprint(
            spec_path,
            root,
            spec_overrides=overrides,
            workers=workers,
            cache=fingerprint_path,
            progress=progress,
            table=table,
        )
        write_fingerprint(fingerprint, fingerprint_path)
        counts = table.split_counts()
        duplicates_note = _duplicates(table, loaded, data_root, out_path.with_name("duplicates.csv"))
        bundle_name = bundle or default_bundle(fingerprint)
        dims = int(fingerprint["spec"]["spatial_dims"])

        data_choices = [
            Choice("data_spec", str(spec_path), "the spec the fingerprint read"),
            Choice("dataset_dir", str(Path(fingerprint["root"]).resolve()), "the data the fingerprint read"),
        ]
        if overrides:
            data_choices.append(
                Choice("spec_overrides", overrides, "spec keys replaced for this plan (--spec-overrides)")
            )
        trial = BundleTrial(bundle_name, {}, run_device, workers=trial_workers)
        try:
            trial.cache = cache
            trial_parser = trial.parser({})
            trial_config = trial_parser.get() or {}
            given_rotation = trial_parser.get("train::preprocessing::rotate_degrees")
            presets = trial_config.get("backbone_presets") or {}
            given_overlap = trial_config.get("sw_overlap")
            overlap = float(given_overlap) if isinstance(given_overlap, int | float) else 0.25
            spec_weights = {
                t.name: {"class_weights": t.class_weights, "pos_weight": t.pos_weight} for t in loaded.tasks
            }
            network = (
                network_choices(fingerprint, run_device.type, presets)
                if pretrained_weights is None
                else _pretrained_choices(Path(pretrained_weights), fingerprint, presets)
            )
            fixed = [
                *data_choices,
                Choice("", None, duplicates_note),
                *intensity_choices(fingerprint),
                *network,
                *task_choices(fingerprint, spec_weights),
                *augmentation_choices(fingerprint, given_rotation if isinstance(given_rotation, int | float) else None),
            ]
            trial.overrides = {c.key: c.value for c in fixed if c.key}
            fixed += _precision_choices(trial, fingerprint, counts, memory_budget, dims, amp)
            trial.overrides = {c.key: c.value for c in fixed if c.key}
            fitted, trials = _fit(trial, fingerprint, counts, budget_s, memory_budget, dims, overlap)
        finally:
            trial.close()
    result, estimate, candidate = fitted
    measured = [
        Choice(
            "spatial_size",
            list(result.spatial_size),
            f"median image {[round(v) for v in main_input(fingerprint)[1]['median_shape']]} "
            + (f"at {candidate['pixdim']} mm " if candidate["pixdim"] else "")
            + f"-> the finest size on the ladder that allows >= {MIN_EPOCHS} epochs and >= {MIN_STEPS} steps "
            f"in the budget (measured {result.step_seconds:.3f} s per step)",
        ),
    ]
    if candidate["pixdim"] is not None:  # the bundle's overlap is kept (a note, not an override)
        windows = _window_count(fingerprint, candidate, overlap)
        measured.append(
            Choice(
                "",
                None,
                f"validation and inference slide the {list(result.spatial_size)} ROI over whole volumes (the "
                f"bundle's sw_overlap {overlap:g}): {windows:.0f} window(s) for the median volume, counted in the "
                "epoch time",
            )
        )
    if candidate["pixdim"] is not None:
        _, summary = main_input(fingerprint)
        measured.append(
            Choice(
                "pixdim",
                candidate["pixdim"],
                f"median voxel size {summary['median_spacing']} mm (anisotropy {summary.get('anisotropy') or 1:.1f}); "
                "coarsened until the median volume trains within the time budget",
            )
        )
    measured += [
        Choice(
            "batch_size",
            result.batch_size,
            f"preferred {preferred_batch_size(counts.get('train', 0), dims)}; trial steps on {run_device.type} "
            f"peaked at {_gib(result.peak_bytes)} of the {_gib(memory_budget)} budget",
        ),
        Choice(
            "epochs",
            estimate.epochs,
            f"{estimate.steps_per_epoch} steps x {result.step_seconds:.3f} s (+ validation, checkpoint) = "
            f"{estimate.epoch_seconds:.1f} s per epoch; {estimate.available_seconds:.0f} s of the "
            f"{budget_s:.0f} s budget left after start-up and caching",
        ),
        Choice(
            "time_limit_minutes",
            round(budget_s / 60, 2),
            "the time budget: training stops cleanly there even if steps run slower than measured",
        ),
    ]
    if counts.get("val", 0):
        measured.append(
            Choice(
                "val_interval", max(1, estimate.epochs // 10), "about ten validations per run (best.pt chosen on them)"
            )
        )
    else:
        measured.append(
            Choice(
                "val_interval",
                estimate.epochs + 1,
                "the split has no validation cases: no validation during training; best.pt then holds the final weights",
            )
        )
    meta = {
        "version": PLAN_VERSION,
        "medmtl": medmtl.__version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bundle": bundle_name,
        "spec_name": loaded.name,
        "spec_digest": spec_digest(loaded),
        "device": run_device.type,
        "time_budget_s": budget_s,
        "memory_budget_bytes": memory_budget,
        "fingerprint": str(fingerprint_path.resolve()),
    }
    choices = [*fixed, *measured]
    header = [
        f"medmtl plan for dataset {loaded.name!r} ({fingerprint['num_cases']} cases, split {dict(counts)}), "
        f"bundle {bundle_name}, {run_device.type}",
        "Every value is a bundle override with its reason above it; command-line overrides win. Train with:",
        f"  medmtl run {bundle_name} train --plan {out_path} --output_dir runs/{loaded.name}",
        f"or: python -m monai.bundle run --config_file <the bundle's layers> --args_file {out_path}",
    ]
    write_plan(out_path, meta, choices, header)
    seconds = time.perf_counter() - started
    logger.info("plan written to %s in %.1f s", out_path, seconds)
    return PlanResult(out_path, fingerprint_path, choices, meta, trials, seconds)


def _batch_ladder(preferred: int) -> list[int]:
    """1, 2, 4, ... up to ``preferred`` (ascending: each trial's peak bounds the next)."""
    sizes = [1]
    while sizes[-1] * 2 <= preferred:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != preferred:
        sizes.append(preferred)
    return sizes


def cache_bytes(fingerprint: Mapping[str, Any], spatial_size: Any, cases: int) -> int:
    """Host memory of the training/validation cache at ``spatial_size``: float32 images and masks per case."""
    channels = sum(int(summary.get("channels") or 1) for summary in fingerprint["inputs"].values())
    masks = sum(1 for task in fingerprint["tasks"].values() if task["kind"] == "segmentation")
    return (channels + masks) * _voxels(spatial_size) * 4 * cases


def _pretrained_choices(path: Path, fingerprint: Mapping[str, Any], presets: Mapping[str, Any]) -> list[Choice]:
    """The backbone a weight file fits (its layout and depth), the file, and a lower encoder learning rate."""
    from medmtl.engines.finetune import read_weights
    from medmtl.networks.pretrained import backbone_for_weights, state_dict_of

    state, _ = state_dict_of(read_weights(path), str(path))
    name, dims = backbone_for_weights(state, str(path))
    wanted = int(fingerprint["spec"]["spatial_dims"])
    if dims != wanted:
        raise PlanError(f"{path} holds {dims}D weights and the data is {wanted}D: give a {wanted}D weight file")
    choices = [Choice("backbone", name, f"the backbone {path.name} fits (its key names and blocks)")]
    if name not in presets:
        choices.append(
            Choice(f"backbone_presets::{name}", {"spatial_dims": wanted, "in_channels": 1}, f"{name}: no preset yet")
        )
    elif name in ("unet", "resunet", "segresnet"):
        choices.append(Choice("", None, f"{name}: the preset's widths must match {path.name}'s (checked at load)"))
    return [
        *choices,
        Choice("pretrained_weights", str(path.resolve()), "encoder weights given to the plan (--pretrained-weights)"),
        Choice("encoder_lr_factor", 0.1, "pretrained encoder: a tenth of the heads' learning rate keeps its features"),
    ]


def _duplicates(table: Any, spec: Any, root: Path, csv_path: Path) -> str:
    """Find duplicate images (reusing the split's search), write ``duplicates.csv``, say what the split does."""
    from medmtl.data.duplicates import find_duplicates

    found = table.duplicates
    if found is None:
        found = find_duplicates(table.cases, spec, cache_name=root).with_splits(table.cases)
    found = found.with_labels(table.cases, spec)
    summary = found.summary()
    if not found.pairs:
        csv_path.unlink(missing_ok=True)
        return f"duplicates: none among {summary['images_compared']} images"
    found.write_csv(csv_path)
    together = spec.splits.duplicates == "together" and table.duplicates is not None
    return (
        f"duplicates: {summary['images_in_groups']} of {summary['images_compared']} images in {summary['groups']} "
        f"groups ({summary['label_conflicts']} pairs with labels that disagree; every pair in {csv_path.name}); "
        + (
            "the split keeps each group together"
            if together
            else f"{summary['across_splits']} pairs fall in different splits (splits.duplicates: ignore or a "
            "recorded split): test figures are optimistic"
        )
    )


def _reference_index(ladder: list[dict[str, Any]], dims: int) -> int:
    """The ladder size closest to :data:`_REFERENCE_VOXELS`: where the first trial runs."""
    return min(
        range(len(ladder)), key=lambda i: abs(math.log(_voxels(ladder[i]["spatial_size"]) / _REFERENCE_VOXELS[dims]))
    )


def _ladder_values(candidate: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle overrides of one ladder size."""
    values: dict[str, Any] = {"spatial_size": candidate["spatial_size"]}
    if candidate["pixdim"] is not None:
        values["pixdim"] = candidate["pixdim"]
    return values


def _precision_choices(
    trial: BundleTrial,
    fingerprint: Mapping[str, Any],
    counts: Mapping[str, int],
    memory_budget: int,
    dims: int,
    amp: str,
) -> list[Choice]:
    """The planned runs' ``amp``: as given (``on`` / ``off``), or with ``auto`` on a CPU bfloat16 autocast when
    a trial step at the reference size is clearly faster with it (on CUDA the bundle's own AMP default).

    Timed rather than read from CPU flags: the trial runs the bundle's own step, so whatever the CPU and
    PyTorch build do (native bfloat16, emulation, oneDNN's choice of kernels) is what is compared. Time
    only, in this process: the memory is measured by the fitting trials that follow, in the chosen precision
    (so the timed steps are not among the plan's trials; their times are in the choice's reason).
    """
    cpu = trial.device.type == "cpu"
    kind = "bfloat16 autocast on the CPU" if cpu else "float16 AMP on CUDA"
    if amp == "on":
        return [Choice("amp", True, f"--amp on: {kind}; weights, losses and metrics stay float32")]
    if amp == "off":
        return [Choice("amp", False, "--amp off: float32 (--amp auto times mixed precision on a CPU)")]
    if not cpu:
        return []
    ladder = size_ladder(fingerprint)
    values = _ladder_values(ladder[_reference_index(ladder, dims)])
    batch = [preferred_batch_size(counts.get("train", 0), dims)]
    float32 = trial.run_batches({**values, "amp": False}, batch, memory_budget, time_only=True)[0]
    bfloat16 = trial.run_batches({**values, "amp": True}, batch, memory_budget, time_only=True)[0]
    measured = (
        f"{bfloat16.step_seconds:.3f} s per step with bfloat16 autocast vs {float32.step_seconds:.3f} s in float32 "
        f"(size {list(float32.spatial_size)}, batch {float32.batch_size})"
    )
    if bfloat16.step_seconds * _AMP_MIN_SPEEDUP <= float32.step_seconds:
        choice = Choice("amp", True, f"{measured}: {kind}; weights, losses and metrics stay float32")
    else:
        choice = Choice("", None, f"float32: {measured}, not {_AMP_MIN_SPEEDUP:g}x faster")
    return [choice]


def _fit(
    trial: BundleTrial,
    fingerprint: Mapping[str, Any],
    counts: Mapping[str, int],
    budget_s: float,
    memory_budget: int,
    dims: int,
    overlap: float = 0.25,
) -> tuple[tuple[TrialResult, _Epochs, dict[str, Any]], list[TrialResult]]:
    """Size, batch and epochs: see the module docstring for the search."""
    ladder = size_ladder(fingerprint)
    preferred = preferred_batch_size(counts.get("train", 0), dims)
    batches = _batch_ladder(preferred)
    cached_cases = counts.get("train", 0) + counts.get("val", 0)
    trials: list[TrialResult] = []
    measured: dict[int, list[TrialResult]] = {}

    def step_budget(candidate: Mapping[str, Any]) -> int:
        """The budget left for the training step once the dataset cache is counted (host memory only)."""
        if trial.device.type != "cpu":
            return memory_budget
        return memory_budget - cache_bytes(fingerprint, candidate["spatial_size"], cached_cases)

    def run(index: int) -> list[TrialResult]:
        if index not in measured:
            candidate = ladder[index]
            measured[index] = trial.run_batches(_ladder_values(candidate), batches, step_budget(candidate))
            trials.extend(measured[index])
        return measured[index]

    reference_index = _reference_index(ladder, dims)
    reference = next((r for r in reversed(run(reference_index)) if r.fits), run(reference_index)[0])
    per_voxel = reference.step_seconds / _voxels(reference.spatial_size)
    forward_per_voxel = reference.forward_seconds / _voxels(reference.spatial_size)
    preprocess = trial.preprocess_seconds or 0.0

    def predicted(candidate: Mapping[str, Any]) -> _Epochs:
        voxels = _voxels(candidate["spatial_size"]) * reference.batch_size / preferred
        guess = TrialResult(
            tuple(candidate["spatial_size"]),
            preferred,
            0,
            per_voxel * voxels,
            forward_per_voxel * voxels,
            True,
            reference.checkpoint_seconds,
        )
        return _epochs_for(guess, counts, budget_s, preprocess, _window_count(fingerprint, candidate, overlap))

    start = next((i for i, c in enumerate(ladder) if _meets_target(predicted(c))), len(ladder) - 1)
    last_error: str | None = None
    for index in range(start, len(ladder)):
        candidate = ladder[index]
        fitting = [r for r in run(index) if r.fits]
        if not fitting:
            first = run(index)[0]
            last_error = (
                f"at size {list(first.spatial_size)} batch 1 peaked at {_gib(first.peak_bytes)}, over the "
                f"{_gib(step_budget(candidate))} left for a step of the {_gib(memory_budget)} budget"
            )
            continue
        result = fitting[-1]
        estimate = _epochs_for(result, counts, budget_s, preprocess, _window_count(fingerprint, candidate, overlap))
        if _meets_target(estimate) or index == len(ladder) - 1:
            if not _meets_target(estimate):
                logger.warning(
                    "the time budget allows only %d epochs at the smallest size %s: consider a larger --time-budget",
                    estimate.epochs,
                    list(result.spatial_size),
                )
            if estimate.epochs < 1:
                raise PlanError(
                    f"the time budget of {budget_s:.0f} s leaves no time for one epoch at the smallest size "
                    f"{list(result.spatial_size)} ({estimate.epoch_seconds:.1f} s per epoch, "
                    f"{estimate.available_seconds:.0f} s available after start-up and caching); give a larger "
                    "--time-budget"
                )
            estimate.epochs = min(_MAX_EPOCHS, estimate.epochs)
            return (result, estimate, dict(candidate)), trials
    ones = [t.peak_bytes for t in trials if t.batch_size == 1]
    raise PlanError(
        f"nothing fits the memory budget: {last_error}. Batch 1 needs at least {_gib(min(ones))} at the sizes "
        "tried; give --memory at least that (plus the dataset cache), or use a device with more memory"
    )
