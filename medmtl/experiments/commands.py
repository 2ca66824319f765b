"""``medmtl`` command lines that one command builds for another (cv and experts run bundle workflows).

Why one module: ``medmtl cv``, ``medmtl experts`` and ``medmtl predict`` each read options out of the
user's bundle overrides and start ``medmtl run`` in a process of its own (MONAI's bundle runner
replaces the process it runs in); reading and starting them one way keeps their behaviour the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medmtl.json_file import read_json

__all__ = ["check_resume_record", "option_value", "run_medmtl", "without_options"]


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


def check_resume_record(
    path: Path,
    record: Mapping[str, Any],
    keys: Sequence[str],
    *,
    version: int,
    error: type[Exception],
    what: str,
) -> dict[str, Any]:
    """The record in ``path`` (``cv.json``, ``experts.json``) when its ``keys`` equal ``record``'s.

    Why: a resumed ``medmtl cv`` / ``experts`` must not mix runs trained with other settings; the
    refusal names every difference at once, so one edit of the command line resumes it.

    Args:
        path: the recorded file.
        record: the settings of this command.
        keys: the settings that must be equal to resume.
        version: the file version this medmtl writes.
        error: the command's error type.
        what: what the folder holds, for the message ("a cross-validation", "experts").

    Raises:
        error: unreadable, another version, or settings that differ (each named).
    """
    recorded = read_json(path, error, "use a new --output_dir or delete the file")
    if not isinstance(recorded, dict) or recorded.get("version") != version:
        raise error(f"{path} is not a {path.name} of this medmtl (version {version}); use a new --output_dir")
    differences = [
        f"{key}: recorded {json.dumps(recorded.get(key))}, now {json.dumps(record[key])}"
        for key in keys
        if recorded.get(key) != record[key]
    ]
    if differences:
        raise error(
            f"{path.parent} holds {what} trained with other settings; resuming would mix runs trained "
            "differently:\n  " + "\n  ".join(differences) + "\nrepeat the recorded settings to resume, or use a new "
            "--output_dir"
        )
    return recorded
