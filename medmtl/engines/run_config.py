"""A run records what it was trained with; resume, evaluation and inference read it back.

Why: without a record every evaluation and inference command had to repeat the training
overrides (``--backbone resunet --spatial_size [96,96] ...``); forget one and the checkpoint no
longer loads, or worse, loads into a different preprocessing. nnU-Net keeps a network's init
arguments in its checkpoints for the same reason.

Training writes ``<output_dir>/run_config.json`` (and the same record inside ``best.pt`` and
``last.pt``): the *settings* that define the model (network and preprocessing arguments such as
``backbone``, ``backbone_presets``, ``spatial_size``, ``pixdim``) and the data (``data_spec``,
``dataset_dir``, ``spec_overrides``, as absolute paths), the tasks, the training parameters, the
command line overrides, the merged bundle configuration and the package versions.

Bundles name these settings once in ``train.json``::

    "model_settings": {"backbone": "@backbone", "spatial_size": "@spatial_size", ...},
    "data_settings": {"data_spec": "@data_spec", "dataset_dir": "@dataset_dir", "spec_overrides": "@spec_overrides"},
    "run_record": "$medmtl.engines.RunRecord.for_training(@output_dir, resume=@resume)",
    "settings": "$@run_record.settings(model=@model_settings, data=@data_settings)",

and everything that builds the network or the preprocessing reads ``@settings['...']``. The
evaluation and inference layers replace only ``run_record`` (by
:meth:`RunRecord.for_checkpoint`). So with a record, the run's own values are used whatever this
command's config defaults are; an explicit ``--key`` that contradicts a model setting is one clear
error naming both values; a data setting may be overridden on purpose (predict on another folder).
Without a record (a run trained before records existed) the command's own values are used, as before.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver

from medmtl.atomic_io import atomic_write
from medmtl.engines.checkpoint_io import RUN_CONFIG_KEY, CheckpointError, read_run_config
from medmtl.engines.guards import GuardExit
from medmtl.engines.start_checks import cli_overrides, monai_run_arguments
from medmtl.resources import resolve_resource

logger = logging.getLogger(__name__)

__all__ = [
    "RUN_CONFIG_FILE",
    "RUN_CONFIG_FORMAT",
    "RunConfigError",
    "RunConfigExit",
    "RunRecord",
    "build_run_config",
    "network_fingerprint",
    "read_run_config_file",
    "write_run_config",
]

RUN_CONFIG_FILE = "run_config.json"
RUN_CONFIG_FORMAT = "medmtl.run_config/1"
DATA_PATH_SETTINGS = ("data_spec", "dataset_dir")  # recorded as absolute paths: later commands run from anywhere


class RunConfigError(ValueError):
    """A command contradicts the run it reads, or the run's record is unreadable."""


class RunConfigExit(GuardExit):  # same exit as the other bundle guards: status 1, one line, no traceback
    """:class:`RunConfigError` for bundle runs."""


