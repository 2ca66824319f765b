"""Trial training steps of a bundle's own network: peak memory and step time, measured, never guessed.

Why measured: activation memory and step time depend on the network, the input size, the device
and the allocator in ways no formula follows (MONAI's UNet decoder runs about 2x slower per FLOP
than its encoder on this project's CPUs). So the plan builds exactly what the bundle would build
(its config layers with the plan's overrides: network, loss, optimizer, ``train::prepare_batch``
with its batch augmentation, ``train::preprocessing`` on real training cases in the training
dataset class) and times real steps: items fetched from the cache (the random transforms each
item gets per step, on the CPU as the bundles' loaders run them), collated, forward, backward,
optimizer; plus the checkpoint each epoch ends with. Peak memory: on CUDA PyTorch's peak reserved bytes; on the CPU
the peak resident memory (``VmHWM``) of a fresh process that runs only the trial.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from torch.utils.data import ConcatDataset

from medmtl.bundle_layers import merged_config
from medmtl.data.datasets import TrainingCacheDataset
from medmtl.engines.guards import GuardExit
from medmtl.engines.host_memory import tune_host_allocator
from medmtl.planning.plan_cache import PlanCache
from medmtl.planning.worker_pool import TrialWorkerPool

__all__ = ["TrialResult", "BundleTrial", "peak_memory_supported"]

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_MIN_TIMED_SECONDS = 1.0


@dataclass(frozen=True)
class TrialResult:
    """What ``steps`` training steps at one size and batch cost.

    Attributes:
        spatial_size: the input size of the trial.
        batch_size: samples per step.
        peak_bytes: peak memory during the steps (see the module docstring for what is counted).
        step_seconds: median wall time of a training step (item fetch, collate, forward, loss, backward,
            optimizer): the items' random transforms vary per step, so a run costs the typical step. A
            batch size below the largest that fits is timed by one step only (:meth:`BundleTrial.measure`).
        forward_seconds: wall time of one no-grad forward pass of the same batch.
        checkpoint_seconds: wall time of saving the network and optimizer state (``last.pt`` after
            every epoch: it matters when an epoch is a few steps).
        fits: ``peak_bytes`` is within the budget (and no out-of-memory error was raised).
    """

    spatial_size: tuple[int, ...]
    batch_size: int
    peak_bytes: int
    step_seconds: float
    forward_seconds: float
    fits: bool
    checkpoint_seconds: float = 0.0


def peak_memory_supported(device: torch.device) -> bool:
    """Whether peak memory can be measured here (CUDA, or Linux's per-process high-water mark)."""
    return device.type == "cuda" or (_STATUS.is_file() and "VmHWM:" in _STATUS.read_text())


def _reset_peak(device: torch.device) -> None:
    """CUDA only: a CPU trial runs in a fresh process, whose high-water mark is the trial's."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_reserved(device))
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{_STATUS} has no VmHWM line; peak memory cannot be measured on this system")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BundleTrial:
    """Builds a bundle's training objects with given overrides and times real steps on real cases.

    Args:
        bundle: bundle name or folder.
        overrides: config overrides every trial uses (data spec, dataset folder, the plan's choices).
        device: where the steps run.
        sample_cases: how many training cases are read and preprocessed (batches repeat them).
        workers: where CPU trials run (default: a new pool; ``medmtl plan`` passes the one it started
            ahead); :meth:`close` stops its idle workers.

    Example::

        trial = BundleTrial("ultrasound_mtl", {"data_spec": spec, "dataset_dir": root}, torch.device("cpu"))
        result = trial.run({"spatial_size": [128, 128]}, batch_size=16, memory_budget=8 << 30)
    """

    def __init__(
        self,
        bundle: str | os.PathLike,
        overrides: Mapping[str, Any],
        device: torch.device,
        sample_cases: int = 4,
        workers: TrialWorkerPool | None = None,
    ) -> None:
        self.bundle = bundle
        self.overrides = dict(overrides)
        self.device = device
        self.sample_cases = sample_cases
        self.workers = workers if workers is not None else TrialWorkerPool()
        self._config = merged_config(bundle, "train")
        self._workdir = tempfile.TemporaryDirectory(prefix="medmtl_plan_")
        self.preprocess_seconds: float | None = None
        """Median seconds to read and preprocess one case (the dataset cache's cost per case)."""
        self.in_process = False
        """Run CPU trials in this process (the worker itself; tests of the step code)."""
        self.steps = 5
        """Timed steps per batch size at least (after two warm-ups; more until one second is measured)."""
        self.min_timed_seconds = _MIN_TIMED_SECONDS
        """Time measured per batch size at least (up to ``4 * steps`` steps); 0: exactly ``steps``."""
        self.cache: PlanCache | None = None
        """Where earlier results on the same data are kept (``medmtl plan`` sets it)."""
        self._case_tables: dict[str, Any] = {}
        """The bundle's ``cases`` per data setting, built once: each trial parses the config again (one per
        batch size), and building the table lists the dataset's files and searches it for duplicates."""

    def close(self) -> None:
        self.workers.close()
        self._workdir.cleanup()

    def parser(self, overrides: Mapping[str, Any]) -> ConfigParser:
        """The bundle's parsed config with the trial's overrides (output in a scratch folder).

        Its ``cases`` is the case table an earlier trial with the same data settings built (the trials
        only read it).
        """
        parser = ConfigParser(copy.deepcopy(self._config))  # update() writes into the dict it was given
        parser.update(
            {
                **self.overrides,
                **overrides,
                "output_dir": self._workdir.name,
                "device": f"$torch.device({str(self.device)!r})",
                "validate_data": False,
                "resume": False,
            }
        )
        table = self._case_tables.get(_data_key(parser))
        if table is not None:
            parser["cases"] = table
        return parser

    def _dataset(self, parser: ConfigParser) -> TrainingCacheDataset:
        """The sample cases in the bundles' training dataset: deterministic part cached, random per item."""
        cases = parser.get_parsed_content("train_cases")[0]
        self._case_tables.setdefault(_data_key(parser), parser.get_parsed_content("cases"))
        if not cases:
            raise ValueError("the training split has no labelled case: nothing to run trial steps on")
        transform = parser.get_parsed_content("train::preprocessing")
        sample = [dict(case) for case in cases[: self.sample_cases]]
        start = time.perf_counter()
        dataset = TrainingCacheDataset(sample, transform, cache_rate=1.0, num_workers=0, progress=False)
        self.preprocess_seconds = (time.perf_counter() - start) / len(sample)
        return dataset

    def run(
        self, overrides: Mapping[str, Any], batch_size: int, memory_budget: int, steps: int | None = None
    ) -> TrialResult:
        """One batch size: :meth:`run_batches` with ``[batch_size]``."""
        return self.run_batches(overrides, [batch_size], memory_budget, steps)[0]

    def run_batches(
        self,
        overrides: Mapping[str, Any],
        batch_sizes: Sequence[int],
        memory_budget: int,
        steps: int | None = None,
        time_only: bool = False,
    ) -> list[TrialResult]:
        """Training steps at each batch size (ascending), stopping once one exceeds ``memory_budget``.

        On the CPU this runs in a fresh Python process (:mod:`medmtl.planning.trial_worker`): its
        peak resident memory is then what a training process needs (runtime, network, optimizer
        state, one step), which the planning process, holding earlier trials' freed memory, cannot
        tell. On CUDA it runs here (PyTorch's peak counters reset per trial). ``time_only``: only
        the step time will be used, so the steps run here without a worker's start-up; their
        ``peak_bytes`` (and ``fits``) are then this process's and say nothing about a run's memory.
        """
        steps = self.steps if steps is None else steps
        request = {
            "config": self._config,
            "overrides": {**self.overrides, **overrides},
            "batch_sizes": list(batch_sizes),
            "steps": steps,
            "min_seconds": self.min_timed_seconds,
            "sample_cases": self.sample_cases,
            "device": str(self.device),
            **({"time_only": True} if time_only else {}),  # never answers a request that needs the memory
        }
        answer = self.cache.trials(request) if self.cache is not None else None
        if answer is not None and _covers(answer["results"], batch_sizes, memory_budget):
            logger.info("trial at %s: measured before on the same data (plan_cache.json)", overrides)
            answer = {**answer, "results": [{**r, "fits": r["peak_bytes"] <= memory_budget} for r in answer["results"]]}
        elif self.device.type == "cpu" and not (self.in_process or time_only):
            answer = self._run_in_worker(overrides, batch_sizes, memory_budget, steps)
        else:
            self.workers.wait_ready()  # no worker importing beside a timed step
            tune_host_allocator(self.device)  # as a bundle's CPU run (and the worker) steps
            results = self.measure(overrides, batch_sizes, memory_budget, steps, self.min_timed_seconds)
            answer = {
                "results": [dataclasses.asdict(r) for r in results],
                "preprocess_seconds": self.preprocess_seconds,
            }
        if self.cache is not None:
            self.cache.store_trials(request, answer)
        self.preprocess_seconds = answer["preprocess_seconds"]
        results = [TrialResult(**{**r, "spatial_size": tuple(r["spatial_size"])}) for r in answer["results"]]
        for result in results:
            _log(result)
        return results

    def _run_in_worker(
        self, overrides: Mapping[str, Any], batch_sizes: Sequence[int], memory_budget: int, steps: int
    ) -> dict[str, Any]:
        request = {
            "bundle": os.fspath(self.bundle),
            "overrides": {**self.overrides, **overrides},
            "batch_sizes": list(batch_sizes),
            "memory_budget": memory_budget,
            "steps": steps,
            "min_seconds": self.min_timed_seconds,
            "sample_cases": self.sample_cases,
        }
        return self.workers.run(request)

    def measure(
        self,
        overrides: Mapping[str, Any],
        batch_sizes: Sequence[int],
        memory_budget: int,
        steps: int = 5,
        min_seconds: float | None = None,
    ) -> list[TrialResult]:
        """Run the steps in this process (what the worker and CUDA trials call).

        The batch sizes are tried in ascending order for their peak memory, and only the largest that
        fits is timed in full (the plan uses its time alone): two warm-up steps and at least ``steps``
        timed steps (more, up to ``4 * steps``, until ``min_seconds`` are measured: short steps on the
        CPU vary by +-30 %). A smaller batch size gets one timed step, so its ``step_seconds`` is one
        step's. Larger batch sizes are skipped once a measured peak exceeds the budget, or when the
        growth between the last two would take the next one past it (so the CPU trial never reaches
        the machine's limit). An out-of-memory error on CUDA is a result (``fits=False``), not a failure.
        """
        min_seconds = self.min_timed_seconds if min_seconds is None else min_seconds
        dataset = self._dataset(self.parser(overrides))
        ordered = sorted(batch_sizes)
        results: list[TrialResult] = []
        for batch_size in ordered:
            if len(results) >= 1 and not _may_fit(results, batch_size, memory_budget):
                break
            last = batch_size == ordered[-1]
            result = self._measure_batch(
                overrides, dataset, batch_size, memory_budget, steps if last else 1, min_seconds if last else 0.0
            )
            results.append(result)
            if not result.fits:
                break
        fitting = [i for i, r in enumerate(results) if r.fits]
        if fitting and results[fitting[-1]].batch_size != ordered[-1]:  # the sweep stopped below the last size
            index = fitting[-1]
            timed = self._measure_batch(
                overrides, dataset, results[index].batch_size, memory_budget, steps, min_seconds
            )
            results[index] = dataclasses.replace(
                results[index], step_seconds=timed.step_seconds, forward_seconds=timed.forward_seconds
            )
        return results

    def _measure_batch(
        self,
        overrides: Mapping[str, Any],
        dataset: TrainingCacheDataset,
        batch_size: int,
        memory_budget: int,
        steps: int,
        min_seconds: float,
    ) -> TrialResult:
        """Peak memory and times of one batch size: the bundle's trainer, a no-grad forward, a checkpoint."""
        parser = self._trainer_parser(overrides, dataset, batch_size, 2 + 4 * steps)
        size = tuple(int(v) for v in parser.get_parsed_content("settings")["spatial_size"])
        try:
            if self.device.type == "cuda":
                _reset_peak(self.device)
            trainer = parser.get_parsed_content("train::trainer")
            times = _iteration_seconds(trainer, self.device, steps, min_seconds)
            peak = _peak(self.device)
            network, engine_network, prepare = (
                parser.get_parsed_content("network"),
                parser.get_parsed_content("engine_network"),  # as the evaluators call it (CPU autocast)
                parser.get_parsed_content("train::prepare_batch"),
            )
            batch = list_data_collate([dataset[i % len(dataset)] for i in range(batch_size)])
            amp = bool(parser.get_parsed_content("engine_amp"))
            network.eval()
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast("cuda") if amp else contextlib.nullcontext():
                engine_network(prepare(batch, self.device)[0])
            _sync(self.device)
            forward_seconds = time.perf_counter() - start
            optimizer = parser.get_parsed_content("optimizer")
            checkpoint_seconds = _checkpoint_seconds_of(network, optimizer, self._workdir.name)
        except (torch.OutOfMemoryError, GuardExit) as err:
            logger.info("trial at %s, batch %d: out of memory on %s (%s)", size, batch_size, self.device, err)
            return TrialResult(size, batch_size, memory_budget + 1, math.inf, math.inf, fits=False)
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return TrialResult(
            size,
            batch_size,
            peak,
            statistics.median(times),
            forward_seconds,
            peak <= memory_budget,
            checkpoint_seconds,
        )

    def _trainer_parser(
        self, overrides: Mapping[str, Any], dataset: TrainingCacheDataset, batch_size: int, iterations: int
    ) -> ConfigParser:
        """The bundle's config whose ``train::trainer`` runs ``iterations`` steps of ``batch_size`` on the sample.

        The trainer is the bundle's own (its loader settings, iteration, loss and every training handler:
        guards, loss logging, progress, checkpoint), so the time per step is what a run pays, not a bare
        forward/backward. Only what would cost more than the steps is left out: the dataset is the
        sample cases repeated, there is no validation (``val_interval`` beyond the run) and no time limit.
        """
        parser = self.parser(
            {**overrides, "epochs": 1, "val_interval": 10**9, "time_limit_minutes": None, "log_mlflow_model": False}
        )
        parser["train::dataset"] = ConcatDataset([dataset] * math.ceil(batch_size * iterations / len(dataset)))
        parser["train::dataloader::batch_size"] = batch_size
        parser["train::dataloader::drop_last"] = True
        parser["train::trainer::epoch_length"] = iterations
        parser["validate::dataset::data"] = []
        return parser


def _data_key(parser: ConfigParser) -> str:
    """What the bundle's ``cases`` depend on: the spec, the data folder and the spec overrides."""
    return json.dumps(parser.get_parsed_content("data_settings"), sort_keys=True, default=str)


def _iteration_seconds(trainer: Engine, device: torch.device, steps: int, min_seconds: float) -> list[float]:
    """Seconds between consecutive completed iterations of ``trainer`` (batch fetch, step, handlers).

    Two warm-up iterations (allocator pools, optimizer state, cuDNN choices, the memory guard's one-off
    estimate) are not counted; the run stops after ``steps`` timed iterations once ``min_seconds`` are
    measured (or at the epoch's end, ``4 * steps``).
    """
    stamps: list[float] = []

    def stamp(engine: Engine) -> None:
        _sync(device)
        stamps.append(time.perf_counter())
        times = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
        if len(times) >= steps and sum(times) >= min_seconds:
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.run()
    times = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
    if not times:
        raise RuntimeError("the trial trainer ran fewer than three iterations: nothing to time")
    return times


def _checkpoint_seconds_of(network: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: str) -> float:
    start = time.perf_counter()
    torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict()}, Path(folder) / "last.pt")
    return time.perf_counter() - start


def _covers(results: Sequence[Mapping[str, Any]], batch_sizes: Sequence[int], memory_budget: int) -> bool:
    """Whether stored results answer a request under this budget: every batch size, or up to one over it."""
    measured = {r["batch_size"]: r for r in results}
    for batch_size in sorted(batch_sizes):
        if batch_size not in measured:
            return False
        if measured[batch_size]["peak_bytes"] > memory_budget:
            return True  # the search stops here, as a fresh trial would
    return True


def _may_fit(results: Sequence[TrialResult], batch_size: int, memory_budget: int) -> bool:
    """Whether ``batch_size`` may still fit: the last peak is within budget and its growth does not pass it."""
    last = results[-1]
    if not last.fits:
        return False
    if len(results) < 2:
        return True
    before = results[-2]
    per_sample = max(0.0, (last.peak_bytes - before.peak_bytes) / max(1, last.batch_size - before.batch_size))
    return last.peak_bytes + per_sample * (batch_size - last.batch_size) <= memory_budget


def _log(result: TrialResult) -> None:
    logger.info(
        "trial at %s, batch %d: peak %.0f MiB, %.3f s/step",
        result.spatial_size,
        result.batch_size,
        result.peak_bytes / 2**20,
        result.step_seconds,
    )
