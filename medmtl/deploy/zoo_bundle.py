"""A trained run as a self-contained MONAI model zoo bundle (``medmtl export-bundle NAME OUT --run RUN``).

Why: a run folder is tied to the machine that trained it (``best.pt`` holds ``{'network', 'epoch',
..., 'run_config'}``, the record names absolute data paths) and the bundle it came from takes its
settings from that record. The zoo wants one folder that runs anywhere: the weights as a plain
state dict in ``models/model.pt``, configs that build exactly the trained network by themselves,
the data spec and the data's licence inside. So the bundle is exported as
:func:`medmtl.bundle_layers.export_bundle` writes it, then:

- the run's model settings (backbone, spatial size, sharing, ...) and spec overrides are written
  into ``train.json`` and ``inference.json`` from the run record (never re-stated by the user);
- ``inference.json`` and ``evaluate.json`` load ``models/model.pt`` with no run record to read
  (the settings are in the configs);
- ``models/model.pt`` is the run's weights (:func:`~medmtl.deploy.run_network.load_run_network`),
  and the network the exported configs build is checked to load them and give the run's outputs;
- ``network_data_format`` describes that network: input size and channels, one output per task,
  ``pred`` the zoo's view (:func:`medmtl.bundle_zoo.zoo_task`);
- ``docs/data_license.txt`` names the run, ``docs/training_run.json`` keeps its record without paths.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from medmtl.atomic_io import atomic_write_with
from medmtl.bundle_layers import BundleLayerError, bundle_dir, export_bundle
from medmtl.bundle_zoo import DATA_LICENSE, MULTITASK_NETWORK_ID, data_license_text, zoo_task
from medmtl.deploy.run_network import RunNetwork, load_run_network, record_digest
from medmtl.engines.checkpoint_io import CheckpointError, check_state_dict_fits

logger = logging.getLogger(__name__)

__all__ = ["ZooExportError", "export_run_bundle"]

MODEL_FILE = "models/model.pt"
TRAINING_RUN_FILE = "docs/training_run.json"
PARITY_TOLERANCE = 1e-5  # the exported configs must rebuild the run's network exactly (same weights, same code)
_CHECKPOINT = "$@bundle_root + '/models/model.pt'"
_NO_RECORD = "$medmtl.engines.RunRecord(purpose='evaluation/inference')"  # the settings are in the configs


class ZooExportError(ValueError):
    """A run cannot be exported as a zoo bundle: the message names the run and the fix."""


def _write_json(path: Path, config: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _bake(config: dict[str, Any], model: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """Write the run's model settings and spec overrides into ``config`` (where ``model_settings`` points)."""
    references = config.get("model_settings", {})
    for key, value in model.items():
        ref = references.get(key)
        target = ref[1:] if isinstance(ref, str) and ref.startswith("@") and ref[1:] in config else None
        if target is not None:
            config[target] = copy.deepcopy(value)
        elif key in references:
            references[key] = copy.deepcopy(value)
        else:  # a setting the bundle no longer has: kept for the record, nothing reads it
            logger.warning("the run's model setting %r is not a setting of this bundle; left out", key)
    if "spec_overrides" in data and "spec_overrides" in config:
        config["spec_overrides"] = copy.deepcopy(data["spec_overrides"])


def _input(run: RunNetwork, channels: int, spatial: Sequence[int]) -> Any:
    x = torch.rand(1, channels, *spatial, generator=torch.Generator().manual_seed(0))
    return x if len(run.input_keys) == 1 else {key: x for key in run.input_keys}


