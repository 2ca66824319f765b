"""Run an exported medmtl network (ONNX, torch.export or TorchScript) on numpy arrays, by task name.

Why: ``medmtl predict`` (and any deployment script) should not care which format a model was
exported to. :func:`load_exported` reads the description stored inside the file (JSON only: the
ONNX ``metadata_props`` entry, or the ``extra/medmtl.json`` member of the torch archives, read
with :mod:`zipfile` without loading the program) and wraps onnxruntime, ``torch.export.load`` or
``torch.jit.load`` behind one call: ``model(array) -> {task: logits}``. Inputs are checked against
the description first, so a wrong channel count or dimension gets one clear message instead of a
runtime's shape error.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.tasks import Task, as_tasks

__all__ = [
    "EXPORTED_FORMAT",
    "METADATA_KEY",
    "ExportedInputError",
    "ExportedModel",
    "exported_tasks",
    "load_exported",
    "read_export_metadata",
]

EXPORTED_FORMAT = "medmtl.exported/1"  # the "format" of the description inside every exported file
METADATA_KEY = "medmtl"  # ONNX metadata_props key; the torch archives hold it as the extra file "medmtl.json"
EXTRA_FILE = f"{METADATA_KEY}.json"


class ExportedInputError(ValueError):
    """An input does not fit the exported network: the message says what was expected."""


def _zip_metadata(path: Path) -> dict[str, Any] | None:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{EXTRA_FILE}")]
        return json.loads(archive.read(names[0]).decode("utf-8")) if names else None


def _onnx_metadata(path: Path) -> dict[str, Any] | None:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's decode errors: not an ONNX file
        return None
    entries = {p.key: p.value for p in proto.metadata_props}
    return json.loads(entries[METADATA_KEY]) if METADATA_KEY in entries else None


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The description inside an exported file (JSON; nothing in the file is run).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a file written by ``medmtl export``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model file")
    try:
        metadata = _zip_metadata(path) if zipfile.is_zipfile(path) else _onnx_metadata(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: unreadable exported model ({err}); export it again with medmtl export") from None
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORTED_FORMAT:
        raise ValueError(
            f"{path} is not a model exported by medmtl (no {EXPORTED_FORMAT} description inside); "
            "export the run with: medmtl export RUN --format onnx -o model.onnx"
        )
    return metadata


def _runner(path: Path, export_format: str, names: list[str], outputs: list[str], threads: int | None) -> Callable:
    """``run({input name: float32 array}) -> list of output arrays`` for the file's format."""
    if export_format == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feed: session.run(outputs, feed)
    import torch

    if export_format == "torch-export":
        module = torch.export.load(str(path)).module()

        def run_program(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            x = {k: torch.from_numpy(v) for k, v in feed.items()}
            with torch.no_grad():
                out = module(x[names[0]] if len(names) == 1 else x)
            return [t.numpy() for t in out]

        return run_program
    if export_format == "torchscript":
        scripted = torch.jit.load(str(path), map_location="cpu")

        def run_script(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            x = {k: torch.from_numpy(v) for k, v in feed.items()}
            with torch.no_grad():
                out = scripted(x[names[0]] if len(names) == 1 else x)
            return [out[name].numpy() for name in outputs]

        return run_script
    raise ValueError(f"{path}: unknown export format {export_format!r} in its description")


@dataclass
class ExportedModel:
    """An exported network: ``model(x) -> {task: logits}`` (numpy, float32).

    Attributes:
        path: the file.
        metadata: its description (``medmtl.deploy.export.build_metadata``).
        tasks: the tasks, in output order.
        export_format: ``onnx``, ``torch-export`` or ``torchscript``.
    """

    path: Path
    metadata: dict[str, Any]
    tasks: tuple[Task, ...]
    export_format: str
    _run: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]

    @property
    def input_names(self) -> list[str]:
        return list(self.metadata["input"]["names"])

    def _expected(self) -> str:
        spec = self.metadata["input"]
        spatial = ", ".join(str(s) for s in spec["spatial_size"])
        return f"(B, {spec['channels']}, {spatial})"

    def _check(self, inputs: Any) -> dict[str, np.ndarray]:
        spec, names = self.metadata["input"], self.input_names
        if not isinstance(inputs, Mapping):
            if len(names) != 1:
                raise ExportedInputError(f"{self.path.name} takes the inputs {names}: pass {{name: array}}")
            inputs = {names[0]: inputs}
        if sorted(inputs) != sorted(names):
            raise ExportedInputError(f"{self.path.name} takes the inputs {names}, got {sorted(inputs)}")
        feed, problems, batches = {}, [], set()
        dims, channels = int(spec["spatial_dims"]), int(spec["channels"])
        for name in names:
            array = np.ascontiguousarray(inputs[name], dtype=np.float32)
            shape = list(array.shape)
            where = f"input '{name}' of {self.path.name}" if len(names) > 1 else f"the input of {self.path.name}"
            if array.ndim != dims + 2:
                problems.append(
                    f"{where} must have {dims + 2} dims (B, C, {dims} spatial) like {self._expected()}, got shape {shape}"
                )
            elif shape[1] != channels:
                problems.append(f"{where} must have {channels} channel(s) like {self._expected()}, got shape {shape}")
            elif not spec["dynamic_spatial"] and shape[2:] != list(spec["spatial_size"]):
                problems.append(
                    f"{where} has a fixed spatial size {list(spec['spatial_size'])} (image-level network), "
                    f"got {shape[2:]}: resize it as the run's preprocessing does"
                )
            elif spec["dynamic_spatial"] and any(s % int(spec["spatial_multiple"]) for s in shape[2:]):
                problems.append(
                    f"{where} needs spatial sizes that are multiples of {spec['spatial_multiple']}, got {shape[2:]}: "
                    "pad or resize it"
                )
            batches.add(shape[0] if shape else None)
            feed[name] = array
        if len(batches) > 1:
            problems.append(f"the inputs of {self.path.name} must share one batch size, got {sorted(batches)}")
        if problems:
            raise ExportedInputError("; ".join(problems))
        return feed

    def __call__(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Logits per task for ``inputs``: one ``(B, C, *spatial)`` array, or ``{input name: array}``.

        Raises:
            ExportedInputError: wrong number of dims, channels, spatial size or input names.
        """
        outputs = self._run(self._check(inputs))
        return {t.name: np.asarray(o) for t, o in zip(self.tasks, outputs, strict=True)}


def exported_tasks(metadata: Mapping[str, Any], path: str | os.PathLike) -> tuple[Task, ...]:
    """The tasks of an exported file's description, in output order."""
    return as_tasks(
        [{k: v for k, v in t.items() if k in ("name", "kind", "classes")} for t in metadata["tasks"]],
        owner=str(path),
    )


def load_exported(path: str | os.PathLike, *, threads: int | None = None) -> ExportedModel:
    """Load a file written by ``medmtl export`` (any of the three formats).

    Args:
        path: the exported file.
        threads: onnxruntime's intra-op threads (default: its own choice); torch formats use torch's.

    Raises:
        FileNotFoundError / ValueError: no such file, or not a medmtl export (see :func:`read_export_metadata`).
    """
    path = Path(path)
    metadata = read_export_metadata(path)
    tasks = exported_tasks(metadata, path)
    export_format = str(metadata.get("export_format"))
    run = _runner(path, export_format, list(metadata["input"]["names"]), list(metadata["outputs"]), threads)
    return ExportedModel(path, metadata, tasks, export_format, run)
