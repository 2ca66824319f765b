"""Helpers for the ``multi_gpu_train`` workflow: one training run spread over processes started by ``torchrun``.

``bundles/common/configs/multi_gpu_train.json`` (and a bundle's own ``multi_gpu_train.json``, where
it has one) is a layer over the bundle's training layers: it only overrides their ids (model-zoo
style) and calls these helpers from ``$`` expressions. Everything else is PyTorch's, ignite's and MONAI's:
``torch.distributed`` process group, ignite's ``idist`` (rank, world size and the collectives medmtl
runs itself), ``DistributedDataParallel``, ``monai.data.DistributedSampler`` (``Workflow`` calls its
``set_epoch``), MONAI's ``Cumulative`` gathering of validation results and its ``is_not_rank0``
guard on the MLflow handler added by ``--tracking mlflow``.

The same layers run on CPU (``gloo``) and on GPUs (``nccl``, one GPU per process, ``cuda:LOCAL_RANK``);
from the repository root (``medmtl run --print NAME multi_gpu_train`` prints any bundle's list)::

    torchrun --standalone --nproc_per_node=2 -m monai.bundle run \\
        --config_file "['bundles/common/configs/train.json','bundles/demo/configs/train.json','bundles/common/configs/multi_gpu_train.json']" \\
        --meta_file bundles/demo/configs/metadata.json

With N processes and ``batch_size`` B per process, a step computes what one process computes on a
batch of N x B (checked in float64 by ``tests/engines/test_ddp_equivalence.py`` and
``benchmarks/ddp_scaling.py``): DDP averages the network's gradients; ``MultiTaskLossHandler``
averages the gradients of the loss weighting's own parameters (uncertainty log-variances, outside
the DDP module) and sums the epoch losses over ranks (DWA's history, the logged losses);
``MultiTaskLoss(global_label_mean=True)`` weighs each rank's per-task mean by its share of the
labelled samples, so partly labelled batches average as one. What still differs by design: random
augmentation and dropout (rank r is seeded ``seed + r``), BatchNorm statistics (per rank;
PyTorch's ``SyncBatchNorm`` needs GPUs), GradNorm/PCGrad (per-rank gradient statistics, averaged),
and float32 rounding, which training amplifies as it amplifies a change of thread count.
``gradient_as_bucket_view`` lets the gradients live in DDP's all-reduce buckets (no copy per step).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence, Sized
from datetime import timedelta
from typing import Any, TypeVar

import ignite.distributed as idist
import torch
import torch.distributed as dist

from medmtl.engines.guards import GuardExit

__all__ = [
    "ShardError",
    "check_shards",
    "WRITER_HANDLERS",
    "cleanup_distributed",
    "distributed_backend",
    "distributed_device",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "per_rank_handlers",
    "rank0_only",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: handler classes (or their subclasses) that only write files, logs or MLflow records and run no
#: collective: attached on the main process only by :func:`per_rank_handlers`. Handlers that must
#: run on every rank (validation, loss weighting sync, early stopping, ``ResumableCheckpoint``,
#: which loads on every rank and writes on rank 0 only) are not listed.
WRITER_HANDLERS: tuple[str, ...] = (
    "EpochProgress",
    "RunArtifactsHandler",
    "MLFlowHandler",
    "ClearMLStatsHandler",
    "ClearMLImageHandler",
    "StatsHandler",
    "TensorBoardStatsHandler",
    "TensorBoardImageHandler",
    "CheckpointSaver",
    "MetricsSaver",
    "MetricLogger",
    "EvaluationReportHandler",
    "MultiTaskPredictionWriter",
)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank (0 without a process group): ignite's ``idist.get_rank``, callable from bundle configs."""
    return idist.get_rank()


def get_world_size() -> int:
    """Number of processes (1 without a process group): ignite's ``idist.get_world_size``."""
    return idist.get_world_size()


def is_main_process() -> bool:
    """True on rank 0, and in every single-process run."""
    return get_rank() == 0