def _entry(task: Any, logits: torch.Tensor, old: Mapping[str, Any] | None) -> dict[str, Any]:
    """``network_data_format.outputs[task]`` from the network's own output (channels and size measured)."""
    channels = int(logits.shape[1])
    dense = logits.ndim > 2
    entry = dict(old or {})
    entry.update(
        {
            "type": entry.get("type", "image" if dense else "probabilities"),
            "format": entry.get("format", "segmentation" if dense else "classes"),
            "num_channels": channels,
            "spatial_shape": [int(s) for s in logits.shape[2:]] if dense else [1],
            "dtype": "float32",
            "value_range": entry.get("value_range", []),
            "is_patch_data": entry.get("is_patch_data", False),
        }
    )
    if len(entry.get("channel_def", {})) != channels:
        classes = list(task.classes or [])
        names = classes if len(classes) == channels else [f"{task.name} {i}" for i in range(channels)]
        if channels == 1:
            names = [f"{task.name} (logit; sigmoid gives the probability)"]
        entry["channel_def"] = {str(i): name for i, name in enumerate(names)}
    return entry


def _network_data_format(meta: dict[str, Any], run: RunNetwork, spatial: list[int], outputs: Mapping) -> None:
    """Describe the run's network in ``meta['network_data_format']`` (inputs resized, one output per task)."""
    form = meta.setdefault("network_data_format", {})
    for entry in form.setdefault("inputs", {}).values():
        entry["spatial_shape"] = list(spatial)
    old = form.get("outputs", {})
    new = {task.name: _entry(task, outputs[task.name], old.get(task.name)) for task in run.tasks}
    shown = zoo_task(run.tasks)
    pred = copy.deepcopy(new[shown])
    pred["channel_def"] = {k: f"{shown}: {v}" for k, v in pred["channel_def"].items()}
    form["outputs"] = {"pred": pred, **new}


def _provenance(run: RunNetwork) -> dict[str, Any]:
    """The run record without the training machine's paths (what ``docs/training_run.json`` keeps)."""
    record = run.record
    return {
        "run": run.run_dir.name,
        "checkpoint": run.checkpoint.name,
        "record_sha256": record_digest(record),
        "created": record.get("created"),
        "bundle": record.get("bundle"),
        "model_settings": record["settings"]["model"],
        "spec_overrides": record["settings"]["data"].get("spec_overrides", {}),
        "tasks": record.get("tasks"),
        "network": record.get("network"),
        "training": {k: v for k, v in (record.get("training") or {}).items() if k not in ("data_spec", "dataset_dir")},
        "versions": record.get("versions"),
    }


def _spatial(run: RunNetwork, meta: Mapping[str, Any]) -> list[int]:
    size = run.settings.get("spatial_size")
    if isinstance(size, list | tuple) and size and all(isinstance(s, int) for s in size):
        return [int(s) for s in size]
    return [int(s) for s in meta["network_data_format"]["inputs"]["image"]["spatial_shape"]]


def _rebuilt(out: Path, run: RunNetwork, x: Any) -> dict[str, torch.Tensor]:
    """The exported ``inference.json``'s multi-task network with the run's weights: its outputs on ``x``."""
    parser = ConfigParser()
    parser.read_config(f=str(out / "configs" / "inference.json"))
    with tempfile.TemporaryDirectory(prefix="medmtl_zoo_") as scratch:
        parser["bundle_root"] = str(out)
        parser["output_dir"] = scratch
        network = parser.get_parsed_content(MULTITASK_NETWORK_ID)
    state = run.network.state_dict()
    try:
        check_state_dict_fits(network, state, run.checkpoint, fix="export with the bundle the run was trained with")
    except CheckpointError as err:
        raise ZooExportError(
            f"{run.run_dir}: the exported bundle's network does not take the run's weights ({err}); a setting outside "
            "the run record differs (medmtl version or the bundle's network definition)"
        ) from None
    network.load_state_dict(state)
    network.eval()
    with torch.no_grad():
        return network(x)


