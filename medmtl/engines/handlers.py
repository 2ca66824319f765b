"""Ignite handlers that a multi-task run needs on top of MONAI's.

- :class:`MultiTaskLossHandler`: per-task losses and weights into ``engine.state.metrics`` each
  epoch (so MLflow / the progress bar see them), the weighting's epoch hook (DWA history,
  schedules), GradNorm's extra step and DDP syncing of learnable weights.
- :class:`ResumableCheckpoint`: atomic ``last.pt`` every epoch (the objects its ``save_dict``
  names: model, optimizer, scheduler, loss weighting, random transforms, early stopping...; the
  trainer's counters, the global RNGs and the evaluator's best metric) and ``best.pt`` on a key
  metric; a restarted run with the same command
  resumes from ``last.pt`` and produces the same numbers as a run that was never interrupted.
  ``last.pt`` is the commit point of an epoch: ``best.pt`` and ``history.json`` only change after
  it, so after any failure the three describe the same epoch.

Both are objects with ``attach(engine)``, idempotent like MONAI's handlers.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from medmtl.atomic_io import atomic_write_with
from medmtl.engines.checkpoint_io import (
    RUN_CONFIG_KEY,
    CheckpointError,
    CheckpointExit,
    CheckpointWriteError,
    check_state_dict_fits,
    load_checkpoint,
    strip_ddp_prefix,
)
from medmtl.engines.guards import NonFiniteError, non_finite_tensors
from medmtl.engines.network_wrappers import unwrap
from medmtl.engines.resume_state import numpy_state, numpy_state_tuple

__all__ = ["MultiTaskLossHandler", "ResumableCheckpoint", "atomic_torch_save", "unwrap", "CHECKPOINT_PAUSE_ENV"]

logger = logging.getLogger(__name__)


def _shared_parameters(network: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
    inner = unwrap(network)
    if not hasattr(inner, "shared_parameters"):
        raise TypeError(
            f"{type(inner).__name__} has no shared_parameters(): gradient-based weightings need a medmtl network"
        )
    return inner.shared_parameters()


def _detached(value: Any) -> torch.Tensor | float:
    """A loss value to accumulate: a float64 tensor on its own device (not read yet), or a float."""
    if not isinstance(value, torch.Tensor):
        return float(value)
    return value.detach().to(torch.float32 if value.device.type == "mps" else torch.float64)  # MPS has no float64


class MultiTaskLossHandler:
    """Logs per-task losses/weights per epoch and drives the loss's epoch and gradient hooks.

    Args:
        loss_function: the trainer's :class:`medmtl.losses.MultiTaskLoss`.
        network: the trained network (needed by GradNorm: its ``shared_parameters()``).
        prefix: metric name prefix; keys are ``<prefix>loss/<task>``, ``<prefix>weight/<task>`` and
            ``<prefix>loss_epoch`` (mean weighted total).
    """

    def __init__(self, loss_function: Any, network: torch.nn.Module | None = None, prefix: str = "train_") -> None:
        self.loss_function = loss_function
        self.network = network
        self.prefix = prefix
        # running sums stay tensors on the loss's device until the epoch ends: converting them
        # every iteration would block the host on a GPU (see MultiTaskPrepareBatch)
        self._sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._total: torch.Tensor | float = 0.0
        self._n_total = 0

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.iteration_completed, IterationEvents.LOSS_COMPLETED):
            return
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.iteration_completed)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.backward_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def iteration_completed(self, engine: Engine) -> None:
        loss = self.loss_function
        if loss.needs_shared_params and not loss.manipulates_gradients:
            if self.network is None:
                raise ValueError("MultiTaskLossHandler needs `network` for a gradient-based weighting (GradNorm)")
            loss.before_backward(_shared_parameters(self.network))
        total = engine.state.output.get("loss") if isinstance(engine.state.output, dict) else None
        if total is not None:
            self._total = self._total + _detached(total)
            self._n_total += 1
        for task, value in loss.last_components.items():
            count = loss.last_num_labelled.get(task, 1)
            self._sums[task] = self._sums[task] + _detached(value) * count
            self._counts[task] += count
            engine.state.output[f"loss_{task}"] = value

    def backward_completed(self, engine: Engine) -> None:
        if dist.is_available() and dist.is_initialized():
            self.loss_function.sync_gradients()

    def _epoch_sums(self) -> tuple[dict[str, float], dict[str, float], float, float]:
        """Per-task loss sums and counts, total sum and count of the epoch, summed over DDP ranks.

        Under DDP this is a collective (every rank has the handler): the logged losses and the
        weighting's epoch hook (DWA history) then see the same global means on every rank.
        """
        sums, counts = {t: float(v) for t, v in self._sums.items()}, {t: float(c) for t, c in self._counts.items()}
        total, n_total = float(self._total), float(self._n_total)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            names = list(self.loss_function.task_names)  # same order on every rank
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
            values = [sums.get(t, 0.0) for t in names] + [counts.get(t, 0.0) for t in names] + [total, n_total]
            buffer = torch.tensor(values, dtype=torch.float64, device=device)
            dist.all_reduce(buffer)
            reduced = buffer.tolist()
            k = len(names)
            sums, counts = dict(zip(names, reduced[:k], strict=True)), dict(zip(names, reduced[k : 2 * k], strict=True))
            total, n_total = reduced[-2], reduced[-1]
        return sums, counts, total, n_total

    def epoch_completed(self, engine: Engine) -> None:
        sums, counts, total, n_total = self._epoch_sums()
        means = {t: sums[t] / counts[t] for t in sums if counts.get(t)}
        for task, value in means.items():
            engine.state.metrics[f"{self.prefix}loss/{task}"] = value
        if n_total:
            engine.state.metrics[f"{self.prefix}loss_epoch"] = total / n_total
        for task, weight in self.loss_function.weighting.current_weights().items():
            engine.state.metrics[f"{self.prefix}weight/{task}"] = float(weight)
        self.loss_function.on_epoch_end(means or None)
        self._sums.clear()
        self._counts.clear()
        self._total, self._n_total = 0.0, 0


CHECKPOINT_PAUSE_ENV = "MEDMTL_CHECKPOINT_PAUSE_S"
"""Fault injection for crash tests: seconds to wait between the finished temp file and the rename.

