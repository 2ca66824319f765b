"""``medmtl experts``: one expert per class of a router task, fine-tuned from a trained multi-task model.

Why: MURA's seed trains one abnormality expert per body part and routes each study to the expert of
its predicted body part. Here the trained multi-task model (``--from RUN``) is the router and the
starting point of every expert: expert ``k`` is an ordinary bundle ``train`` run in
``OUT/expert_<k>_<class>`` (its own run record, checkpoints, resume) on the cases labelled with class
``k`` only (the spec's ``select``, :mod:`medmtl.data.selection`), with the single model's data,
split (its ``splits.json`` is copied) and model settings (the same architecture, so its weights
load: ``--pretrained_ckpt``). ``OUT/router.pt`` then holds the router and the experts as one
:class:`~medmtl.networks.ExpertRouter` with the single model's run record, so
``medmtl run BUNDLE evaluate --output_dir OUT`` evaluates it like any model (:func:`router_overrides`)
on the single model's test split, per image and, with ``aggregate_by``, per study.

``OUT/experts.json`` records what the experts were trained with; running ``medmtl experts`` again
resumes (finished experts are skipped, an interrupted one resumes from its ``last.pt``) and refuses
other settings, naming the difference, as ``medmtl cv`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmtl.atomic_io import atomic_write, atomic_write_with
from medmtl.bundle_layers import bundle_dir
from medmtl.data.tasks import Task, TaskKind
from medmtl.engines.checkpoint_io import RUN_CONFIG_KEY
from medmtl.engines.run_config import RUN_CONFIG_FILE, RunRecord
from medmtl.experiments.commands import check_resume_record, option_value, run_medmtl
from medmtl.json_file import read_json
from medmtl.networks.router import router_state_dict

__all__ = [
    "EXPERTS_FILE",
    "ROUTER_CHECKPOINT",
    "ExpertsError",
    "ExpertsResult",
    "expert_dir",
    "is_experts_run",
    "router_network",
    "router_overrides",
    "run_experts",
    "training_counts",
    "write_router_checkpoint",
]

logger = logging.getLogger(__name__)

EXPERTS_FILE = "experts.json"
EXPERTS_VERSION = 1
ROUTER_CHECKPOINT = "router.pt"
WEIGHTS = ("best", "last")
_RECORDED = ("bundle", "single_run", "router_sha256", "router_task", "classes", "weights", "overrides")
"""What a resumed ``medmtl experts`` must repeat exactly."""
_SET_HERE = ("--output_dir", "--pretrained_ckpt", "--spec_overrides", "--ckpt_path")
"""Overrides ``medmtl experts`` sets itself for every expert."""


class ExpertsError(ValueError):
    """The experts cannot be trained or evaluated: the message names the folder, the problem and the fix."""


@dataclass
class ExpertsResult:
    """What :func:`run_experts` did: each class's expert folder, those skipped, the combined checkpoint."""

    output_dir: Path
    router_task: str
    expert_dirs: dict[str, Path]
    router_checkpoint: Path
    skipped: list[str] = field(default_factory=list)


