"""``plan.yaml``: bundle overrides with the reason for each choice written next to it.

Why YAML with comments: the file is read by people (each value says why it was chosen) and by
MONAI (``python -m monai.bundle run ... --args_file plan.yaml`` takes every top-level key as an
override, command-line overrides winning), so one file is both the explanation and the input.
``medmtl run NAME train --plan plan.yaml`` passes it the same way. The ``plan`` key carries what
the plan was made for (spec, bundle, version); every bundle checks it before training
(:func:`check_plan`) and refuses a plan made for another spec, another bundle or another version.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medmtl.atomic_io import atomic_write

__all__ = [
    "PLAN_VERSION",
    "Choice",
    "PlanError",
    "spec_digest",
    "write_plan",
    "read_plan",
    "check_plan",
    "plan_summary",
]

PLAN_VERSION = 1
"""Bumped when a plan's keys change meaning; older plans are refused with the reason."""


class PlanError(ValueError):
    """A plan file that cannot be used with this spec, bundle or medmtl version."""


@dataclass(frozen=True)
class Choice:
    """One planned bundle override: ``key`` (a MONAI config id, ``::`` for nested ids), its value, why.

    An empty ``key`` is a note: the reason is written, nothing is overridden.
    """

    key: str
    value: Any
    reason: str


def spec_digest(spec: Any) -> str:
    """sha256 of what a plan depends on in a spec: name, modality, dimensions, inputs and tasks.

    Splits, root and descriptions are left out: a plan stays valid when only those change.
    """
    dumped = spec.model_dump(mode="json")
    kept = {k: dumped.get(k) for k in ("name", "modality", "spatial_dims", "inputs")}
    kept["tasks"] = [
        {k: task.get(k) for k in ("name", "kind", "classes", "num_classes", "labels")} for task in dumped["tasks"]
    ]
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _yaml_value(value: Any) -> str:
    """One-line YAML (flow style) for a value, so the reason fits on the same line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def write_plan(
    path: str | os.PathLike, meta: Mapping[str, Any], choices: Sequence[Choice], header: Sequence[str] = ()
) -> Path:
    """Write ``plan.yaml``: a comment header, the ``plan`` metadata, then one line per choice with its reason."""
    lines = [f"# {line}" if line else "#" for line in header]
    lines.append("plan:")
    lines += [f"  {key}: {_yaml_value(value)}" for key, value in meta.items()]
    for choice in choices:
        lines.append(f"# {choice.reason}")
        if choice.key:  # a choice without a key is a note: the reason only
            lines.append(f"{_yaml_value(choice.key)}: {_yaml_value(choice.value)}")
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text).get("plan") is None:  # pragma: no cover - guards the writer itself
        raise RuntimeError("plan writer produced a file without its 'plan' metadata")
    return atomic_write(path, text.encode())


def read_plan(path: str | os.PathLike) -> dict[str, Any]:
    """The plan's top-level keys (``plan`` metadata included); a file that is not a plan is refused."""
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PlanError(
            f"{source}: cannot read the plan ({err}); make one with `medmtl plan SPEC -o {source}`"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("plan"), dict):
        raise PlanError(
            f"{source}: not a medmtl plan (no 'plan:' section); make one with `medmtl plan SPEC -o {source}`"
        )
    return data


def check_plan(plan: Mapping[str, Any] | None, spec: Any, bundle_root: str | os.PathLike | None = None) -> None:
    """Refuse a plan made for another spec, bundle or plan version (every reason at once); ``None`` passes.

    Args:
        plan: the ``plan`` section of ``plan.yaml`` (a bundle's ``plan`` key), or ``None``.
        spec: the data spec the run uses.
        bundle_root: the running bundle's folder (its name is compared with the plan's bundle).

    Raises:
        PlanError: listing every mismatch with the fix.
    """
    if plan is None:
        return
    if isinstance(plan, str | os.PathLike):
        raise PlanError(
            f"--plan {plan}: python -m monai.bundle run reads a plan with --args_file {plan} (its settings become "
            f"overrides); or run medmtl run NAME train --plan {plan}"
        )
    if not isinstance(plan, Mapping):
        raise PlanError(f"the 'plan' key must be the 'plan' section of a plan.yaml (a mapping), got {plan!r}")
    problems = []
    version = plan.get("version")
    if version != PLAN_VERSION:
        problems.append(
            f"the plan has version {version!r} and this medmtl reads version {PLAN_VERSION}: re-run `medmtl plan`"
        )
    if plan.get("spec_name") != spec.name or plan.get("spec_digest") != spec_digest(spec):
        problems.append(
            f"the plan was made for spec {plan.get('spec_name')!r} and this run uses spec {spec.name!r} with "
            "other inputs or tasks: re-run `medmtl plan` on this spec"
        )
    bundle = Path(os.fspath(bundle_root)).name if bundle_root else None
    if bundle and plan.get("bundle") and plan["bundle"] != bundle:
        problems.append(
            f"the plan was fitted on bundle {plan['bundle']!r} (its network's memory and step time) and this run is "
            f"bundle {bundle!r}: run `medmtl plan ... --bundle {bundle}`"
        )
    if problems:
        raise PlanError("plan refused: " + "; ".join(problems))


def plan_summary(plan: Mapping[str, Any] | None) -> str | None:
    """A short MLflow parameter for the plan a run used (``None`` without one)."""
    if not plan:
        return None
    return f"{plan.get('spec_name')} / {plan.get('bundle')} / {plan.get('device')} / {plan.get('created', '')}"
