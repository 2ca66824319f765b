"""Engine overhead with the bundles' real training handlers (MLflow on) vs a bare loop.

``compute_efficiency.py`` times ``SupervisedTrainer`` with medmtl's loss handler only. A bundle's
trainer carries more (``bundles/common/configs/train.json`` ``train::handlers`` plus what
``--tracking mlflow`` appends): the time budget, the non-finite loss and memory guards, the
tracking guard (outage handling, metric batching), the learning-rate schedule, the per-task loss
handler, the resumable checkpoint (``last.pt`` every epoch), the epoch progress and its
``history.json``, and MONAI's ``MLFlowHandler`` with MONAI's default trainer settings (loss every
iteration, metrics every epoch) on a local SQLite store. This script times an epoch of that
trainer next to an epoch of a bare ``zero_grad / loss(net(x)).backward() / step`` loop and of the
trainer with the loss handler only, on the same network, loss, optimizer and batches.

How: the bundle trainer runs ``rounds + 1`` epochs in one run, as a training does (the MLflow run,
the first checkpoint and the memory check happen once, in the untimed first epoch). A handler
registered after every other one (behind ``last.pt`` and the MLflow epoch log) ends each epoch's
timer and then runs one epoch of each other candidate, timed; so every round holds one epoch of
each, and the per-round ratios give the spread (``_bench.ratio_spread``). The run-level handlers
(``RunArtifactsHandler``, ``RunModelHandler``: params and files once per run) and validation are
left out: they do not run per iteration.

Goal: bundle trainer >= 0.95x the bare loop's throughput on CPU (issue 23). On a GPU the goal is
0.9x; it needs a device (``--device cuda``).

The per-epoch work (``last.pt``, the MLflow flush) is fixed, so the ratio depends on the epoch's
length: the default is a BUSI epoch (627 training images, batch 16: 40 batches at 128 px). The
script also reports the epoch-end handlers' time and the rest of the overhead per iteration.

Run: ``python benchmarks/engine_handlers.py [--quick] [--rounds 9] [--threads 2] [--batches 40]``;
writes ``benchmarks/results/engine_handlers.json`` (``--quick``: ``engine_handlers.quick.json``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _bench import machine, print_table, ratio_spread, spread_text, summary, verdict, write_results
from compute_efficiency import FEATURES, TASKS, batches, samples
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler, MLFlowHandler, from_engine
from monai.utils import set_determinism

from medmtl.engines import (
    EpochProgress,
    MultiTaskLossHandler,
    MultiTaskPrepareBatch,
    NonFiniteLossGuard,
    ResumableCheckpoint,
    TimeBudget,
    TrainingMemoryGuard,
    tune_host_allocator,
)
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskNet
from medmtl.tracking import TrackingGuard, connect_tracking

NAME = "engine_handlers"
GOAL = {"cpu": 0.95, "cuda": 0.9}  # throughput of the bundle trainer / the bare loop, at least


def bundle_handlers(
    loss: MultiTaskLoss, network: torch.nn.Module, optimizer: torch.optim.Optimizer, out: Path, mlflow: bool
) -> list[Any]:
    """``train::handlers`` of the common train config (arguments as there), plus ``--tracking mlflow``'s handler."""
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
    progress = EpochProgress(TASKS, bar=False, history_file=out / "history.json")
    handlers: list[Any] = [
        TimeBudget(minutes=600),
        NonFiniteLossGuard(exit_on_error=True),
        TrainingMemoryGuard(exit_on_error=True),
        TrackingGuard(fallback_dir=out),
        LrScheduleHandler(lr_scheduler=scheduler, print_lr=False),
        MultiTaskLossHandler(loss, network),
        ResumableCheckpoint(
            save_dir=out / "models",
            save_dict={"network": network, "optimizer": optimizer, "loss": loss, "lr_scheduler": scheduler},
            history=progress,
            resume=False,
            exit_on_error=True,
        ),
        progress,
    ]
    if mlflow:  # MONAI's DEFAULT_MLFLOW_SETTINGS["configs"]["trainer"], appended after the bundle's handlers
        handlers.append(
            MLFlowHandler(
                tracking_uri=f"sqlite:///{out / 'mlruns.db'}",
                experiment_name="engine_handlers",
                iteration_log=True,
                epoch_log=True,
                tag_name="train_loss",
                output_transform=from_engine(["loss"], first=True),
                close_on_complete=True,
            )
        )
    connect_tracking(handlers)
    return handlers


