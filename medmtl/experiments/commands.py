"""``medmtl`` command lines that one command builds for another (cv and experts run bundle workflows).

Why one module: ``medmtl cv``, ``medmtl experts`` and ``medmtl predict`` each read options out of the
user's bundle overrides and start ``medmtl run`` in a process of its own (MONAI's bundle runner
replaces the process it runs in); reading and starting them one way keeps their behaviour the same.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence

__all__ = ["option_value", "run_medmtl", "without_options"]


def option_value(argv: Sequence[str], name: str) -> str | None:
    """The last value of ``--name VALUE`` / ``--name=VALUE`` in ``argv``, else ``None``."""
    value = None
    for index, token in enumerate(argv):
        if token == name and index + 1 < len(argv):
            value = argv[index + 1]
        elif token.startswith(name + "="):
            value = token.split("=", 1)[1]
    return value


def without_options(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """``argv`` without ``--name VALUE`` / ``--name=VALUE`` of ``names``."""
    out, index = [], 0
    while index < len(argv):
        token = argv[index]
        if token in names and index + 1 < len(argv):
            index += 2
            continue
        if not any(token.startswith(name + "=") for name in names):
            out.append(token)
        index += 1
    return out


def run_medmtl(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``medmtl ARGV`` in a new process (this Python), return its exit status."""
    return subprocess.call([sys.executable, "-m", "medmtl.cli", *argv], env=None if env is None else dict(env))