def _plain(value: Any) -> Any:
    """``value`` as JSON data (tuples become lists, paths strings): what is recorded and compared."""
    return json.loads(json.dumps(value, default=str))


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """``"#unet#features"``-style path of the first place where ``a`` and ``b`` differ ('' at the top)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                return _first_difference(a.get(key, _MISSING), b.get(key, _MISSING), f"{path}#{key}")
    return path


_MISSING = object()


def _top_level_ids(overrides: Mapping[str, Any] | None) -> set[str]:
    return {ReferenceResolver.split_id(key)[0] for key in overrides or {}}


def read_run_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a ``run_config.json`` (JSON only: nothing in it is ever executed)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunConfigError(
            f"{path}: the run's record is unreadable ({err}); best.pt and last.pt keep a copy (pass --ckpt_path), "
            "or delete the file and pass the training overrides again"
        ) from None
    _check_record(record, path)
    return record


def _check_record(record: Any, source: Path | str) -> None:
    if not isinstance(record, dict) or record.get("format") != RUN_CONFIG_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise RunConfigError(f"{source}: not a medmtl run record (format {found!r}, expected {RUN_CONFIG_FORMAT!r})")
    settings = record.get("settings")
    if not isinstance(settings, dict) or not all(isinstance(settings.get(k), dict) for k in ("model", "data")):
        raise RunConfigError(f"{source}: the run record has no settings.model / settings.data tables")


def _record_in_checkpoint(path: Path) -> dict[str, Any] | None:
    record = read_run_config(path)
    if record is not None:
        _check_record(record, f"{path} ({RUN_CONFIG_KEY})")
    return record


@dataclass(frozen=True)
class RunRecord:
    """The record of the run a command continues or reads (or none), and the command's explicit overrides.

    Args:
        record: the recorded run configuration, ``None`` when the run has none (new or older run).
        source: where it was read (named in messages).
        explicit: the command's ``--key value`` overrides (``None``: not known, e.g. a script
            building the config itself; then the record's model settings win and the data
            settings the script gives are used).
        purpose: what the command does with the run ("resume", "evaluation/inference"), for messages.
    """

    record: dict[str, Any] | None = None
    source: str = ""
    explicit: Mapping[str, Any] | None = None
    purpose: str = "this command"

    @classmethod
    def for_training(
        cls, output_dir: str | os.PathLike, resume: bool = True, argv: Sequence[str] | None = None
    ) -> RunRecord:
        """The record of the run being resumed in ``output_dir`` (none for a new run or ``resume=False``)."""
        explicit = cli_overrides(argv)
        path = Path(output_dir) / RUN_CONFIG_FILE
        if not resume or not path.is_file():
            return cls(explicit=explicit, purpose="training")
        return cls(read_run_config_file(path), str(path), explicit, purpose="resuming")

    @classmethod
    def for_checkpoint(
        cls,
        ckpt_path: str | os.PathLike,
        output_dir: str | os.PathLike | None = None,
        argv: Sequence[str] | None = None,
    ) -> RunRecord:
        """The record the weights in ``ckpt_path`` were trained with.

        The checkpoint's own copy first (it belongs to those weights), then ``run_config.json`` of
        the run folder holding the checkpoint (``RUN/models/best.pt`` -> ``RUN``) or of
        ``output_dir``. A missing or damaged checkpoint is left to the start checks, which name it.
        """
        explicit = cli_overrides(argv)
        ckpt = Path(ckpt_path)
        if ckpt.is_file():
            try:
                record = _record_in_checkpoint(ckpt)
            except CheckpointError:
                record = None  # check_bundle_start reports the damaged checkpoint in its own words
            if record is not None:
                return cls(record, str(ckpt), explicit, purpose="evaluation/inference")
        candidates = [ckpt.parent.parent / RUN_CONFIG_FILE] if ckpt.parent.name == "models" else []
        if output_dir is not None:
            candidates.append(Path(output_dir) / RUN_CONFIG_FILE)
        for path in candidates:
            if path.is_file():
                return cls(read_run_config_file(path), str(path), explicit, purpose="evaluation/inference")
        return cls(explicit=explicit, purpose="evaluation/inference")

    def settings(self, model: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        """The values this command uses: the run's where it has a record, else the command's own.

        Args:
            model: this command's model settings (``{name: value}``; names are top-level config ids).
            data: this command's data settings.

        Raises:
            RunConfigExit: an explicit override contradicts a recorded model setting (all listed).
        """
        configured_model, configured_data = _plain(dict(model)), _plain(dict(data))
        if self.record is None:
            return {**configured_model, **_absolute_data(configured_data)}
        recorded_model = self.record["settings"]["model"]
        recorded_data = self.record["settings"]["data"]
        explicit = _top_level_ids(self.explicit)
        problems, used = [], {}
        for key, value in configured_model.items():
            if key not in recorded_model:  # a setting newer than the run: the command's value
                used[key] = value
                continue
            recorded = recorded_model[key]
            if key in explicit and value != recorded:
                where = _first_difference(recorded, value)
                shown = (
                    f"{key}{where}={_at(recorded, where)!r}; this command gives {_at(value, where)!r}"
                    if where
                    else f"{key}={recorded!r}; this command gives --{key} {value!r}"
                )
                problems.append(
                    f"--{key}: the run was trained with {shown} (recorded in {self.source}). Leave --{key} out "
                    "to use the run's value, or train a new run with another --output_dir"
                )
            used[key] = recorded
        for key, value in configured_data.items():
            # unknown overrides (a script building the config itself): the data it gives is taken as meant
            given = self.explicit is None or key in explicit
            used[key] = value if given or key not in recorded_data else recorded_data[key]
        if problems:
            raise RunConfigExit(RunConfigError("\n".join(problems))) from None
        changed = sorted(k for k in configured_model if k in recorded_model and configured_model[k] != used[k])
        if changed:
            logger.info("using the run's own %s from %s", ", ".join(changed), self.source)
        return {**used, **_absolute_data({k: used[k] for k in configured_data})}

    def check_tasks(self, tasks: Sequence[Any]) -> None:
        """Refuse a data spec whose tasks differ from the run's (names, kinds, classes): one line."""
        if self.record is None or "tasks" not in self.record:
            return
        here = [_task_summary(t) for t in tasks]
        there = [_task_summary(t) for t in self.record["tasks"]]
        if here != there:
            raise RunConfigExit(
                RunConfigError(
                    f"the data spec's tasks {_tasks_text(here)} differ from those {self.source} was trained "
                    f"with {_tasks_text(there)}: use the run's data spec (leave --data_spec and --spec_overrides out)"
                )
            ) from None

    def check_network(self, network: Any) -> None:
        """Refuse a network whose parameter names and shapes differ from the recorded one (before loading)."""
        recorded = (self.record or {}).get("network", {}).get("fingerprint")
        if not recorded:
            return
        built = network_fingerprint(network)
        if built["fingerprint"] != recorded:
            from medmtl.networks.layouts import layout_change_from_record

            why = layout_change_from_record(self.record["network"], network, self.record.get("versions") or {})
            why = why or "a setting outside the run record changed (medmtl version or the bundle's network definition)"
            raise RunConfigExit(
                RunConfigError(
                    f"the network built here ({built['class']}, {built['parameters']:,} parameters) is not the one "
                    f"{self.source} was trained with ({self.record['network'].get('class')}, "
                    f"{self.record['network'].get('parameters', 0):,} parameters): {why}"
                )
            ) from None