def expert_dir(output_dir: str | os.PathLike, index: int, class_name: str) -> Path:
    """``OUT/expert_<index>_<class>``: the bundle run of one expert (the index keeps names unique and ordered)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", class_name).strip("._") or "class"
    return Path(output_dir) / f"expert_{index}_{safe}"


def is_experts_run(output_dir: str | os.PathLike) -> bool:
    """Whether ``output_dir`` is the folder of a ``medmtl experts`` (holds ``experts.json``)."""
    return (Path(output_dir) / EXPERTS_FILE).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _single_record(single_run: Path, checkpoint: Path) -> dict[str, Any]:
    if not checkpoint.is_file():
        raise ExpertsError(
            f"{checkpoint} not found: --from must be the output_dir of a finished training (models/best.pt, "
            "models/last.pt)"
        )
    record = RunRecord.for_checkpoint(checkpoint, single_run, argv=[]).record
    if record is None:
        raise ExpertsError(
            f"{single_run} has no run record ({RUN_CONFIG_FILE}, or one inside {checkpoint.name}): the experts take "
            "the single model's data and model settings from it; train the single model again with this medmtl"
        )
    return record


def _router_task(tasks: Sequence[Task], name: str | None, source: Path) -> Task:
    """The task that picks the expert: ``name``, or the single multiclass task."""
    if name is None:
        multiclass = [t for t in tasks if t.kind == TaskKind.MULTICLASS]
        if len(multiclass) != 1:
            raise ExpertsError(
                f"{source} has {len(multiclass)} multiclass tasks {[t.name for t in multiclass]}: give --router_task "
                f"(one of {[t.name for t in tasks if t.kind in (TaskKind.BINARY, TaskKind.MULTICLASS)]})"
            )
        return multiclass[0]
    task = next((t for t in tasks if t.name == name), None)
    if task is None or task.kind not in (TaskKind.BINARY, TaskKind.MULTICLASS):
        raise ExpertsError(
            f"--router_task {name}: the router routes by a binary or multiclass task of {source}, one of "
            f"{[t.name for t in tasks if t.kind in (TaskKind.BINARY, TaskKind.MULTICLASS)]}"
        )
    return task


def training_counts(
    data: Mapping[str, Any], task: Task, splits_file: str | os.PathLike | None = None
) -> dict[str, int]:
    """``{class: training cases labelled with it}`` for ``task``, with a run's data settings and split.

    Args:
        data: the run's data settings (``data_spec``, ``dataset_dir``, ``spec_overrides``).
        task: the router task.
        splits_file: the run's ``splits.json`` (its recorded splits win).

    Raises:
        DataError: the data cannot be read (every problem listed).
    """
    from medmtl.data.selection import select_cases
    from medmtl.data.spec import load_spec

    spec = load_spec(data["data_spec"], **dict(data.get("spec_overrides") or {}))
    table = spec.build_cases(root=data.get("dataset_dir"), splits_file=splits_file)
    training = table.datalist("train")
    return {name: len(select_cases(training, {task.name: name}, spec.tasks)) for name in task.class_names}


def _setting_args(settings: Mapping[str, Any]) -> list[str]:
    """``--key value`` for every setting with a value, as Python literals (what MONAI's command line reads)."""
    return [x for key, value in settings.items() if value is not None for x in (f"--{key}", repr(value))]


def _check_record(path: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    return check_resume_record(path, record, _RECORDED, version=EXPERTS_VERSION, error=ExpertsError, what="experts")


def run_experts(
    bundle: str | os.PathLike,
    single_run: str | os.PathLike,
    output_dir: str | os.PathLike,
    router_task: str | None = None,
    overrides: Sequence[str] = (),
    weights: str = "best",
    runner: Callable[[list[str], Mapping[str, str]], int] | None = None,
) -> ExpertsResult:
    """Train one expert per class of ``router_task`` into ``output_dir`` and write ``router.pt``, resuming what is there.

    Args:
        bundle: bundle name or folder (the one the single model was trained with).
        single_run: the trained multi-task model's output_dir: the router, and every expert's start.
        output_dir: the experts' folder (``expert_<k>_<class>`` inside, ``router.pt``, ``experts.json``).
        router_task: the task whose predicted class picks the expert (default: the only multiclass task).
        overrides: bundle overrides for every expert's training (``--epochs 10 --learning_rate 1e-4``);
            the model and data settings come from the single model's run record.
        weights: ``best`` or ``last``: which checkpoint of the single model and of each expert go
            into ``router.pt``.
        runner: runs one ``medmtl`` argv with an environment, returns its exit status (default: a subprocess).

    Raises:
        ExpertsError: bad settings, a class without training cases (all named), other experts in
            ``output_dir``, an expert that failed.
    """
    if weights not in WEIGHTS:
        raise ExpertsError(f"--weights must be one of {list(WEIGHTS)}, got {weights!r}")
    bundle_dir(bundle)  # a clear error for an unknown bundle before anything is written
    single_run, output_dir = Path(single_run).absolute(), Path(output_dir)
    checkpoint = single_run / "models" / f"{weights}.pt"
    record = _single_record(single_run, checkpoint)
    tasks = [Task.model_validate(t) for t in record.get("tasks", [])]
    task = _router_task(tasks, router_task, single_run)
    overrides = list(overrides)
    model, data = dict(record["settings"]["model"]), dict(record["settings"]["data"])
    taken = [
        key for key in [*_SET_HERE, *(f"--{k}" for k in (*model, *data))] if option_value(overrides, key) is not None
    ]
    if taken:
        raise ExpertsError(
            f"{', '.join(taken)}: set by medmtl experts (each expert has the single model's data, split and "
            f"architecture, from {single_run}); leave them out of the overrides"
        )
    splits = single_run / "splits.json"
    counts = training_counts(data, task, splits if splits.is_file() else None)
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise ExpertsError(
            f"class(es) {empty} of task '{task.name}' have no training case in the split of {single_run} "
            f"(training cases per class: {counts}): no expert can be trained for them. Train the single model with "
            "a split that leaves training cases of every class (another splits seed or val_fraction), or add data"
        )
    new = {
        "version": EXPERTS_VERSION,
        "bundle": str(bundle),
        "single_run": str(single_run),
        "router_sha256": _sha256(checkpoint),
        "router_task": task.name,
        "classes": list(task.class_names),
        "weights": weights,
        "overrides": overrides,
    }
    record_path = output_dir / EXPERTS_FILE
    trained = list(_check_record(record_path, new).get("trained", [])) if record_path.exists() else []
    output_dir.mkdir(parents=True, exist_ok=True)
    if splits.is_file() and not (output_dir / "splits.json").exists():  # the router's evaluation: the same test split
        shutil.copyfile(splits, output_dir / "splits.json")
    atomic_write(record_path, json.dumps({**new, "trained": trained}, indent=2) + "\n")

    run = runner or run_medmtl
    base_spec = dict(data.pop("spec_overrides", None) or {})
    result = ExpertsResult(output_dir, task.name, {}, output_dir / ROUTER_CHECKPOINT)
    for index, name in enumerate(task.class_names):
        folder = expert_dir(output_dir, index, name)
        result.expert_dirs[name] = folder
        if name in trained and (folder / "models" / f"{weights}.pt").is_file():
            logger.info("expert '%s': trained before (%s), skipped", name, folder)
            result.skipped.append(name)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if splits.is_file() and not (folder / "splits.json").exists():
            shutil.copyfile(splits, folder / "splits.json")
        select = {**dict(base_spec.get("select") or {}), task.name: name}
        argv = ["run", str(bundle), "train", "--output_dir", str(folder), "--pretrained_ckpt", str(checkpoint)]
        argv += [*_setting_args(model), *_setting_args(data), "--spec_overrides", repr({**base_spec, "select": select})]
        argv += overrides
        logger.info(
            "expert '%s' (%d/%d, %d training cases): training into %s",
            name,
            index + 1,
            len(counts),
            counts[name],
            folder,
        )
        if run(argv, dict(os.environ)) != 0:
            raise ExpertsError(
                f"expert '{name}': training failed (see its log above); run medmtl experts again to resume it"
            )
        trained.append(name)
        atomic_write(record_path, json.dumps({**new, "trained": trained}, indent=2) + "\n")
    experts = [expert_dir(output_dir, k, name) / "models" / f"{weights}.pt" for k, name in enumerate(task.class_names)]
    write_router_checkpoint(checkpoint, experts, result.router_checkpoint, record)
    return result


def write_router_checkpoint(
    router: str | os.PathLike,
    experts: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Save router and experts as one checkpoint of :meth:`ExpertRouter.replicate`, with the router's run record.

    The router's record (``record``, else the one inside the router's checkpoint) goes with it: evaluation
    and inference read the tasks, network, data and preprocessing from it (the experts share the
    architecture; their own records hold their ``select``).
    """
    if record is None:
        first = torch.load(Path(router), map_location="cpu", weights_only=True)
        record = first.get(RUN_CONFIG_KEY) if isinstance(first, dict) else None
    content: dict = {"network": router_state_dict(router, experts)}
    if record is not None:
        content[RUN_CONFIG_KEY] = dict(record)
    return atomic_write_with(Path(path), lambda handle: torch.save(content, handle))


def router_network(router_task: str) -> str:
    """The bundle's network as an :class:`ExpertRouter`: itself the router, one copy per class the experts."""
    return f"$medmtl.networks.ExpertRouter.replicate(@network_def, {router_task!r}).to(@device)"


def router_overrides(output_dir: str | os.PathLike, given: Sequence[str] = ()) -> list[str]:
    """Bundle overrides that evaluate / infer with a ``medmtl experts`` folder as one model (its ``router.pt``).

    The folder holds the single model's ``splits.json``, so the evaluation scores the same test cases
    as the single model's; a key in ``given`` (the user's overrides) is left to the user.

    Raises:
        ExpertsError: not an experts folder, or its experts are not all trained yet.
    """
    output_dir = Path(output_dir)
    record = read_json(output_dir / EXPERTS_FILE, ExpertsError, "run medmtl experts into that folder first")
    task = record.get("router_task") if isinstance(record, dict) else None
    if not isinstance(task, str):
        raise ExpertsError(f"{output_dir / EXPERTS_FILE} names no router task; it was not written by medmtl experts")
    checkpoint = output_dir / ROUTER_CHECKPOINT
    if not checkpoint.is_file():
        raise ExpertsError(f"{output_dir}: no {ROUTER_CHECKPOINT} yet; run medmtl experts again to finish the experts")
    wanted = {"--ckpt_path": str(checkpoint), "--network": router_network(task)}
    return [x for key, value in wanted.items() if option_value(given, key) is None for x in (key, value)]
