"""Ignite handlers that a multi-task run needs on top of MONAI's.

- :class:`MultiTaskLossHandler`: per-task losses and weights into ``engine.state.metrics`` each
  epoch (so MLflow / the progress bar see them), the weighting's epoch hook (DWA history,
  schedules), GradNorm's extra step and DDP syncing of learnable weights.
- :class:`ResumableCheckpoint`: atomic ``last.pt`` every epoch (model, optimizer, scheduler,
  loss weighting, trainer counters, RNG states) and ``best.pt`` on a key metric; a restarted run with
  the same command resumes from ``last.pt`` instead of starting over.

Both are objects with ``attach(engine)``, idempotent like MONAI's handlers.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

__all__ = ["MultiTaskLossHandler", "ResumableCheckpoint", "atomic_torch_save", "unwrap"]

logger = logging.getLogger(__name__)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DataParallel wrappers (where ``shared_parameters`` lives)."""
    return network.module if hasattr(network, "module") and isinstance(network.module, torch.nn.Module) else network


def _shared_parameters(network: torch.nn.Module) -> Iterable[torch.nn.Parameter]:
    inner = unwrap(network)
    if not hasattr(inner, "shared_parameters"):
        raise TypeError(
            f"{type(inner).__name__} has no shared_parameters(): gradient-based weightings need a medmtl network"
        )
    return inner.shared_parameters()


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
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._total: list[float] = []

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
            self._total.append(float(total.detach()) if isinstance(total, torch.Tensor) else float(total))
        for task, value in loss.last_components.items():
            count = loss.last_num_labelled.get(task, 1)
            self._sums[task] += float(value) * count
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
        sums, counts = dict(self._sums), {t: float(c) for t, c in self._counts.items()}
        total, n_total = sum(self._total), float(len(self._total))
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
        self._total.clear()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _rng_state() -> dict[str, Any]:
    """RNG states in plain types, so ``torch.load(weights_only=True)`` (MONAI's CheckpointLoader) reads the file."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _strip_module_prefix(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A model state dict saved from a DDP / DataParallel wrapper (every key ``module.*``) without the prefix."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


class ResumableCheckpoint:
    """Atomic last/best checkpoints and automatic resume.

    Args:
        save_dir: folder of ``last.pt`` and ``best.pt``.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save, e.g. ``{"network": net,
            "optimizer": opt, "loss": loss, "lr_scheduler": sched}``; the trainer is added as ``trainer``.
        resume: load ``last.pt`` when the trainer starts, if it exists.
        key_metric_engine: engine whose ``state.metrics[key_metric]`` selects ``best.pt`` (the evaluator).
        key_metric: name of that metric; ``None`` uses the engine's ``key_metric_name``.
        higher_is_better: direction of the key metric.
        save_every: epochs between ``last.pt`` saves.
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
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.key_metric_engine = key_metric_engine
        self.key_metric = key_metric
        self.higher_is_better = higher_is_better
        self.save_every = save_every
        self.best_value = -math.inf if higher_is_better else math.inf
        self.best_epoch = -1

    @property
    def last_path(self) -> Path:
        return self.save_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.save_dir / "best.pt"

    def attach(self, trainer: Engine) -> None:
        if trainer.has_event_handler(self.save_last, Events.EPOCH_COMPLETED):
            return
        self.save_dict.setdefault("trainer", trainer)
        if self.resume:
            trainer.add_event_handler(Events.STARTED, self.load_last)
        trainer.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_every), self.save_last)
        trainer.add_event_handler(Events.COMPLETED, self.save_last)
        trainer.add_event_handler(Events.COMPLETED, self.ensure_best)
        if self.key_metric_engine is not None:
            self.key_metric_engine.add_event_handler(Events.COMPLETED, self._maybe_save_best(trainer))

    def _is_main(self) -> bool:
        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

    def _state(self) -> dict[str, Any]:
        state = {
            name: (unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).state_dict()
            for name, obj in self.save_dict.items()
        }
        state["rng"] = _rng_state()
        state["best"] = {"value": self.best_value, "epoch": self.best_epoch}
        return state

    def save_last(self, trainer: Engine) -> None:
        if self._is_main():
            atomic_torch_save(self._state(), self.last_path)

    def load_last(self, trainer: Engine) -> None:
        if not self.last_path.is_file():
            return
        checkpoint = torch.load(self.last_path, map_location="cpu", weights_only=True)
        max_epochs = trainer.state.max_epochs
        for name, obj in self.save_dict.items():
            if name not in checkpoint:
                raise KeyError(f"{self.last_path} has no '{name}'; it holds {sorted(checkpoint)}")
            if isinstance(obj, torch.nn.Module):
                unwrap(obj).load_state_dict(_strip_module_prefix(checkpoint[name]))
            else:
                obj.load_state_dict(checkpoint[name])
        trainer.state.max_epochs = max_epochs  # the command line's epochs win over the checkpoint's
        _set_rng_state(checkpoint["rng"])
        self.best_value = checkpoint["best"]["value"]
        self.best_epoch = checkpoint["best"]["epoch"]
        logger.info("resumed from %s at epoch %d", self.last_path, trainer.state.epoch)

    def ensure_best(self, trainer: Engine) -> None:
        """At the end of training, give ``best.pt`` the final weights if no validation ever scored.

        Why: a validation split without a labelled case for any task (tiny datasets, a split typo)
        gives NaN key metrics, so no "best" is ever chosen and evaluation/inference would find no
        model. nnU-Net always leaves a final checkpoint; here ``best.pt`` falls back to the final
        weights with a warning that says why.
        """
        if self.best_path.is_file() or not self._is_main():
            return
        network = unwrap(self.save_dict["network"])
        atomic_torch_save({"network": network.state_dict(), "epoch": trainer.state.epoch}, self.best_path)
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
                self.best_value, self.best_epoch = float(value), trainer.state.epoch
                if self._is_main():
                    network = unwrap(self.save_dict["network"])
                    atomic_torch_save(
                        {"network": network.state_dict(), "epoch": trainer.state.epoch, name: float(value)},
                        self.best_path,
                    )
                logger.info("new best %s = %.4f at epoch %d -> %s", name, value, trainer.state.epoch, self.best_path)

        return save_best