Why: a checkpoint write takes milliseconds, too short for a test to kill the process inside it on
purpose; with this set, a test sees the ``.tmp`` file appear and kills the run while it is there.
"""


def _pause_for_tests(tmp: Path) -> None:
    """Hold the finished temp file before its rename when :data:`CHECKPOINT_PAUSE_ENV` is set."""
    pause = os.environ.get(CHECKPOINT_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename: a kill never leaves half a file.

    The temp file is hidden (``.<name>.<random>.tmp``, :func:`medmtl.atomic_io.atomic_write_with`),
    so nothing ever sees a partial file under the final name; :class:`ResumableCheckpoint` removes
    the ones a killed run left behind.
    """
    return atomic_write_with(path, lambda handle: torch.save(obj, handle), before_replace=_pause_for_tests)


def _rng_state() -> dict[str, Any]:
    """RNG states in plain types, so ``torch.load(weights_only=True)`` (MONAI's CheckpointLoader) reads the file."""
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_state(np.random.get_state()),
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(numpy_state_tuple(state["numpy"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _json_data(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """A plain JSON copy of ``run_config`` (what ``torch.load(weights_only=True)`` reads back), or a clear error."""
    if not isinstance(run_config, Mapping):
        raise TypeError(
            f"ResumableCheckpoint run_config must be a mapping (JSON object), got {type(run_config).__name__}"
        )
    try:
        return json.loads(json.dumps(dict(run_config)))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"ResumableCheckpoint run_config must hold JSON data only (dicts, lists, strings, numbers, booleans, "
            f"null): {err}; convert the values (e.g. paths to strings) when building it"
        ) from None


_SCHEDULE_HORIZONS = ("T_max", "total_iters")  # CosineAnnealingLR; LinearLR, PolynomialLR, ConstantLR


def stretch_lr_schedules(objects: Iterable[Any], old_epochs: int, new_epochs: int) -> list[str]:
    """Give epoch-based LR schedules that ended at ``old_epochs`` the new length ``new_epochs``.

    Why: a finished run resumed with a larger ``--epochs`` would otherwise keep the checkpoint's
    schedule: a cosine schedule sits at its minimum (about 0) and the extra epochs barely train,
    or it climbs back up past its end. Stretching the horizon gives each scheduler the learning
    rate it would have at this epoch had the run been started with ``new_epochs`` (its closed
    form), and the rest of the schedule follows that run. Schedulers whose horizon is not
    ``old_epochs`` (per-iteration ones, step schedules) are left alone.

    Returns:
        one message per changed scheduler, for the log.
    """
    messages = []
    for obj in objects:
        if not isinstance(obj, torch.optim.lr_scheduler.LRScheduler) or not hasattr(obj, "_get_closed_form_lr"):
            continue
        for attr in _SCHEDULE_HORIZONS:
            if getattr(obj, attr, None) != old_epochs:
                continue
            before = obj.get_last_lr()
            setattr(obj, attr, new_epochs)
            lrs = obj._get_closed_form_lr()
            for group, lr in zip(obj.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            obj._last_lr = list(lrs)
            messages.append(
                f"the checkpoint's {type(obj).__name__} was for {old_epochs} epochs, this run has {new_epochs}: "
                f"its {attr} is now {new_epochs} and the learning rate goes from {before[0]:.3g} to {lrs[0]:.3g} "
                "(as if the run had been started with the new --epochs)"
            )
    return messages


PENDING_BEST = ".best.pt.pending.tmp"
"""A new ``best.pt``, complete and fsynced, waiting for its epoch's ``last.pt`` to be committed."""


def _write_error_reason(err: OSError) -> tuple[str, str]:
    """(what went wrong, what to do) for a failed write, in words."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device", "free some space"
    if err.errno == errno.EROFS:
        return "the file system is read-only", "make the folder writable (or use another --output_dir)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied", "make the folder writable (or use another --output_dir)"
    return err.strerror or str(err), "fix the folder"


def _free_text(folder: Path) -> str:
    try:
        return f", {shutil.disk_usage(folder).free / 2**20:,.1f} MB free in {folder}"
    except OSError:
        return ""


class ResumableCheckpoint:
    """Atomic last/best checkpoints and automatic resume.

    ``last.pt`` holds everything the next epoch depends on, so a run killed at any moment and
    started again with the same command ends with the same weights and metrics as a run that was
    never interrupted (on CPU; CUDA kernels may be non-deterministic). What it holds is listed, never
    discovered: the ``save_dict`` objects (as in MONAI's ``CheckpointSaver``: network, optimizer,
    loss, scheduler, and for the data pipeline :class:`~medmtl.engines.RandomStates`, the batch
    augmentation and :class:`~medmtl.engines.ResumableEarlyStop`), the trainer it is attached to
    (its counters), the process's global RNGs (torch, CUDA, numpy, python: dropout and the data
    loader's shuffling), the ``history`` and the key-metric engine's best metric. Weights that are
    no longer finite (a diverged run) are never written: :class:`medmtl.engines.guards.NonFiniteError`
    is raised instead and the previous ``last.pt`` stays.

    ``last.pt`` is the commit point of an epoch, written after every other end-of-epoch handler
    (MLflow's included). A new ``best.pt`` is first written beside it (``.best.pt.pending.tmp``)
    and takes its name only once ``last.pt`` is written; the ``history``
    (:class:`medmtl.engines.EpochProgress`) is kept inside ``last.pt`` and its file rewritten after
    it. A failed write (full disk, read-only folder) thus leaves ``last.pt``, ``best.pt`` and
    ``history.json`` at the same epoch, and a kill between ``last.pt`` and the others is completed
    when the run starts again.

    Args:
        save_dir: folder of ``last.pt`` and ``best.pt``.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save, e.g. ``{"network": net,
            "optimizer": opt, "loss": loss, "lr_scheduler": sched, "random_states": RandomStates(...)}``;
            an entry whose object is ``None`` is left out (an optional part switched off); the
            trainer is added as ``trainer``. An entry missing from ``last.pt`` is an error unless
            its object declares ``resumes_without_state`` (it then starts empty, with a warning).
        resume: load ``last.pt`` when the trainer starts, if it exists.
        key_metric_engine: engine whose ``state.metrics[key_metric]`` selects ``best.pt`` (the evaluator).
        key_metric: name of that metric; ``None`` uses the engine's ``key_metric_name``.
        higher_is_better: direction of the key metric.
        save_every: epochs between ``last.pt`` saves.
        exit_on_error: a checkpoint that cannot be read or written ends the run with
            :class:`~medmtl.engines.checkpoint_io.CheckpointExit` (exit status 1, one message, no
            traceback; what bundles set) instead of raising :class:`CheckpointError` /
            :class:`CheckpointWriteError`.
        history: the run's :class:`~medmtl.engines.EpochProgress` (with a ``history_file``): saved
            in ``last.pt`` as ``history`` and its file written only after ``last.pt``.
        run_config: JSON data describing how the run was trained; stored as ``run_config`` in
            ``last.pt`` and ``best.pt`` (read back by :func:`~medmtl.engines.checkpoint_io.read_run_config`);
            a resume does not load it.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        resume: bool = True,
        key_metric_engine: Engine | None = None,
        key_metric: str | None = None,
        higher_is_better: bool = True,
        save_every: int = 1,
        exit_on_error: bool = False,
        history: Any | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = {name: obj for name, obj in save_dict.items() if obj is not None}
        for reserved in ("history", RUN_CONFIG_KEY, "rng", "best", "key_metric_engine"):
            if reserved in self.save_dict:
                raise ValueError(
                    f"ResumableCheckpoint save_dict may not use the name '{reserved}': the checkpoint stores its "
                    f"own entry there (pass the history as history=, the run configuration as run_config=)"
                )
        self.resume = resume
        self.key_metric_engine = key_metric_engine
        self.key_metric = key_metric
        self.higher_is_better = higher_is_better
        self.save_every = save_every
        self.exit_on_error = exit_on_error
        self.history = history
        self.run_config = None if run_config is None else _json_data(run_config)
        self.best_value = -math.inf if higher_is_better else math.inf
        self.best_epoch = -1
        self._trainer: Engine | None = None
        self._pending_best = False
        self._saved_epoch: int | None = None  # the epoch last.pt holds

    @property
    def last_path(self) -> Path:
        return self.save_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.save_dir / "best.pt"

    @property
    def pending_best_path(self) -> Path:
        return self.save_dir / PENDING_BEST

    def attach(self, trainer: Engine) -> None:
        if trainer.has_event_handler(self.started, Events.STARTED):
            return
        self._trainer = trainer
        self.save_dict.setdefault("trainer", trainer)
        if self.history is not None:
            self.history.committed_by_checkpoint = True  # its file is written after last.pt (save_last)
        trainer.add_event_handler(Events.STARTED, self.started)
        trainer.add_event_handler(Events.COMPLETED, self.ensure_best)
        if self.key_metric_engine is not None:
            self.key_metric_engine.add_event_handler(Events.COMPLETED, self._maybe_save_best(trainer))

    def _fail(self, error: Exception) -> None:
        if self.exit_on_error:  # not logged: Python prints the exit message, once
            raise CheckpointExit(error) from None
        logger.error("%s", error)
        raise error

    def started(self, trainer: Engine) -> None:
        """Settle what a killed run left, resume, and register the saves behind every other handler.

        The saves are registered here, when the trainer starts, rather than in :meth:`attach`: by now
        every handler of the bundle (and MLflow's, added after ours by ``--tracking``) is attached,
        so ``last.pt`` is the last thing written at the end of an epoch.
        """
        try:
            checkpoint = self._read_last() if self.resume else None
            if self._is_main():
                self._settle_pending_best(checkpoint)
                self._remove_stale_temp_files()
            if checkpoint is not None:
                self.load_last(trainer, checkpoint)
        except CheckpointError as err:
            self._fail(err)
        except OSError as err:  # settling best.pt or rewriting the history from last.pt
            reason, fix = _write_error_reason(err)
            self._fail(
                CheckpointWriteError(
                    f"could not update the files of {self.save_dir} from {self.last_path} at the start: {reason}"
                    f"{_free_text(self.save_dir)}; {fix}, then run the same command again"
                )
            )
        if not trainer.has_event_handler(self.save_last, Events.COMPLETED):
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_every), self.save_last)
            trainer.add_event_handler(Events.COMPLETED, self.save_last)

    def _read_last(self) -> dict[str, Any] | None:
        if not self.last_path.is_file():
            return None
        checkpoint = load_checkpoint(self.last_path, map_location="cpu", what="the run's last checkpoint")
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(
                f"{self.last_path} holds a {type(checkpoint).__name__}, not a medmtl training state: start a new run "
                "in another --output_dir (or --resume false)"
            )
        return dict(checkpoint)

    def _settle_pending_best(self, checkpoint: Mapping[str, Any] | None) -> None:
        """Finish or undo a ``best.pt`` update a killed run left: kept only if ``last.pt`` recorded its epoch."""
        pending = self.pending_best_path
        if not pending.is_file():
            return
        recorded = (checkpoint or {}).get("best", {}).get("epoch")
        try:
            epoch = load_checkpoint(pending, what="pending best.pt").get("epoch")
        except (CheckpointError, AttributeError):
            epoch = None
        if recorded is not None and epoch == recorded:
            os.replace(pending, self.best_path)
            logger.info("completed the best.pt update of epoch %s interrupted after last.pt was written", epoch)
        else:
            pending.unlink(missing_ok=True)
            logger.info("discarded a best.pt of epoch %s whose last.pt was never written (the epoch is redone)", epoch)

    def _remove_stale_temp_files(self) -> None:
        """Delete ``.last.pt.*.tmp`` / ``.best.pt.*.tmp`` (and the pending best's) left by a run killed inside a write."""
        for name in (self.last_path.name, self.best_path.name, PENDING_BEST):
            for stale in self.save_dir.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
                logger.info("removed %s, left by an interrupted checkpoint write", stale)

    def _is_main(self) -> bool:
        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

    def _check_finite(self, what: str, epoch: int) -> None:
        """Refuse to save weights with NaN/Inf: they would replace the last good checkpoint."""
        bad = [
            f"{name}.{tensor}"
            for name, obj in self.save_dict.items()
            if isinstance(obj, torch.nn.Module)
            for tensor in non_finite_tensors(unwrap(obj))
        ]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteError(
                f"epoch {epoch}: {len(bad)} weight tensor(s) hold NaN or Inf ({shown}): the training diverged. "
                f"{what} was not written, so {self.last_path} still holds the last finite weights; "
                "lower the learning rate (or enable gradient clipping) and restart to resume from it"
            )

    def _state(self) -> dict[str, Any]:
        state = {
            name: (unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).state_dict()
            for name, obj in self.save_dict.items()
        }
        state["rng"] = _rng_state()
        state["best"] = {"value": self.best_value, "epoch": self.best_epoch}
        if self.history is not None:
            state["history"] = self.history.state_dict()
        if self.run_config is not None:
            state[RUN_CONFIG_KEY] = self.run_config
        evaluator_state = getattr(self.key_metric_engine, "state", None)
        if evaluator_state is not None and hasattr(evaluator_state, "best_metric"):
            state["key_metric_engine"] = {
                "best_metric": float(evaluator_state.best_metric),
                "best_metric_epoch": int(evaluator_state.best_metric_epoch),
            }
        return state

    def _best_state(self, epoch: int) -> dict[str, Any]:
        """What ``best.pt`` holds: the network's weights, the epoch and the run's configuration."""
        state: dict[str, Any] = {"network": unwrap(self.save_dict["network"]).state_dict(), "epoch": epoch}
        if self.run_config is not None:
            state[RUN_CONFIG_KEY] = self.run_config
        return state

    def _held(self) -> str:
        if self._saved_epoch is None:
            return "no checkpoint was written yet"
        return f"{self.last_path} still holds epoch {self._saved_epoch}, and best.pt and history.json agree with it"

    def save_last(self, trainer: Engine) -> None:
        """Write ``last.pt`` (the epoch's commit point), then the pending ``best.pt`` and the history."""
        epoch = trainer.state.epoch
        self._check_finite(str(self.last_path), epoch)  # every DDP rank stops, not only rank 0
        if not self._is_main():
            return
        try:
            atomic_torch_save(self._state(), self.last_path)
        except OSError as err:
            self.pending_best_path.unlink(missing_ok=True)
            self._pending_best = False
            reason, fix = _write_error_reason(err)
            self._fail(
                CheckpointWriteError(
                    f"could not write {self.last_path} at the end of epoch {epoch}: {reason}{_free_text(self.save_dir)}. "
                    f"{self._held()}; {fix}, then run the same command to resume"
                )
            )
        self._saved_epoch = epoch
        try:
            if self._pending_best:
                os.replace(self.pending_best_path, self.best_path)
                self._pending_best = False
            if self.history is not None:
                self.history.commit()
        except OSError as err:
            reason, fix = _write_error_reason(err)
            self._fail(
                CheckpointWriteError(
                    f"could not update best.pt / the history after {self.last_path} (epoch {epoch}) was written: "
                    f"{reason}{_free_text(self.save_dir)}. {self.last_path} holds this epoch and its history, and the "
                    f"next run completes best.pt and history.json from it; {fix}, then run the same command to resume"
                )
            )

    def load_last(self, trainer: Engine, checkpoint: Mapping[str, Any] | None = None) -> None:
        """Restore the run from ``last.pt`` (read here when ``checkpoint`` is not given).

        Raises:
            CheckpointError: ``last.pt`` is damaged, refused, or was written by another configuration
                (the message names the keys or objects that do not fit).
        """
        if checkpoint is None:
            checkpoint = self._read_last()
            if checkpoint is None:
                return
        max_epochs = trainer.state.max_epochs
        fix = (
            "it was written by another configuration (network, tasks or optimizer changed since): give this "
            "configuration its own --output_dir, or pass --resume false to start over here (that overwrites last.pt)"
        )
        entries = dict(self.save_dict)
        if self.history is not None and self._is_main():  # other DDP ranks write no history file
            entries["history"] = self.history
        for name, obj in entries.items():
            if name not in checkpoint and getattr(obj, "resumes_without_state", False):
                logger.warning(
                    "%s has no '%s' (written before it was part of the run): %s starts empty",
                    self.last_path,
                    name,
                    type(obj).__name__,
                )
                obj.load_state_dict({})
                continue
            if name not in checkpoint:
                raise CheckpointError(
                    f"{self.last_path} has no '{name}' (it holds {sorted(map(str, checkpoint))}): {fix}"
                )
            try:
                if isinstance(obj, torch.nn.Module):
                    state = strip_ddp_prefix(checkpoint[name])
                    check_state_dict_fits(unwrap(obj), state, self.last_path, fix=fix)
                    unwrap(obj).load_state_dict(state)
                else:
                    obj.load_state_dict(checkpoint[name])
            except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as err:
                if isinstance(err, CheckpointError):
                    raise
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise CheckpointError(
                    f"{self.last_path}: its '{name}' state does not fit this run's {type(obj).__name__} ({first}); {fix}"
                ) from None
        trainer.state.max_epochs = max_epochs  # the command line's epochs win over the checkpoint's
        saved_epochs = checkpoint.get("trainer", {}).get("max_epochs")
        if saved_epochs is not None and max_epochs is not None and saved_epochs != max_epochs:
            for message in stretch_lr_schedules(self.save_dict.values(), saved_epochs, max_epochs):
                logger.warning("resuming %s: %s", self.last_path, message)
        _set_rng_state(checkpoint["rng"])
        saved_best = checkpoint.get("key_metric_engine")
        if saved_best is not None and self.key_metric_engine is not None:
            self.key_metric_engine.state.best_metric = saved_best["best_metric"]
            self.key_metric_engine.state.best_metric_epoch = saved_best["best_metric_epoch"]
        self.best_value = checkpoint["best"]["value"]
        self.best_epoch = checkpoint["best"]["epoch"]
        self._saved_epoch = trainer.state.epoch
        logger.info("resumed from %s at epoch %d", self.last_path, trainer.state.epoch)

    def ensure_best(self, trainer: Engine) -> None:
        """At the end of training, give ``best.pt`` the final weights if no validation ever scored.

        Why: a validation split without a labelled case for any task (tiny datasets, a split typo)
        gives NaN key metrics, so no "best" is ever chosen and evaluation/inference would find no
        model. nnU-Net always leaves a final checkpoint; here ``best.pt`` falls back to the final
        weights with a warning that says why.
        """
        if self.best_path.is_file() or self._pending_best or not self._is_main():
            return
        self._check_finite(str(self.best_path), trainer.state.epoch)
        state = self._best_state(trainer.state.epoch)
        try:
            atomic_torch_save(state, self.best_path)
        except OSError as err:
            reason, fix = _write_error_reason(err)
            self._fail(
                CheckpointWriteError(
                    f"could not write {self.best_path}: {reason}{_free_text(self.save_dir)}; {fix}, then run the "
                    "same command (the training is finished: it only writes the checkpoints)"
                )
            )
        logger.warning(
            "no finite validation key metric in %d epochs (does the validation split have labelled cases?): "
            "%s holds the final weights",
            trainer.state.epoch,
            self.best_path,
        )

    def _maybe_save_best(self, trainer: Engine) -> Callable[[Engine], None]:
        def save_best(evaluator: Engine) -> None:
            name = self.key_metric or getattr(evaluator.state, "key_metric_name", None)
            value = evaluator.state.metrics.get(name) if name else None
            if value is None or not math.isfinite(float(value)):
                return
            better = value > self.best_value if self.higher_is_better else value < self.best_value
            if better:
                epoch = trainer.state.epoch
                self._check_finite(str(self.best_path), epoch)
                if self._is_main():
                    state = {**self._best_state(epoch), name: float(value)}
                    try:  # takes the name best.pt once this epoch's last.pt is written (save_last)
                        atomic_write_with(self.pending_best_path, lambda handle: torch.save(state, handle))
                    except OSError as err:
                        reason, fix = _write_error_reason(err)
                        self._fail(
                            CheckpointWriteError(
                                f"could not write the new {self.best_path} of epoch {epoch}: {reason}"
                                f"{_free_text(self.save_dir)}. {self._held()}; {fix}, then run the same command "
                                "to resume"
                            )
                        )
                    self._pending_best = True
                self.best_value, self.best_epoch = float(value), epoch
                logger.info("new best %s = %.4f at epoch %d -> %s", name, value, epoch, self.best_path)

        return save_best
