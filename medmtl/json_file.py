"""Reading the JSON records medmtl writes (``cv.json``, ``decisions.json``, ``calibration.json``, ``summary.json``).

Why one function: every record must fail the same way on a damaged or foreign file, with one message
naming the file, what is wrong and the fix, and never execute anything from it (plain ``json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["read_json", "read_task_entries"]


def read_json(path: str | os.PathLike, error: type[Exception], fix: str) -> Any:
    """The parsed content of ``path``; ``error`` naming the file and ``fix`` when it is not readable JSON.

    A missing file raises ``FileNotFoundError`` (with ``fix``); the caller checks the structure.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise error(f"{path} is not valid JSON ({err}); {fix}") from None
    except OSError as err:
        raise error(f"{path} cannot be read ({err.strerror or err}); {fix}") from None


def read_task_entries(
    path: str | os.PathLike,
    data: Mapping[str, Any],
    key: str,
    parse: Callable[[str, Any], Any],
    error: type[Exception],
    fix: str,
) -> tuple[dict[str, Any], list[str]]:
    """The per-task entries of a record (``"tasks": [names]`` + ``key: {name: entry}``), each parsed by ``parse``.

    Returns the parsed entries and the problems of the ones ``parse`` refused (``ValueError``), so the
    caller reports every problem at once; a ``tasks`` list that does not name the entries in order is
    ``error`` at once.
    """
    names, entries = data.get("tasks"), data.get(key)
    if not isinstance(names, list) or not isinstance(entries, dict) or list(entries) != names:
        raise error(f"{path}: 'tasks' must list the keys of '{key}' in order; {fix}")
    parsed, problems = {}, []
    for name in names:
        try:
            parsed[name] = parse(name, entries[name])
        except ValueError as err:
            problems.append(str(err))
    return parsed, problems
