"""Engines: MONAI's SupervisedTrainer/Evaluator made multi-task through prepare_batch, handlers and hooks."""

from __future__ import annotations

from medmtl.engines.acceleration import (
    CompiledNetwork,
    compiled_network,
    cudnn_benchmark_choice,
    set_cudnn_benchmark,
)
from medmtl.engines.checkpoint_io import (
    CheckpointError,
    CheckpointExit,
    CheckpointWriteError,
    SafeCheckpointLoader,
    check_state_dict_fits,
    load_checkpoint,
    read_run_config,
)
from medmtl.engines.cpu_autocast import CPUAutocastNetwork, cpu_autocast_network, cuda_amp
from medmtl.engines.distributed import (
    WRITER_HANDLERS,
    ShardError,
    check_shards,
    cleanup_distributed,
    distributed_backend,
    distributed_device,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    per_rank_handlers,
    rank0_only,
)
from medmtl.engines.eval_mode import EvalModePerRun
from medmtl.engines.finetune import (
    PretrainedLoadReport,
    encoder_norm_layers,
    encoder_parameters,
    finetune_param_groups,
    freeze_encoder,
    load_pretrained,
    load_pretrained_weights,
)
from medmtl.engines.guards import (
    GuardExit,
    NonFiniteError,
    NonFiniteLossError,
    NonFiniteLossGuard,
    TrainingMemoryGuard,
    non_finite_tensors,
)
from medmtl.engines.handlers import (
    CHECKPOINT_PAUSE_ENV,
    MultiTaskLossHandler,
    ResumableCheckpoint,
    atomic_torch_save,
    unwrap,
)
from medmtl.engines.host_memory import tune_host_allocator
from medmtl.engines.iteration import GradientSurgeryIteration
from medmtl.engines.param_groups import optimizer_param_groups
from medmtl.engines.prepare_batch import (
    FlattenTaskOutputsd,
    MultiTaskPrepareBatch,
    label_key,
    pred_key,
    probabilities,
)
from medmtl.engines.progress import BatchProgress, EpochProgress, log_run_summary, run_summary
from medmtl.engines.resume_state import RandomStates, ResumableEarlyStop
from medmtl.engines.run_config import (
    RunConfigError,
    RunConfigExit,
    RunRecord,
    build_run_config,
    write_run_config,
)
from medmtl.engines.run_lock import (
    OutputDirError,
    OutputDirLock,
    OutputDirLocked,
    RunExit,
    check_free_space,
    check_output_dir,
    claim_output_dir,
    estimate_checkpoint_bytes,
    lock_holder,
    release_output_dir,
)
from medmtl.engines.semi_supervised import (
    SemiSupervisedHandler,
    SemiSupervisedIteration,
    consistency_loss,
    pseudo_label_loss,
    pseudo_label_mask,
    sigmoid_rampup,
)
from medmtl.engines.start_checks import BundleStartError, BundleStartExit, check_bundle_start
from medmtl.engines.time_budget import TimeBudget
from medmtl.engines.weight_average import EMAWeights
from medmtl.networks.router import ExpertRouter  # moved to medmtl.networks; this name kept for existing configs

__all__ = [
    "CompiledNetwork",
    "CPUAutocastNetwork",
    "cpu_autocast_network",
    "cuda_amp",
    "compiled_network",
    "cudnn_benchmark_choice",
    "set_cudnn_benchmark",
    "ShardError",
    "check_shards",
    "RunConfigError",
    "RunConfigExit",
    "RunRecord",
    "build_run_config",
    "write_run_config",
    "EMAWeights",
    "EvalModePerRun",
    "TimeBudget",
    "BatchProgress",
    "EpochProgress",
    "RandomStates",
    "ResumableEarlyStop",
    "read_run_config",
    "log_run_summary",
    "run_summary",
    "FlattenTaskOutputsd",
    "GradientSurgeryIteration",
    "MultiTaskLossHandler",
    "MultiTaskPrepareBatch",
    "ResumableCheckpoint",
    "atomic_torch_save",
    "label_key",
    "pred_key",
    "probabilities",
    "unwrap",
    "ExpertRouter",
    "PretrainedLoadReport",
    "encoder_parameters",
    "finetune_param_groups",
    "optimizer_param_groups",
    "freeze_encoder",
    "load_pretrained",
    "load_pretrained_weights",
    "encoder_norm_layers",
    "SemiSupervisedHandler",
    "SemiSupervisedIteration",
    "consistency_loss",
    "pseudo_label_loss",
    "pseudo_label_mask",
    "sigmoid_rampup",
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
    "CHECKPOINT_PAUSE_ENV",
    "GuardExit",
    "NonFiniteError",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "TrainingMemoryGuard",
    "non_finite_tensors",
    "tune_host_allocator",
    "BundleStartError",
    "BundleStartExit",
    "check_bundle_start",
    "CheckpointError",
    "CheckpointExit",
    "CheckpointWriteError",
    "SafeCheckpointLoader",
    "check_state_dict_fits",
    "load_checkpoint",
    "OutputDirError",
    "OutputDirLock",
    "OutputDirLocked",
    "RunExit",
    "check_free_space",
    "check_output_dir",
    "claim_output_dir",
    "estimate_checkpoint_bytes",
    "lock_holder",
    "release_output_dir",
]
