"""The trained network of a run folder, rebuilt from the run's own record and loaded with its weights.

Why: export (and later predict) must run exactly the network the run trained, without the user
repeating any training override. The run's ``run_config.json`` (or the copy inside its checkpoint)
holds the merged bundle configuration and the settings; the network is built from that
configuration's ``network_def`` with the recorded settings (the same path evaluation takes, see
:class:`~medmtl.engines.RunRecord`), so the network definition is never stated twice. A
cross-validation folder gives its fold ensemble (:class:`~medmtl.networks.FoldEnsemble`), as
``medmtl run BUNDLE evaluate --output_dir CV`` does.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from medmtl.data.tasks import Task
from medmtl.engines.run_config import RUN_CONFIG_FILE, RunConfigError, RunConfigExit, RunRecord

logger = logging.getLogger(__name__)

__all__ = ["RunNetwork", "RunNetworkError", "load_run_network", "record_digest", "recorded_config"]

CHECKPOINTS = ("best.pt", "last.pt")  # the one evaluation uses first


class RunNetworkError(ValueError):
    """A run folder's network cannot be rebuilt: the message names the folder and the fix."""


@dataclass(frozen=True)
class RunNetwork:
    """A run's network in eval mode on the CPU, with what a deployed copy needs to describe itself.

    Attributes:
        network: the network (weights loaded), returning ``{task: logits}``.
        tasks: its tasks, in output order.
        input_keys: names of its inputs (one for most networks; the views of a multi-plane network).
        settings: the effective settings (recorded model settings; data settings).
        record: the run record the network was rebuilt from.
        run_dir: the folder given.
        checkpoint: the weights loaded.
        members: 1, or the number of folds of a cross-validation's ensemble.
        choices: ``{"decisions": path, "calibration": path}`` of the files the run folder holds.
    """

    network: nn.Module
    tasks: tuple[Task, ...]
    input_keys: tuple[str, ...]
    settings: dict[str, Any]
    record: dict[str, Any]
    run_dir: Path
    checkpoint: Path
    members: int = 1
    choices: dict[str, Path] = dataclasses.field(default_factory=dict)


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of the run record as canonical JSON: names the exact run an exported file came from."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _checkpoint(run_dir: Path) -> Path:
    for name in CHECKPOINTS:
        path = run_dir / "models" / name
        if path.is_file():
            return path
    raise RunNetworkError(
        f"{run_dir}: no models/best.pt or models/last.pt; give the --output_dir of a trained run "
        "(medmtl run BUNDLE train --output_dir RUN)"
    )


def _no_record(run_dir: Path) -> RunNetworkError:
    return RunNetworkError(
        f"{run_dir}: no record of the run's configuration ({RUN_CONFIG_FILE}, or a copy inside models/best.pt), "
        "so its network cannot be rebuilt. Runs record it since medmtl 0.1: train the run again with "
        f"`medmtl run BUNDLE train --output_dir {run_dir}`, or copy the {RUN_CONFIG_FILE} of the training into it"
    )


def recorded_config(record: dict[str, Any], source: str) -> dict[str, Any]:
    """The merged bundle configuration the run trained with (re-read from its layers if not recorded).

    A copy: the parser built on it sets ids (``run_record``, ``output_dir``) that must not land in the
    record, which exports and MLflow models carry and digest.
    """
    if isinstance(record.get("config"), dict):
        return copy.deepcopy(record["config"])
    files = record.get("config_files")
    if not files:
        raise RunNetworkError(f"{source}: the run record holds no bundle configuration and names no config files")
    try:
        config = ConfigParser.load_config_files(files)
    except (OSError, ValueError) as err:
        raise RunNetworkError(
            f"{source}: the run record holds no merged configuration and its config files cannot be read ({err})"
        ) from None
    parser = ConfigParser(config)
    parser.update(record.get("overrides") or {})
    return parser.get()


def _cv_parts(run_dir: Path) -> tuple[Path, Path, int, dict[str, Path]]:
    """(fold 0 folder, ensemble checkpoint, folds, choice files) of a finished cross-validation."""
    from medmtl.experiments.cross_validation import CV_FILE, ensemble_overrides

    given = ensemble_overrides(run_dir, ["inference"])  # checks the folds are trained; writes ensemble.pt once
    options = dict(zip(given[::2], given[1::2], strict=True))
    folds = json.loads((run_dir / CV_FILE).read_text(encoding="utf-8"))["folds"]
    choices = {
        key: Path(options[f"--{key}_path"]) for key in ("decisions", "calibration") if f"--{key}_path" in options
    }
    return Path(options["--output_dir"]), Path(options["--ckpt_path"]), int(folds), choices


def load_run_network(run_dir: str | os.PathLike) -> RunNetwork:
    """Rebuild the network of ``run_dir`` (a training run, or a ``medmtl cv`` folder) and load its weights.

    Args:
        run_dir: the ``--output_dir`` of a training run (``models/best.pt``, else ``last.pt``), or of
            a cross-validation (its fold ensemble).

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        RunNetworkError: no run record, no checkpoint, or a network that differs from the recorded one.
    """
    from medmtl.experiments.cross_validation import is_cv_run
    from medmtl.networks import FoldEnsemble

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder; give the --output_dir of a trained run")
    members, choices = 1, {}
    if is_cv_run(run_dir):
        record_dir, checkpoint, members, choices = _cv_parts(run_dir)
    else:
        record_dir, checkpoint = run_dir, _checkpoint(run_dir)
        for key in ("decisions", "calibration"):
            if (run_dir / f"{key}.json").is_file():
                choices[key] = run_dir / f"{key}.json"
    run_record = RunRecord.for_checkpoint(checkpoint, record_dir, argv=[])
    if run_record.record is None:
        raise _no_record(run_dir)
    # explicit={}: the recorded model *and* data settings are used (the spec the run trained with)
    run_record = dataclasses.replace(run_record, explicit={}, purpose="export")
    parser = ConfigParser(recorded_config(run_record.record, run_record.source))
    parser["run_record"] = run_record
    parser["output_dir"] = str(record_dir)
    try:
        network = parser.get_parsed_content("network_def")
        tasks = tuple(parser.get_parsed_content("tasks"))
        input_keys = tuple(parser.get_parsed_content("input_keys"))
        settings = dict(parser.get_parsed_content("settings"))
        run_record.check_tasks(tasks)
        run_record.check_network(network)
    except RunConfigExit as stop:  # a SystemExit for bundle runs; here a plain error the caller reports
        raise RunNetworkError(f"{run_dir}: {stop.error}") from None
    except RunConfigError as err:
        raise RunNetworkError(f"{run_dir}: {err}") from None
    if members > 1:
        network = FoldEnsemble.replicate(network, tasks, members)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get("network"), dict):
        raise RunNetworkError(f"{checkpoint}: holds no 'network' state dict; give a checkpoint written by medmtl")
    network.load_state_dict(state["network"])
    network.eval()
    logger.info("rebuilt %s from %s with the weights of %s", type(network).__name__, run_record.source, checkpoint)
    return RunNetwork(
        network=network,
        tasks=tasks,
        input_keys=input_keys,
        settings=settings,
        record=run_record.record,
        run_dir=run_dir,
        checkpoint=checkpoint,
        members=members,
        choices=choices,
    )
