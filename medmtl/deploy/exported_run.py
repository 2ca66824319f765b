"""An exported file as a run folder: ``medmtl predict -m model.onnx`` with nothing but the file.

Why: a hospital gets the exported file only. Besides the program, predict needs what the run's
inference uses: its record (settings, tasks, merged configuration), the data spec it trained with
(input, preprocessing) and the choices its inference applies (a cross-validation's decisions,
temperatures and postprocessing). ``medmtl export`` writes them into the file's description
(:func:`deploy_entry`, JSON only: nothing in it is executed on read);
:func:`exported_run_folder` writes them back as a run folder, the way an MLflow model becomes one
(:func:`medmtl.tracking.model_files.write_run_folder`), and the bundle's inference runs there with
:class:`ExportedNetwork` as its ``network`` (:meth:`ExportedRun.overrides`). So preprocessing,
sliding window, test-time mirroring, decisions and writers are those of the run; only the network
is the exported program.

The bundle's checks hold as for any run: ``network_def`` is still built from the record and compared
with its fingerprint, and the checkpoint loader loads the run folder's ``models/best.pt`` into the
network: the state of :class:`ExportedNetwork`, which is empty (the weights are inside the exported
file), so that checkpoint is ``{"network": {}}``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmtl.data.tasks import Task
from medmtl.deploy.exported import exported_tasks, load_exported, read_export_metadata

__all__ = [
    "DEPLOY_KEY",
    "EXPORTED_FILE",
    "ExportedNetwork",
    "ExportedRun",
    "ExportedRunError",
    "deploy_entry",
    "exported_run_folder",
    "tasks_text",
]

#: key of the description holding what predict needs besides the program.
DEPLOY_KEY = "deploy"
#: the exported file inside the run folder's ``models/`` (linked, else copied), with its format's suffix
#: (torch.export.load wants ``.pt2``): the network's expression names it, never the user's path (a path
#: holding ``@`` or ``%`` would read as a config reference).
EXPORTED_FILE = "exported_model"
_FORMAT_SUFFIX = {"onnx": "onnx", "torch-export": "pt2", "torchscript": "ts"}


class ExportedRunError(ValueError):
    """An exported file predict cannot run: the message names the file and the fix."""


class ExportedNetwork(nn.Module):
    """A file written by ``medmtl export`` as a bundle's network: ``forward(x) -> {task: logits}``.

    The program runs on the CPU (onnxruntime, or the torch program); the outputs go back to the
    input's device. The module has no parameters and an empty state dict: the weights are inside
    the file. No saliency maps and no MC dropout (the program has only the task outputs, in eval mode).

    Args:
        path: the exported file.
        threads: onnxruntime's intra-op threads (default: its own choice).

    Example::

        net = ExportedNetwork("demo.onnx")
        net(torch.rand(2, 1, 48, 48))  # {"lesion": (2, 2, 48, 48), "malignant": (2, 1)}
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        self.exported = load_exported(path, threads=threads)

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self.exported.tasks

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, *spatial)`` -> ``{task: (B, outputs[, *spatial])}`` float32 logits on ``x``'s device."""
        array = x.detach().to("cpu", torch.float32).numpy()
        return {name: torch.from_numpy(out).to(x.device) for name, out in self.exported(array).items()}


@dataclass(frozen=True)
class ExportedRun:
    """The run folder written for an exported file.

    Attributes:
        model: the exported file.
        folder: the run folder (record, spec copy, choice files, the file linked as ``models/exported_model.*``).
        bundle: the bundle the run trained with.
        tasks: the exported tasks, in output order.
        program: the exported file as linked (else copied) into the run folder, with its format's suffix.
        choices: the choice files the run's inference applies, by bundle key (``decisions_path``...).
    """

    model: Path
    folder: Path
    bundle: str
    tasks: tuple[Task, ...]
    program: Path
    choices: dict[str, Path] = field(default_factory=dict)

    def overrides(self) -> list[str]:
        """The bundle overrides running the inference with the exported program and the run's choices."""
        network = f"$medmtl.deploy.ExportedNetwork(os.path.join(@output_dir, 'models', '{self.program.name}'))"
        out = ["--network", network]
        for key, path in self.choices.items():
            out += [f"--{key}", str(path)]
        return out


def tasks_text(tasks: Any) -> str:
    """``[lesion (segmentation), malignant (binary)]``: tasks as messages name them."""
    return "[" + ", ".join(f"{t.name} ({t.kind.value})" for t in tasks) + "]"


def _choice_files() -> dict[str, str]:
    """``{bundle key: file name}`` of the choices an inference may apply (``decisions_path``: ``decisions.json``...)."""
    from medmtl.experiments.cv_report import CHOICE_FILES

    return {key.lstrip("-"): name for key, name in CHOICE_FILES.items()}


def _inference_choices(run_dir: Path) -> dict[str, Path]:
    """The choice files ``medmtl run BUNDLE inference --output_dir RUN`` applies, by bundle key: a
    cross-validation's out-of-fold choices (as :func:`~medmtl.experiments.cross_validation.ensemble_overrides`
    gives them); none for a single training run (its inference applies none)."""
    from medmtl.experiments.cross_validation import is_cv_run

    if not is_cv_run(run_dir):
        return {}
    return {key: run_dir / name for key, name in _choice_files().items() if (run_dir / name).is_file()}