class _EpochEndClock:
    """Listed first in the handler list: its ``EPOCH_COMPLETED`` callback runs before the bundle's,
    so the time from here to the end of the epoch is what the handlers do once per epoch."""

    def __init__(self, clock: dict[str, float]) -> None:
        self.clock = clock

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.mark)

    def mark(self, _engine: Engine) -> None:
        self.clock["epoch_end"] = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 batches of 64 px, 2 rounds: a smoke check")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 9; --quick: 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        help="batches per epoch (default 40: BUSI's 627 training images; --quick: 2)",
    )
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 128; --quick: 64)")
    parser.add_argument("--no-mlflow", action="store_true", help="leave MONAI's MLFlowHandler out")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds = args.rounds or (2 if args.quick else 9)
    n_batches = args.batches or (2 if args.quick else 40)
    size, batch = args.size or (64 if args.quick else 128), 16
    torch.set_num_threads(args.threads)
    tune_host_allocator(device)  # as the bundles do on CPU (every candidate runs in this process)
    set_determinism(seed=0)
    logging.getLogger("ignite").setLevel(logging.WARNING)
    # the per-epoch INFO lines, and ResumableCheckpoint's warning that no validation chose best.pt (none runs here)
    logging.getLogger("medmtl").setLevel(logging.ERROR)

    data = samples(n_batches * batch, size)
    network = MultiTaskNet("unet", TASKS, backbone_kwargs={"spatial_dims": 2, "features": FEATURES}).to(device)
    loss = MultiTaskLoss(TASKS, weighting="uncertainty").to(device)
    optimizer = torch.optim.AdamW(loss.param_groups(network.parameters(), 1e-4), lr=1e-3)
    prepare = MultiTaskPrepareBatch(TASKS)
    pre_batched = [(x.to(device), {k: v.to(device) for k, v in t.items()}) for x, t in batches(data, batch)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def trainer(handlers: list[Any], epochs: int) -> SupervisedTrainer:
        return SupervisedTrainer(
            device=device,
            max_epochs=epochs,
            train_data_loader=DataLoader(data, batch_size=batch, shuffle=False, num_workers=0),
            network=network,
            optimizer=optimizer,
            loss_function=loss,
            prepare_batch=prepare,
            train_handlers=handlers,
            non_blocking=True,
        )

    def bare_epoch() -> None:
        network.train()
        for x, targets in pre_batched:
            optimizer.zero_grad()
            loss(network(x), targets).backward()
            optimizer.step()
        sync()

    plain = trainer([MultiTaskLossHandler(loss, network)], epochs=1)
    others: dict[str, Callable[[], None]] = {
        "bare loop": bare_epoch,
        "SupervisedTrainer + loss handler only": lambda: (plain.run(), sync()),
    }
    bundle_name = "SupervisedTrainer + the bundles' handlers" + ("" if args.no_mlflow else " + MLflow")
    times: dict[str, list[float]] = {bundle_name: [], **{name: [] for name in others}}

    with tempfile.TemporaryDirectory() as tmp:
        clock: dict[str, float] = {}
        handlers = bundle_handlers(loss, network, optimizer, Path(tmp), mlflow=not args.no_mlflow)
        bundle = trainer([_EpochEndClock(clock), *handlers], rounds + 1)
        epoch_end: list[float] = []  # seconds per epoch spent in the handlers' EPOCH_COMPLETED callbacks

        def epoch_started(_engine: Engine) -> None:
            clock.setdefault("start", time.perf_counter())

        def epoch_done(engine: Engine) -> None:
            sync()
            now = time.perf_counter()
            elapsed = now - clock.pop("start")
            if engine.state.epoch == 1:  # warm-up: the run's start-up, and one epoch of each other candidate
                for fn in others.values():
                    fn()
            else:
                times[bundle_name].append(elapsed)
                epoch_end.append(now - clock["epoch_end"])
                names = list(others) if engine.state.epoch % 2 else list(reversed(others))
                for name in names:
                    start = time.perf_counter()
                    others[name]()
                    times[name].append(time.perf_counter() - start)
            clock["start"] = time.perf_counter()

        def register_last(engine: Engine) -> None:
            # added at STARTED, after ResumableCheckpoint's own STARTED handler registered its saves:
            # the timer of each epoch stops behind last.pt, history.json and the MLflow epoch log
            engine.add_event_handler(Events.EPOCH_COMPLETED, epoch_done)

        bundle.add_event_handler(Events.EPOCH_STARTED, epoch_started)
        bundle.add_event_handler(Events.STARTED, register_last)
        start = time.perf_counter()
        print(
            f"[{time.strftime('%X')}] {rounds} rounds of {n_batches} batches of {batch} at {size} px on {device}...",
            flush=True,
        )
        bundle.run()
        elapsed = time.perf_counter() - start

    n = len(data)
    bare = times["bare loop"]
    rows, spreads = [], {}
    for name, values in times.items():
        # throughput vs bare = bare time / candidate time, per round
        spread = ratio_spread(bare, values)
        spreads[name] = spread
        rows.append(
            {
                "method": name,
                "epoch": summary(values),
                "samples_per_s": n / statistics.median(values),
                "throughput_vs_bare": spread,
            }
        )
    # what the handlers cost per iteration (the epoch minus its end, against the bare loop) and once per epoch
    per_iteration = [(b - e - a) / n_batches for b, e, a in zip(times[bundle_name], epoch_end, bare, strict=True)]
    goal = GOAL.get(device.type, GOAL["cpu"])
    bundle_spread = spreads[bundle_name]
    results: dict[str, Any] = {
        "samples_per_epoch": n,
        "batch_size": batch,
        "spatial_size": size,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "mlflow": not args.no_mlflow,
        "rows": rows,
        "bundle_epoch_end_s": summary(epoch_end),
        "bundle_extra_per_iteration_s": summary(per_iteration),
        "goal": {
            "what": "bundle trainer throughput / bare loop throughput (per round)",
            "goal": f">= {goal}",
            "spread": bundle_spread,
            "verdict": verdict(bundle_spread, goal, at_most=False),
        },
        "network": {"backbone": "unet", "features": list(FEATURES), "tasks": [t.name for t in TASKS]},
    }
    print_table(
        ["method", "epoch s (median)", "samples/s", "throughput vs bare (per-round median, IQR)"],
        [[r["method"], r["epoch"]["median_s"], r["samples_per_s"], spread_text(r["throughput_vs_bare"])] for r in rows],
        f"2D MultiTaskNet unet {FEATURES}, {size} px, batch {batch}, {n} samples per epoch, {results['gpu'] or device}",
    )
    print(
        f"bundle trainer: {1e3 * statistics.median(epoch_end):.0f} ms per epoch in the epoch-end handlers "
        f"(last.pt, history.json, MLflow epoch log and flush); {1e3 * statistics.median(per_iteration):.1f} ms "
        "per iteration more than the bare loop (the rest of the epoch; a difference of epoch times, noisy)"
    )
    print(
        f"goal: bundle trainer >= {goal}x the bare loop: {spread_text(bundle_spread)} -> {results['goal']['verdict']}"
    )
    print(f"benchmark time {elapsed:.0f} s")
    meta = machine(threads=args.threads, rounds=rounds, quick=args.quick, duration_s=elapsed)
    write_results(NAME if device.type == "cpu" else f"{NAME}_cuda", meta, results, quick=args.quick)


if __name__ == "__main__":
    main()