def export_run_bundle(
    bundle: str | os.PathLike, out: str | os.PathLike, run_dir: str | os.PathLike, data_spec: str | None = None
) -> Path:
    """Write ``bundle`` with the trained run ``run_dir`` as a self-contained model zoo bundle in ``out``.

    Args:
        bundle: the bundle name or folder the run was trained with.
        out: the new bundle folder (must not exist or be empty).
        run_dir: the run's ``--output_dir`` (``models/best.pt``, its record).
        data_spec: the spec to ship (default: the one the run recorded).

    Returns:
        ``out``.

    Raises:
        ZooExportError: a cross-validation folder, a run of another bundle, the run's spec not found, or
            a bundle network that does not rebuild the run's (all name the fix).
        medmtl.deploy.run_network.RunNetworkError: the run cannot be rebuilt (no record, no checkpoint).
    """
    run = load_run_network(run_dir)
    if run.members > 1:
        raise ZooExportError(
            f"{run_dir} is a cross-validation ({run.members} folds): a zoo bundle holds one network; export one "
            f"fold's run (e.g. {Path(run_dir) / 'fold_0'})"
        )
    name = bundle_dir(bundle).name
    trained_with = run.record.get("bundle")
    if trained_with and trained_with != name:
        raise ZooExportError(
            f"{run_dir} was trained with the bundle {trained_with!r}, not {name!r}: "
            f"medmtl export-bundle {trained_with} OUT --run {run_dir}"
        )
    data = run.record["settings"]["data"]
    spec = data_spec or data.get("data_spec")
    if not spec or not Path(spec).is_file():
        raise ZooExportError(
            f"{run_dir}: the run's data spec {spec} is not on this machine; pass the spec it was trained with "
            "(--data-spec FILE)"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZooExportError(f"{out} exists and is not empty: give a new folder")
    try:
        _export(bundle, out, run, str(spec))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written bundle left looking complete
        raise
    logger.info("exported %s with the weights of %s to %s", name, run.checkpoint, out)
    return out


def _export(bundle: str | os.PathLike, out: Path, run: RunNetwork, spec: str) -> None:
    model, data = run.record["settings"]["model"], run.record["settings"]["data"]
    try:
        export_bundle(bundle, out, data_spec=spec)
    except BundleLayerError as err:
        raise ZooExportError(str(err)) from None
    configs = out / "configs"
    for name_ in ("train.json", "inference.json"):
        config = _read_json(configs / name_)
        _bake(config, model, data)
        if name_ == "inference.json":
            config.update({"ckpt_path": _CHECKPOINT, "run_record": _NO_RECORD})
        _write_json(configs / name_, config)
    if (configs / "evaluate.json").is_file():
        layer = _read_json(configs / "evaluate.json")
        layer.update({"ckpt_path": _CHECKPOINT, "run_record": _NO_RECORD})
        _write_json(configs / "evaluate.json", layer)

    meta = _read_json(configs / "metadata.json")
    spatial = _spatial(run, meta)
    channels = int(meta["network_data_format"]["inputs"]["image"].get("num_channels", 1))
    x = _input(run, channels, spatial)
    with torch.no_grad():
        expected = run.network(x)
    got = _rebuilt(out, run, x)
    for task in run.tasks:
        difference = float((got[task.name] - expected[task.name]).abs().max())
        if difference > PARITY_TOLERANCE:
            raise ZooExportError(
                f"{run.run_dir}: the exported bundle's network gives other {task.name} outputs than the run's "
                f"(max |diff| {difference:.2e}): a setting outside the run record differs"
            )
    _network_data_format(meta, run, spatial, expected)
    _write_json(configs / "metadata.json", meta)

    state = {k: v.detach().cpu().clone() for k, v in run.network.state_dict().items()}
    (out / "models").mkdir(exist_ok=True)
    atomic_write_with(out / MODEL_FILE, lambda handle: torch.save(state, handle))
    trained_on = (
        f"trained by the run {run.run_dir.name} ({run.record.get('created', 'date not recorded')}, "
        f"{run.checkpoint.name}) on data in the layout of configs/{Path(spec).name}"
    )
    (out / DATA_LICENSE).write_text(data_license_text(meta, configs / Path(spec).name, trained_on), encoding="utf-8")
    _write_json(out / TRAINING_RUN_FILE, _provenance(run))