def _at(value: Any, where: str) -> Any:
    for key in [k for k in where.split("#") if k]:
        value = value.get(key, None) if isinstance(value, dict) else None
    return value


def _absolute_data(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key in DATA_PATH_SETTINGS:
        if isinstance(out.get(key), str):  # the spec may ship with medmtl; the dataset is the user's
            out[key] = os.path.abspath(resolve_resource(out[key]) if key == "data_spec" else out[key])
    return out


def _task_summary(task: Any) -> tuple[str, str, tuple[str, ...]]:
    if not isinstance(task, Mapping):
        task = task.model_dump(mode="json")
    return (str(task.get("name")), str(task.get("kind")), tuple(str(c) for c in task.get("classes") or ()))


def _tasks_text(tasks: Sequence[tuple[str, str, tuple[str, ...]]]) -> str:
    return "[" + ", ".join(f"{name} ({kind})" for name, kind, _ in tasks) + "]"


def network_fingerprint(network: Any) -> dict[str, Any]:
    """Class, parameter count, a sha256 of the state dict's names and shapes (not values), and backbone layouts.

    ``layouts`` (only for networks with a backbone whose layout changed, :mod:`medmtl.networks.layouts`)
    lets a later medmtl say why an older run's weights no longer fit.
    """
    from medmtl.networks.layouts import network_layouts

    module = getattr(network, "module", network)  # DDP wraps the network in .module (public attribute)
    state = module.state_dict()
    text = "\n".join(f"{name}:{tuple(tensor.shape)}" for name, tensor in sorted(state.items()))
    out = {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "fingerprint": hashlib.sha256(text.encode()).hexdigest(),
    }
    layouts = network_layouts(module)
    if layouts:
        out["layouts"] = layouts
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import medmtl

    # medmtl's own version from the package (written once there), not an editable install's stale metadata
    out = {"python": platform.python_version(), "medmtl": medmtl.__version__}
    for name in ("monai", "torch", "pytorch-ignite", "mlflow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _config_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config overrides of a command, without MONAI's own arguments (config_file, meta_file, tracking, ...)."""
    own = monai_run_arguments()
    return {k: v for k, v in (overrides or {}).items() if k not in own}


def _merged_config(overrides: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The bundle configuration as MONAI merged it (files in order, then the overrides), unevaluated."""
    config_file = (overrides or {}).get("config_file")
    if not config_file:
        return None
    try:
        parser = ConfigParser(ConfigParser.load_config_files(config_file))
    except (OSError, ValueError) as err:  # moved since MONAI read it: the record keeps the file names only
        logger.warning("run record: could not re-read the config files %s (%s)", config_file, err)
        return None
    parser.update(_config_overrides(overrides))
    return _plain(parser.get())


def build_run_config(
    settings: Mapping[str, Any],
    *,
    model_settings: Sequence[str],
    tasks: Sequence[Any],
    network: Any,
    training: Mapping[str, Any] | None = None,
    bundle_root: str | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The record a training run writes (see the module docstring); JSON data only.

    Args:
        settings: the effective settings (``@settings``).
        model_settings: which of them define the model (``@model_settings`` keys); the rest are data.
        tasks: the tasks trained (``@tasks``).
        network: the network built from the settings (its class, size and parameter fingerprint).
        training: training parameters (the bundle's ``@mlflow_params``).
        bundle_root: the bundle the run came from.
        argv: the command line (default ``sys.argv``).
    """
    settings = _plain(dict(settings))
    overrides = cli_overrides(argv)
    model_keys = set(model_settings)
    return {
        "format": RUN_CONFIG_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": os.path.basename(os.path.normpath(bundle_root)) if bundle_root else None,
        "settings": {
            "model": {k: v for k, v in settings.items() if k in model_keys},
            "data": {k: v for k, v in settings.items() if k not in model_keys},
        },
        "tasks": [t if isinstance(t, Mapping) else t.model_dump(mode="json") for t in tasks],
        "network": network_fingerprint(network),
        "training": _plain(dict(training or {})),
        "overrides": _plain(_config_overrides(overrides)),
        "config_files": _plain((overrides or {}).get("config_file")),
        "config": _merged_config(overrides),
        "versions": _versions(),
    }


def write_run_config(output_dir: str | os.PathLike, run_config: Mapping[str, Any], resume: bool = True) -> Path:
    """Write ``<output_dir>/run_config.json`` atomically; a resumed run keeps the record it started with."""
    path = Path(output_dir) / RUN_CONFIG_FILE
    if resume and path.is_file():
        return path
    return atomic_write(path, json.dumps(run_config, indent=2, sort_keys=False) + "\n")
