"""From a trained run to use: predicting new images (``medmtl predict``), rebuilding a run's network,
exporting it and running exported files.

Why a package of its own: training, evaluation and inference run inside MONAI bundles; deployment
runs outside them (onnxruntime, ``torch.export`` programs) and needs only the run folder or the
exported file. Names are imported on first use (PEP 562): ``import medmtl.deploy.inputs`` (read by
every bundle) and ``medmtl predict`` stay light, and ``from medmtl.deploy import load_exported`` works.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "EXPORTED_FORMAT": "exported",
    "METADATA_KEY": "exported",
    "ExportedInputError": "exported",
    "ExportedModel": "exported",
    "load_exported": "exported",
    "read_export_metadata": "exported",
    "ExportedNetwork": "exported_run",
    "ExportedRun": "exported_run",
    "ExportedRunError": "exported_run",
    "exported_run_folder": "exported_run",
    "EXPORT_FORMATS": "export",
    "PARITY_TOLERANCE": "export",
    "ExportError": "export",
    "ExportReport": "export",
    "InputLayout": "export",
    "TaskOutputs": "export",
    "build_metadata": "export",
    "capture_program": "export",
    "export_network": "export",
    "export_run": "export",
    "input_layout": "export",
    "RunNetwork": "run_network",
    "RunNetworkError": "run_network",
    "load_run_network": "run_network",
    "record_digest": "run_network",
    "recorded_config": "run_network",
    "PredictError": "predict",
    "PredictResult": "predict",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'medmtl.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medmtl.deploy.{home}"), name)
