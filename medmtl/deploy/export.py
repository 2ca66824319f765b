"""Export a trained network to ONNX, torch.export or TorchScript, with its description inside the file.

Why: a hospital deployment runs the model without medmtl's training stack (onnxruntime, or a
``torch.export`` program) and must still know what the outputs mean. Each file holds, next to the
program, a JSON description (:func:`build_metadata`): the tasks in output order (name, kind,
classes), the inputs (names, channels, spatial size, which axes are dynamic), the run's recorded
settings (preprocessing), its decision thresholds and temperatures when the run folder has them,
the medmtl version and a digest of the run record; for a run exported with :func:`export_run`, also
the run record itself, the data spec's text and the choice files its inference applies, so
``medmtl predict -m FILE`` needs nothing else (:mod:`medmtl.deploy.exported_run`). The exported file is checked against PyTorch
before it is put in place (:data:`PARITY_TOLERANCE`, on a second spatial size where the spatial
axes are dynamic); a file that fails is never left behind.

Dynamic axes: the batch always; the spatial axes for networks with a segmentation task (fully
convolutional), in steps of the network's total downsampling factor (a U-Net with four
poolings takes multiples of 16); image-level-only networks keep the spatial size they were
trained at, which the metadata says (``input.dynamic_spatial``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medmtl.atomic_io import atomic_write_with
from medmtl.data.tasks import Task, as_tasks
from medmtl.deploy.exported import EXPORTED_FORMAT, EXTRA_FILE, METADATA_KEY, load_exported

if TYPE_CHECKING:
    from medmtl.networks.backbones import Backbone

logger = logging.getLogger(__name__)

__all__ = [
    "EXPORT_FORMATS",
    "EXPORTED_FORMAT",
    "METADATA_KEY",
    "PARITY_TOLERANCE",
    "ExportError",
    "ExportReport",
    "InputLayout",
    "TaskOutputs",
    "build_metadata",
    "capture_program",
    "export_network",
    "export_run",
    "input_layout",
]

EXPORT_FORMATS = ("onnx", "torch-export", "torchscript")
PARITY_TOLERANCE = 1e-4  # max |exported - PyTorch| per output, fp32
_PROBE_SIZE = 64  # spatial size at which the downsampling factor is measured


class ExportError(ValueError):
    """The network cannot be exported or the exported file does not match PyTorch: nothing was written."""


class TaskOutputs(nn.Module):
    """``{task: logits}`` as a tuple in task order: export formats name their outputs by position."""

    def __init__(self, network: nn.Module, task_names: Sequence[str]) -> None:
        super().__init__()
        self.network = network
        self.task_names = list(task_names)

    def forward(self, x: Any) -> tuple[torch.Tensor, ...]:
        out = self.network(x)
        return tuple(out[name] for name in self.task_names)


@dataclass(frozen=True)
class InputLayout:
    """What the exported network takes: one ``(B, channels, *spatial_size)`` array per name.

    Attributes:
        names: input names (the bundle's input keys).
        channels: channels of each input.
        spatial_size: the size the network was trained at.
        multiple: spatial sizes must be multiples of this when ``dynamic_spatial``.
        dynamic_spatial: whether other spatial sizes are accepted.
    """

    names: tuple[str, ...]
    channels: int
    spatial_size: tuple[int, ...]
    multiple: int = 1
    dynamic_spatial: bool = False

    def second_size(self) -> tuple[int, ...]:
        """Another accepted spatial size (the parity check runs there too)."""
        return tuple(s + self.multiple for s in self.spatial_size) if self.dynamic_spatial else self.spatial_size

    def example(self, batch: int, spatial: Sequence[int], seed: int) -> torch.Tensor | dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        arrays = {n: torch.rand(batch, self.channels, *spatial, generator=generator) for n in self.names}
        return arrays[self.names[0]] if len(self.names) == 1 else arrays


def _backbones(network: nn.Module) -> list[Backbone]:
    """The backbones ``network`` lists; none for a network that lists none.

    A network that is not a medmtl one (a custom module returning ``{task: logits}``) may be
    exported too; its downsampling is unknown, so it keeps the spatial size it was trained at.
    """
    from medmtl.networks.backbone_holders import prefixed_backbones

    return list(prefixed_backbones("", network).values())


def _downsampling(backbone: Backbone, spatial_dims: int) -> int:
    """Total downsampling factor of ``backbone``'s encoder, measured on a small input."""
    size = max(_PROBE_SIZE, int(backbone.size_divisor))
    with torch.no_grad():
        feats = backbone.encode_features(torch.zeros(1, int(backbone.in_channels), *[size] * spatial_dims))
    smallest = min(int(f.shape[-1]) for f in feats)
    return math.lcm(max(1, size // max(smallest, 1)), int(backbone.size_divisor))


def input_layout(
    network: nn.Module,
    tasks: Sequence[Task | Mapping[str, Any]],
    input_keys: Sequence[str],
    spatial_size: Sequence[int],
) -> InputLayout:
    """The :class:`InputLayout` of a medmtl network trained at ``spatial_size``.

    Raises:
        ExportError: the network's channels / dimensions cannot be told, or ``spatial_size`` does
            not match them.
    """
    from medmtl.networks import FoldEnsemble, MultiPlaneNet

    core = network.members[0] if isinstance(network, FoldEnsemble) else network
    tasks = as_tasks(tasks, owner="export")
    spatial_size = tuple(int(s) for s in spatial_size)
    if isinstance(core, MultiPlaneNet):  # one (B, 1, slices, H, W) stack per view
        channels, spatial_dims = 1, len(spatial_size)
    elif hasattr(core, "in_channels") and hasattr(core, "spatial_dims"):
        channels, spatial_dims = int(core.in_channels), int(core.spatial_dims)
    else:
        raise ExportError(f"cannot tell the input channels of {type(core).__name__}; it has no in_channels")
    if len(spatial_size) != spatial_dims:
        raise ExportError(
            f"the run's spatial_size {list(spatial_size)} has {len(spatial_size)} dims; "
            f"{type(core).__name__} takes {spatial_dims}"
        )
    dense = any(t.is_dense for t in tasks)
    backbones = _backbones(core) if dense else []
    multiple = math.lcm(1, *[_downsampling(b, spatial_dims) for b in backbones]) if backbones else 1
    return InputLayout(tuple(input_keys), channels, spatial_size, multiple, dynamic_spatial=bool(backbones))


def _version() -> str:
    import medmtl

    return medmtl.__version__


def build_metadata(
    tasks: Sequence[Task], layout: InputLayout, export_format: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON description stored inside an exported file (see the module docstring)."""
    spatial_note = (
        f"any spatial size that is a multiple of {layout.multiple}"
        if layout.dynamic_spatial
        else "the spatial size is fixed to the training size"
    )
    return {
        "format": EXPORTED_FORMAT,
        "export_format": export_format,
        "medmtl_version": _version(),
        "torch_version": torch.__version__,
        "tasks": [
            {
                "name": t.name,
                "kind": t.kind.value,
                "classes": list(t.classes) if t.classes else None,
                "outputs": t.num_outputs,
            }
            for t in tasks
        ],
        "outputs": [t.name for t in tasks],
        "input": {
            "names": list(layout.names),
            "channels": layout.channels,
            "spatial_dims": len(layout.spatial_size),
            "spatial_size": list(layout.spatial_size),
            "dynamic_batch": True,
            "dynamic_spatial": layout.dynamic_spatial,
            "spatial_multiple": layout.multiple,
            "note": f"(B, {layout.channels}, *spatial) float32 per input, after the run's preprocessing; {spatial_note}"
            + ("" if any(t.is_dense for t in tasks) else " (image-level network)"),
        },
        **dict(extra or {}),
    }


@dataclass(frozen=True)
class ExportReport:
    """What was written: the file, its format, the sizes checked and the largest difference per output."""

    path: Path
    export_format: str
    checked_sizes: tuple[tuple[int, ...], ...]
    max_abs_difference: dict[str, float]
    metadata: dict[str, Any]


def _dynamic_shapes(layout: InputLayout) -> tuple[Any, ...]:
    auto = torch.export.Dim.AUTO
    axes = {0: auto, **({d + 2: auto for d in range(len(layout.spatial_size))} if layout.dynamic_spatial else {})}
    return (axes,) if len(layout.names) == 1 else ({name: dict(axes) for name in layout.names},)


def _export_program(wrapper: nn.Module, layout: InputLayout) -> torch.export.ExportedProgram:
    example = layout.example(2, layout.spatial_size, seed=0)
    try:
        return torch.export.export(wrapper, (example,), dynamic_shapes=_dynamic_shapes(layout))
    except Exception as err:  # noqa: BLE001 - torch raises many types; the message is what helps
        raise ExportError(f"torch.export cannot capture {type(wrapper.network).__name__}: {err}") from None


def _is_dynamic(program: torch.export.ExportedProgram, layout: InputLayout) -> bool:
    """Whether the captured program kept every spatial axis of its inputs symbolic."""
    inputs = set(program.graph_signature.user_inputs)
    shapes = [n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder" and n.name in inputs]
    return bool(shapes) and all(isinstance(d, torch.SymInt) for s in shapes for d in s[2:])


def capture_program(network: nn.Module, layout: InputLayout, task_names: Sequence[str]) -> torch.export.ExportedProgram:
    """``network`` as a ``torch.export`` program returning a tuple in task order (both ONNX and torch-export start here).

    Raises:
        ExportError: torch.export cannot capture the network.
    """
    return _export_program(TaskOutputs(network, task_names).eval(), layout)


def _capture(
    export_format: str,
    network: nn.Module,
    layout: InputLayout,
    names: Sequence[str],
    program: torch.export.ExportedProgram | None = None,
) -> tuple[Any, InputLayout]:
    """The program of ``network`` in ``export_format`` and the layout it takes (maybe no dynamic spatial axes)."""
    if export_format == "torchscript":
        try:
            return torch.jit.script(network), layout
        except Exception as err:  # noqa: BLE001 - TorchScript's compile errors
            raise ExportError(
                f"TorchScript cannot compile {type(network).__name__} ({str(err).strip().splitlines()[0]}); "
                "use --format onnx or torch-export"
            ) from None
    program = program if program is not None else capture_program(network, layout, names)
    if layout.dynamic_spatial and not _is_dynamic(program, layout):
        logger.warning("%s fixes its spatial size: exported for %s only", type(network).__name__, layout.spatial_size)
        layout = InputLayout(layout.names, layout.channels, layout.spatial_size, layout.multiple, False)
    if export_format == "torch-export":
        return program, layout
    try:
        onnx_program = torch.onnx.export(
            program, (layout.example(2, layout.spatial_size, 0),), input_names=list(layout.names),
            output_names=list(names), dynamo=True, optimize=True, verbose=False,
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - the exporter's errors
        raise ExportError(f"ONNX export of {type(network).__name__} failed: {err}") from None
    return onnx_program.model_proto, layout


def _writer(export_format: str, program: Any, metadata: Mapping[str, Any]) -> Callable[[IO[bytes]], object]:
    """Writes ``program`` with ``metadata`` inside (ONNX ``metadata_props``, else an extra file of the archive)."""
    text = json.dumps(metadata)
    if export_format == "torchscript":
        return lambda handle: torch.jit.save(program, handle, _extra_files={EXTRA_FILE: text})
    if export_format == "torch-export":
        return lambda handle: torch.export.save(program, handle, extra_files={EXTRA_FILE: text})
    del program.metadata_props[:]
    program.metadata_props.add(key=METADATA_KEY, value=text)
    return lambda handle: handle.write(program.SerializeToString())  # one file: weights inside (< 2 GB)


def _parity(
    path: Path, network: nn.Module, tasks: Sequence[Task], layout: InputLayout
) -> tuple[tuple[tuple[int, ...], ...], dict[str, float]]:
    """Largest |exported - PyTorch| per output on random inputs; raises :class:`ExportError` above the tolerance."""
    model = load_exported(path)
    sizes = tuple(dict.fromkeys([layout.spatial_size, layout.second_size()]))
    worst = {t.name: 0.0 for t in tasks}
    for index, (batch, size) in enumerate(zip((2, 1), sizes, strict=False)):
        x = layout.example(batch, size, seed=index + 1)
        with torch.no_grad():
            expected = network(x)
        got = model({k: v.numpy() for k, v in x.items()} if isinstance(x, dict) else x.numpy())
        for name in worst:
            diff = float(np.max(np.abs(got[name] - expected[name].float().numpy()), initial=0.0))
            worst[name] = max(worst[name], diff if np.isfinite(diff) else math.inf)
    bad = {k: v for k, v in worst.items() if not v <= PARITY_TOLERANCE}
    if bad:
        shown = ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())
        raise ExportError(
            f"the exported {model.export_format} file differs from PyTorch by more than {PARITY_TOLERANCE:g} "
            f"({shown}; inputs {[list(s) for s in sizes]}); nothing was written"
        )
    return sizes, worst


def export_network(
    network: nn.Module,
    tasks: Sequence[Task | Mapping[str, Any]],
    layout: InputLayout,
    export_format: str,
    path: str | os.PathLike,
    *,
    extra_metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    program: torch.export.ExportedProgram | None = None,
) -> ExportReport:
    """Export ``network`` (``{task: logits}``) to ``path`` in ``export_format`` and check it against PyTorch.

    Args:
        network: the network in eval mode.
        tasks: its tasks, in the order the outputs are named.
        layout: its inputs (:func:`input_layout`).
        export_format: one of :data:`EXPORT_FORMATS`.
        path: the file to write (atomically, after the parity check).
        extra_metadata: more JSON entries for the description (run settings, decisions, ...).
        overwrite: replace an existing ``path``.
        program: the network already captured by :func:`capture_program` (one capture for
            several formats); ignored for TorchScript.

    Raises:
        ExportError: unknown format, an existing file without ``overwrite``, a network the format
            cannot capture, or outputs that differ from PyTorch; ``path`` is then untouched.
    """
    if export_format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {export_format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give a file name (model.onnx, model.pt2, model.ts)")
    tasks = as_tasks(tasks, owner="export")
    network = network.eval()
    program, layout = _capture(export_format, network, layout, [t.name for t in tasks], program)
    metadata = build_metadata(tasks, layout, export_format, extra_metadata)
    write = _writer(export_format, program, metadata)
    result: dict[str, Any] = {}

    def check(tmp: Path) -> None:
        result["sizes"], result["worst"] = _parity(tmp, network, tasks, layout)

    atomic_write_with(path, write, suffix=path.suffix or ".tmp", before_replace=check)
    logger.info("wrote %s (%s); max |difference| to PyTorch %s", path, export_format, result["worst"])
    return ExportReport(path, export_format, result["sizes"], result["worst"], metadata)


def export_run(
    run_dir: str | os.PathLike, export_format: str, path: str | os.PathLike, *, overwrite: bool = False
) -> ExportReport:
    """Export the network of a trained run folder (or a cross-validation's fold ensemble).

    The network is rebuilt from the run's record (:func:`~medmtl.deploy.load_run_network`); the
    description holds the run's model settings, its ``decisions.json`` / ``calibration.json`` when
    the folder has them, and the run record's digest; under ``deploy``, what ``medmtl predict -m FILE``
    needs to run the bundle's inference with the file alone: the run record, the data spec's text and
    the choice files its inference applies (:func:`medmtl.deploy.exported_run.deploy_entry`).

    Raises:
        ExportError / RunNetworkError: see :func:`export_network` and :func:`~medmtl.deploy.load_run_network`.
    """
    from medmtl.deploy.exported_run import DEPLOY_KEY, deploy_entry
    from medmtl.deploy.run_network import load_run_network, record_digest
    from medmtl.metrics.calibration import read_calibration
    from medmtl.metrics.decisions import Decisions

    if export_format not in EXPORT_FORMATS:  # before the minutes a network may take to load
        raise ExportError(f"unknown export format {export_format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if Path(path).exists() and not overwrite:
        raise ExportError(f"{path} exists; pass --overwrite to replace it")
    run = load_run_network(run_dir)
    spatial_size = run.settings.get("spatial_size")
    if not spatial_size:
        raise ExportError(f"{run.run_dir}: the run records no spatial_size; the input size of the export is unknown")
    layout = input_layout(run.network, run.tasks, run.input_keys, spatial_size)
    record = run.record
    extra: dict[str, Any] = {
        "settings": record["settings"]["model"],
        "run": {
            "bundle": record.get("bundle"),
            "created": record.get("created"),
            "record_sha256": record_digest(record),
            "network": record.get("network"),
            "checkpoint": run.checkpoint.name,
            "members": run.members,
        },
    }
    if "decisions" in run.choices:
        extra["decisions"] = Decisions.load(run.choices["decisions"], run.tasks).to_json()
    if "calibration" in run.choices:
        extra["calibration"] = read_calibration(run.choices["calibration"], run.tasks).to_dict()
    extra[DEPLOY_KEY] = deploy_entry(record, run.run_dir)  # medmtl predict -m FILE: the run folder again
    return export_network(
        run.network, run.tasks, layout, export_format, path, extra_metadata=extra, overwrite=overwrite
    )