def deploy_entry(record: Mapping[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """What an exported file carries for predict (JSON): the run record, the spec's text, the applied choices.

    Args:
        record: the run record the network was rebuilt from.
        run_dir: the run or cross-validation folder exported.

    Raises:
        ExportedRunError: the recorded spec is not on this machine, or a choice file is not JSON.
    """
    from medmtl.json_file import read_json

    spec = Path(str(record["settings"]["data"].get("data_spec") or ""))
    if not spec.is_file():
        raise ExportedRunError(
            f"{run_dir}: the data spec the run trained with ({spec or 'not recorded'}) is not on this machine; the "
            "exported file carries it for medmtl predict: export where the training ran"
        )
    choices = {}
    for key, path in _inference_choices(Path(run_dir)).items():
        content = read_json(path, ExportedRunError, "run medmtl cv again to write it")
        choices[key] = {"file": path.name, "content": content}
    return {
        "record": dict(record),
        "spec": {"name": spec.name, "text": spec.read_text(encoding="utf-8")},
        "choices": choices,
    }


def _export_again(path: Path, metadata: Mapping[str, Any]) -> str:
    fmt = str(metadata.get("export_format", "onnx"))
    return f"export the run again: medmtl export RUN --format {fmt} -o model.{_FORMAT_SUFFIX.get(fmt, 'onnx')}"


def _entry(path: Path, metadata: Mapping[str, Any]) -> tuple[dict[str, Any], str, str, dict[str, Any]]:
    """(record, spec name, spec text, choices) of the description, checked; nothing in it is run."""
    from medmtl.bundle_layers import available_bundles
    from medmtl.deploy.run_network import record_digest

    entry = metadata.get(DEPLOY_KEY)
    if not isinstance(entry, Mapping):
        raise ExportedRunError(
            f"{path} carries no run record and data spec (exported by an older medmtl), so predict cannot rebuild "
            f"its preprocessing; {_export_again(path, metadata)}"
        )
    record, spec, choices = entry.get("record"), entry.get("spec"), entry.get("choices") or {}
    names = _choice_files()  # a key becomes a bundle override, a file a file of the run folder: only these
    ok = (
        isinstance(record, dict)
        and isinstance(record.get("settings"), dict)
        and isinstance(record["settings"].get("data"), dict)
        and isinstance(spec, Mapping)
        and isinstance(spec.get("name"), str)
        and isinstance(spec.get("text"), str)
        and isinstance(choices, Mapping)
        and all(k in names and isinstance(v, Mapping) and v.get("file") == names[k] for k, v in choices.items())
    )
    if not ok:
        raise ExportedRunError(f"{path}: its '{DEPLOY_KEY}' description is malformed; {_export_again(path, metadata)}")
    if record_digest(record) != metadata.get("run", {}).get("record_sha256"):
        raise ExportedRunError(
            f"{path}: the run record inside is not the one the program was exported from (its digest differs); "
            f"{_export_again(path, metadata)}"
        )
    bundle = record.get("bundle")
    if bundle not in available_bundles():
        raise ExportedRunError(
            f"{path} was trained with the bundle {bundle!r}, which this medmtl does not ship "
            f"({', '.join(available_bundles())}): install the medmtl it was trained with"
        )
    return record, str(spec["name"]), str(spec["text"]), dict(choices)


def exported_run_folder(path: str | os.PathLike, dst: str | os.PathLike) -> ExportedRun:
    """Write the run folder of the exported file ``path`` into ``dst`` (new or empty).

    Raises:
        ExportedRunError: not a medmtl export, an export without the record and spec (exported
            before files carried them: export again, the command is named), or a description
            that does not belong to its program.
    """
    from medmtl.tracking.model_files import WEIGHTS, ModelFilesError, write_run_folder

    path = Path(path)
    try:
        metadata = read_export_metadata(path)
    except (FileNotFoundError, ValueError) as err:
        raise ExportedRunError(str(err)) from None
    record, spec_name, spec_text, choices = _entry(path, metadata)
    files = {c["file"]: (json.dumps(c["content"], indent=2) + "\n").encode() for c in choices.values()}
    try:
        folder = write_run_folder(
            dst, record, spec_name, spec_text.encode("utf-8"), lambda p: torch.save({"network": {}}, p), files
        )
    except ModelFilesError as err:
        raise ExportedRunError(f"{path}: {err}") from None
    linked = (
        folder / WEIGHTS.parent / f"{EXPORTED_FILE}.{_FORMAT_SUFFIX.get(str(metadata.get('export_format')), 'bin')}"
    )
    try:
        os.symlink(path.resolve(), linked)
    except OSError:  # no links here (some Windows setups): a copy
        shutil.copy2(path, linked)
    tasks = exported_tasks(metadata, path)
    return ExportedRun(
        model=path,
        folder=folder,
        bundle=str(record["bundle"]),
        tasks=tasks,
        program=linked,
        choices={key: folder / c["file"] for key, c in choices.items()},
    )
