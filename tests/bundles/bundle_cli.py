"""Bundle commands for the tests: the layered ``python -m monai.bundle run`` argv, plus test-only configs.

Why: several tests merge a test-only config (a kill hook, a NaN injector, a tracking guard) after a
bundle's layers; :func:`medmtl.bundle_layers.bundle_command` takes only the bundle's own layers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from medmtl.bundle_layers import bundle_command, config_layers

__all__ = ["as_overrides", "bundle_argv"]


def as_overrides(overrides: Mapping[str, object]) -> list[str]:
    """``--key value`` pairs as MONAI reads them: lists as JSON, everything else as ``str``."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, list | tuple) else str(value)]
    return args


def bundle_argv(
    bundle: str | os.PathLike,
    workflows: Sequence[str] = ("train",),
    overrides: Mapping[str, object] | Sequence[str] = (),
    extra_configs: Sequence[str | os.PathLike] = (),
) -> list[str]:
    """``bundle_command`` for ``workflows`` of ``bundle``, with ``extra_configs`` merged after its layers."""
    args = as_overrides(overrides) if isinstance(overrides, Mapping) else list(overrides)
    cmd = bundle_command(bundle, workflows, args)
    if extra_configs:
        files = [*config_layers(bundle, *workflows), *extra_configs]
        cmd[cmd.index("--config_file") + 1] = "[" + ",".join(repr(os.fspath(f)) for f in files) + "]"
    return cmd