def distributed_backend() -> str:
    """``"nccl"`` when CUDA (and NCCL) is available, else ``"gloo"`` (CPU)."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def distributed_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` on GPU machines (``torchrun`` sets it), else CPU.

    Raises:
        RuntimeError: when ``LOCAL_RANK`` has no GPU of its own (``--nproc_per_node`` larger than
            the visible GPUs). Without this check the rank fails deep in CUDA with "invalid device
            ordinal", and two ranks sharing one GPU would hang NCCL.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank, visible = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if local_rank >= visible:
        processes = os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1))
        raise RuntimeError(
            f"torchrun started {processes} processes on this machine but only {visible} GPU(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); NCCL needs one GPU per "
            f"process -> fix: torchrun --nproc_per_node={visible} ..., or train on CPU (gloo) with "
            "CUDA_VISIBLE_DEVICES='' torchrun ..."
        )
    return torch.device(f"cuda:{local_rank}")


def _torchrun_hint() -> str:
    """This very ``monai.bundle`` command under ``torchrun`` (when it is one), else where to get one."""
    if sys.argv and sys.argv[0].replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        cmd = ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", *sys.argv[1:]]
        # MONAI's list syntax in double quotes, as the docs and `medmtl run --print` write it
        return "run it as " + " ".join(f'"{t}"' if "'" in t and '"' not in t else shlex.quote(t) for t in cmd)
    return (
        "run torchrun --standalone --nproc_per_node=2 followed by what `medmtl run --print NAME multi_gpu_train` "
        'prints after the python executable (-m monai.bundle run --config_file "[...]" ...)'
    )


def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> torch.device:
    """Join the process group ``torchrun`` prepared (``env://``) and select this process's GPU.

    An existing group is kept. On non-main ranks the ``medmtl`` and ``ignite`` loggers are
    lowered to WARNING, so a run prints each epoch line once. Why our own and not
    ``idist.initialize``: that one neither binds NCCL to this rank's GPU (``device_id``) nor says
    how to start a run that ``torchrun`` did not; ``idist.sync`` then tells ignite about the group.

    Args:
        backend: ``None`` picks :func:`distributed_backend` (``nccl`` on GPU, ``gloo`` on CPU).
        timeout_s: collective timeout in seconds (``None``: PyTorch's default).

    Returns:
        :func:`distributed_device`.

    Raises:
        RuntimeError: when ``torch.distributed`` is unavailable, or the process was not started by
            ``torchrun`` (the message names the missing environment variables and the command).
    """
    if not dist.is_available():
        raise RuntimeError("multi_gpu_train needs torch.distributed, which this PyTorch build lacks")
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(
            f"multi_gpu_train must be started by torchrun (environment lacks {missing}): {_torchrun_hint()}"
        )
    device = distributed_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend or distributed_backend()}
        if timeout_s is not None:
            kwargs["timeout"] = timedelta(seconds=timeout_s)
        if kwargs["backend"] == "nccl":
            kwargs["device_id"] = device  # binds NCCL to this GPU (no guessing in barrier())
        dist.init_process_group(**kwargs)
    # here, where every rank is present: ignite's first look at a group runs collectives of its own;
    # temporary: ignite looks again after cleanup_distributed, for a later group in this process
    idist.sync(temporary=True)
    if not is_main_process():
        for name in ("medmtl", "ignite"):
            logging.getLogger(name).setLevel(logging.WARNING)
    logger.info(
        "process group: backend %s, world size %d, rank %d on %s",
        idist.backend(),
        get_world_size(),
        get_rank(),
        device,
    )
    return device


class ShardError(ValueError):
    """A split has fewer cases than processes: some rank would get no data."""


def check_shards(splits: Mapping[str, Sized], world_size: int | None = None) -> None:
    """Refuse, in one line per split, splits with fewer cases than processes (before the samplers do).

    Why: MONAI's ``DistributedSampler`` stops with "the dataset length is less than the number of
    participating ranks" inside a config traceback, without saying which split or what to do.

    Args:
        splits: ``{split name: its cases}`` that are sharded across the processes.
        world_size: number of processes (default: the current process group's).

    Raises:
        GuardExit: naming every split that is too small and the fix.
    """
    world = get_world_size() if world_size is None else world_size
    small = {name: len(cases) for name, cases in splits.items() if len(cases) < world}
    if not small:
        return
    lines = [
        f"the {name} split has {count} case(s) for {world} processes: every process needs at least one; "
        f"use fewer processes (--nproc_per_node), or give the {name} split more cases (spec splits)"
        for name, count in small.items()
    ]
    raise GuardExit(ShardError("\n".join(lines)))


def cleanup_distributed() -> None:
    """Destroy the process group if there is one (a bundle's ``finalize``); ignite's ``idist`` forgets it too."""
    if is_distributed():
        dist.destroy_process_group()
    idist.sync(temporary=True)  # back to ignite's single-process model, not a destroyed group


def rank0_only(items: Iterable[T] | None) -> list[T]:
    """``items`` as a list on the main process, ``[]`` on the other ranks."""
    return list(items or []) if is_main_process() else []


def _is_writer(handler: Any, writers: Sequence[str]) -> bool:
    return any(cls.__name__ in writers for cls in type(handler).__mro__)


def per_rank_handlers(handlers: Iterable[Any] | None, writers: Sequence[str] = WRITER_HANDLERS) -> list[Any]:
    """The handlers this rank attaches: all on rank 0; on the others, all but the writers.

    Selecting by type, not position, keeps a bundle's ``multi_gpu_train.json`` valid when its
    ``train.json`` handler list changes or ``--tracking mlflow`` appends ``MLFlowHandler``.

    Args:
        handlers: handler objects (a bundle's resolved ``train::handlers``); ``None`` gives ``[]``.
        writers: class names (matched along each handler's MRO) kept on rank 0 only.

    Example::

        "train::trainer::train_handlers": "$medmtl.engines.per_rank_handlers(@train::handlers)"
    """
    handlers = list(handlers or [])
    if is_main_process():
        return handlers
    return [h for h in handlers if not _is_writer(h, writers)]
