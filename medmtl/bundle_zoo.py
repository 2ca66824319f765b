"""What the MONAI model zoo asks of a bundle beyond MONAI's bundle format, for :func:`~medmtl.bundle_layers.export_bundle`.

Why: the zoo's CI (Project-MONAI/model-zoo ``ci/verify_bundle.py``) builds ``network_def`` from
``configs/inference.json``, feeds it one ``image`` tensor and compares the output's channels with
``network_data_format.outputs.pred``; it loads ``models/model.pt`` into the same ``network_def``
and scripts it. Its contributing guide asks for ``docs/data_license.txt``. A medmtl network returns
``{task: logits}``, so an exported ``inference.json`` keeps the multi-task network as
``network_def_multitask`` (what ``network`` and the inference run use: every task is still
predicted) and names :func:`medmtl.networks.zoo.zoo_network` ``network_def``: the zoo's view of
the same weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_LICENSE",
    "MULTITASK_NETWORK_ID",
    "ZOO_NETWORK_ID",
    "data_license_text",
    "zoo_inference_config",
    "zoo_task",
]

ZOO_NETWORK_ID = "network_def"  # the id the zoo's checks build (``--net_id network_def``)
MULTITASK_NETWORK_ID = "network_def_multitask"
DATA_LICENSE = "docs/data_license.txt"

_NETWORK_REF = re.compile(r"([@%])network_def(?![A-Za-z0-9_])")
_LICENCE_WORDS = re.compile(
    r"licen[cs]e|\bCC[ -]BY|creative commons|agreement|terms of use|competition rules|no redistribution|"
    r"non-commercial|research[- ]use|public domain",
    re.IGNORECASE,
)


def zoo_task(tasks: Sequence[Any]) -> str:
    """The task the zoo's checks see (``outputs.pred``): the first segmentation task, else the first task."""
    kinds = [(_field(t, "name"), str(_field(t, "kind")).lower()) for t in tasks]
    if not kinds:
        raise ValueError("the bundle declares no task: the zoo's network_def needs one output")
    return next((name for name, kind in kinds if kind.endswith("segmentation")), kinds[0][0])


def _field(task: Any, key: str) -> Any:
    value = task.get(key) if isinstance(task, Mapping) else getattr(task, key)
    return getattr(value, "value", value)  # an enum's value ("segmentation")


def _renamed(value: Any) -> Any:
    """``value`` with every reference to ``network_def`` pointing at ``network_def_multitask``."""
    if isinstance(value, str):
        return _NETWORK_REF.sub(rf"\1{MULTITASK_NETWORK_ID}", value)
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    if isinstance(value, dict):
        return {k: _renamed(v) for k, v in value.items()}
    return value


def zoo_inference_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A whole inference config with the zoo's ``network_def`` (one tensor out) and the multi-task network beside it.

    Args:
        config: the merged inference config (``network_def`` is the multi-task network).

    Returns:
        A new config: ``network_def_multitask`` is the old ``network_def`` and every reference to
        it (``network``, the run checks, MLflow parameters) follows; ``network_def`` wraps it with
        :func:`medmtl.networks.zoo.zoo_network` (the task of :func:`zoo_task`).
    """
    if MULTITASK_NETWORK_ID in config:
        return dict(config)  # already the zoo's layout
    if ZOO_NETWORK_ID not in config:
        raise ValueError(f"the inference config has no {ZOO_NETWORK_ID!r}: nothing to wrap for the model zoo")
    out: dict[str, Any] = {}
    for key, value in config.items():
        out[MULTITASK_NETWORK_ID if key == ZOO_NETWORK_ID else key] = _renamed(value)
        if key == ZOO_NETWORK_ID:
            out[ZOO_NETWORK_ID] = {
                "_target_": "medmtl.networks.zoo.zoo_network",
                "network": f"@{MULTITASK_NETWORK_ID}",
                "task": "$medmtl.bundle_zoo.zoo_task(@tasks)",
                "views": "@input_keys",
            }
    out["imports"] = [*out.get("imports", []), *(i for i in _ZOO_IMPORTS if i not in out.get("imports", []))]
    return out


_ZOO_IMPORTS = ("$import medmtl.bundle_zoo", "$import medmtl.networks.zoo")


def _spec_header(spec_path: Path) -> list[str]:
    """The comment block at the top of a data spec (where medmtl's specs name the data's source and terms)."""
    lines = []
    for line in spec_path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def data_license_text(metadata: Mapping[str, Any], spec_path: Path, trained_on: str | None = None) -> str:
    """``docs/data_license.txt``: the data's source and terms as the bundle metadata and the data spec state them.

    Args:
        metadata: the bundle's ``metadata.json`` (its ``data_source``).
        spec_path: the data spec shipped in ``configs/`` (its leading comment names source and terms).
        trained_on: for exported weights, a line on the run they come from.

    Returns:
        The text; it says plainly when neither source states licence terms.
    """
    source = str(metadata.get("data_source") or "").strip()
    header = _spec_header(spec_path)
    lines = [
        f"Data licence of the bundle {metadata.get('name', spec_path.stem)!r}",
        "(written by `medmtl export-bundle` from the bundle metadata and the data spec; check it before sharing)",
        "",
        f"Data source (configs/metadata.json data_source): {source or 'not stated'}",
        "",
        f"Data spec configs/{spec_path.name}:",
        *(f"    {line}" for line in header or ["(no description at the top of the spec)"]),
        "",
    ]
    if trained_on:
        lines += [f"Weights (models/model.pt): {trained_on}", ""]
    described = " ".join([source, *header])
    if re.search(r"\bsynthetic\b", described, re.IGNORECASE) and not _LICENCE_WORDS.search(described):
        lines.append("The data is synthetic (as described above): no third-party data licence applies.")
    elif _LICENCE_WORDS.search(described):
        lines.append(
            "The terms above apply to the data; the weights trained on it may be bound by them too "
            "(e.g. no redistribution, non-commercial use)."
        )
    else:
        lines.append(
            "Licence of the data: unknown. Neither the bundle metadata nor the data spec states licence terms; "
            "find the terms of the data the weights were trained on before sharing this bundle."
        )
    return "\n".join(lines) + "\n"
