"""Mistakes in a bundle command, caught before anything is loaded: one line each, no traceback.

Why: ``python -m monai.bundle run`` accepts any ``--key value`` and adds it to the config, so a
typo (``--epoch 3``) trained with the defaults without a word; ``--device cuda`` on a machine
without CUDA, a missing checkpoint or ``--epochs`` below ``--val_interval`` ended in a traceback
(or a misleading warning) after the data had been cached. Every bundle config calls
:func:`check_bundle_start` first in ``initialize``::

    "$medmtl.engines.check_bundle_start(@device, epochs=@epochs, val_interval=@val_interval)"   (training)
    "$medmtl.engines.check_bundle_start(@device, ckpt_path=@ckpt_path)"                  (evaluation, inference)
"""

from __future__ import annotations

import ast
import difflib
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import monai.bundle
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.scripts import create_workflow
from monai.bundle.scripts import run as monai_run

from medmtl.engines.checkpoint_io import CheckpointError, load_checkpoint
from medmtl.engines.guards import GuardExit

logger = logging.getLogger(__name__)

__all__ = [
    "BundleStartError",
    "BundleStartExit",
    "check_bundle_start",
    "cli_overrides",
    "monai_run_arguments",
    "unknown_override_problems",
]


class BundleStartError(ValueError):
    """One or more mistakes in a bundle command (one line each)."""


class BundleStartExit(GuardExit):  # same exit: status 1, one line, no traceback
    """:class:`BundleStartError` for bundle runs: exit status 1, the message, no traceback."""


def monai_run_arguments() -> set[str]:
    """The keywords MONAI's ``run`` takes for itself (not config overrides): config_file, tracking, ..."""
    names: set[str] = set()
    for fn in (monai_run, create_workflow, ConfigWorkflow.__init__):
        for name, param in inspect.signature(fn).parameters.items():
            if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL) and name != "self":
                names.add(name)
    return names


def _is_flag(token: str) -> bool:  # as fire: "--x" or "-x", not a negative number
    return token.startswith("--") or (len(token) > 1 and token[0] == "-" and token[1].isalpha())


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def cli_overrides(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The ``--key value`` arguments of a ``python -m monai.bundle run`` command line, ``--args_file`` merged.

    Args:
        argv: the command line (default ``sys.argv``).

    Returns:
        ``{key: value}`` as MONAI's ``run`` receives them (values read as Python literals where they
        are, as fire does), or ``None`` when this process is not ``monai.bundle run`` (a test or a
        script building the config itself: nothing to compare).
    """
    argv = list(sys.argv if argv is None else argv)
    main = Path(monai.bundle.__file__).with_name("__main__.py")
    if len(argv) < 2 or argv[1] != "run" or not os.path.exists(argv[0]) or not main.samefile(argv[0]):
        return None
    given: dict[str, Any] = {}
    tokens = argv[2:]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not _is_flag(token):
            continue
        key, eq, value = token.lstrip("-").partition("=")
        if not eq:
            has_value = i < len(tokens) and not _is_flag(tokens[i])
            value, i = (tokens[i], i + 1) if has_value else ("True", i)
        given[key.replace("-", "_")] = _literal(value)
    if isinstance(given.get("args_file"), str):
        given = {**ConfigParser.load_config_file(given["args_file"]), **given}
    return given


def _nested_id_problem(config: dict[str, Any], key: str) -> str | None:
    """``--a#b#c`` needs ``a#b`` to be a table (or a list and ``c`` an index): MONAI stops with a KeyError otherwise."""
    parts = ReferenceResolver.split_id(key.replace("#", "::"))
    node: Any = config
    for depth, part in enumerate(parts[:-1]):
        parent = node
        node = node.get(part) if isinstance(node, dict) else node[int(part)] if _index_in(node, part) else None
        if not isinstance(node, (dict, list)):
            where = "::".join(parts[: depth + 1])
            if node is None and isinstance(parent, dict) and depth:
                keys = ", ".join(sorted(map(str, parent))[:12])
                return f"--{key}: '{'::'.join(parts[:depth])}' has no '{part}' (it has: {keys})"
            has = f"'{where}' holds {str(node)[:40]!r}" if node is not None else f"'{where}' is not defined"
            return f"--{key}: {has}, it cannot hold '{parts[depth + 1]}'; override --{where} itself"
    last = parts[-1]
    if isinstance(node, list) and not _index_in(node, last):
        return f"--{key}: '{'::'.join(parts[:-1])}' is a list of {len(node)}; give an index below {len(node)}"
    return None


def _index_in(node: Any, part: str) -> bool:
    return isinstance(node, list) and part.isdigit() and int(part) < len(node)


def none_override_problems(tokens: Sequence[str]) -> list[str]:
    """One line per ``--key None`` override: MONAI's ``run`` drops ``None`` values, so the key would
    silently keep its value from the config or the ``--args_file`` (a plan) instead."""
    problems = []
    for i, token in enumerate(tokens):
        if not _is_flag(token):
            continue
        key, eq, value = token.lstrip("-").partition("=")
        if not eq:
            value = tokens[i + 1] if i + 1 < len(tokens) and not _is_flag(tokens[i + 1]) else ""
        if value.strip() == "None":
            problems.append(
                f"--{key} None: MONAI's bundle runner ignores None on the command line, so --{key} would keep "
                "the value of the config or plan; give a value instead (e.g. a large --time_limit_minutes), or "
                "set it to null in a config file of your own"
            )
    return problems


def unknown_override_problems(overrides: dict[str, Any]) -> list[str]:
    """One line per override whose top-level id the bundle's config files do not define, or whose nested id
    (``--a#b#c``) has no table to go into.

    Args:
        overrides: what MONAI's ``run`` received (:func:`cli_overrides`), with ``config_file``.

    Returns:
        ``"--epoch: ... (did you mean --epochs?)"`` lines; ``[]`` when all are known or there is no
        ``config_file`` to compare with.
    """
    config_file = overrides.get("config_file")
    if not config_file:
        return []
    config = ConfigParser.load_config_files(config_file)
    defined = set(config) | {"_meta_"}
    run_args = monai_run_arguments()
    problems = []
    for key in overrides:
        top = ReferenceResolver.split_id(key)[0]
        if key in run_args or top == "_meta_":
            continue
        if top in defined:
            if problem := _nested_id_problem(config, key):
                problems.append(problem)
            continue
        close = difflib.get_close_matches(top, sorted(defined - {"_meta_"}), n=1, cutoff=0.6)
        hint = f"did you mean --{close[0]}?" if close else "see the config for the ids it defines"
        problems.append(f"--{key}: the config ({config_file}) defines no '{top}', so it would be ignored ({hint})")
    return problems


def _device_problem(device: Any) -> str | None:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"--device {device!r} is not a device: use cpu, cuda or cuda:N"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return (
                f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
                "use --device cpu, or leave --device out to use a GPU when there is one"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)"
    return None


def _epoch_problems(epochs: Any, val_interval: Any, overrides: dict[str, Any] | None) -> list[str]:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        return [f"--epochs {epochs!r}: give a whole number >= 1"]
    if not isinstance(val_interval, int) or isinstance(val_interval, bool) or val_interval < 1:
        return [f"--val_interval {val_interval!r}: give a whole number >= 1"]
    if epochs >= val_interval:
        return []
    if overrides is not None and "val_interval" in overrides:  # asked for on purpose (e.g. timing training only)
        logger.warning(
            "--val_interval %s > --epochs %s: no epoch is validated, no best checkpoint", val_interval, epochs
        )
        return []
    return [
        f"--epochs {epochs} is smaller than --val_interval {val_interval} (the config's): no epoch would be "
        f"validated and no best checkpoint chosen; pass --val_interval {epochs} (or fewer), or more epochs"
    ]


def _checkpoint_problems(ckpt_path: str | os.PathLike, overrides: dict[str, Any] | None) -> list[str]:
    """A missing, damaged or refused checkpoint, found before the data is cached and the engine runs.

    Why here and not only in the loader: an error raised inside the engine is logged with its
    traceback by MONAI's ``StatsHandler`` before the bundle exits.
    """
    given = bool(overrides and "ckpt_path" in overrides)
    if os.path.isdir(ckpt_path):
        return [f"{'--ckpt_path ' if given else 'checkpoint '}{ckpt_path} is a folder: give the path of the .pt file"]
    if not os.path.isfile(ckpt_path):
        if given:
            return [f"--ckpt_path {ckpt_path}: no such checkpoint file"]
        return [f"checkpoint {ckpt_path} does not exist: train first (with the same --output_dir), or pass --ckpt_path"]
    try:
        load_checkpoint(ckpt_path, map_location="cpu")
    except CheckpointError as err:
        return [str(err)]
    return []


def check_bundle_start(
    device: Any = None,
    *,
    epochs: Any = None,
    val_interval: Any = None,
    ckpt_path: str | os.PathLike | None = None,
    argv: Sequence[str] | None = None,
    exit_on_error: bool = True,
) -> None:
    """Refuse a bundle command with mistakes, all of them at once, before anything is loaded.

    Checks: override keys the config does not define (``monai.bundle run`` only), ``device``
    usable here, ``ckpt_path`` a loadable checkpoint (evaluation, inference: missing, a folder,
    truncated or holding code), ``epochs`` at least ``val_interval``
    (training; only a warning when ``--val_interval`` itself was given). An argument left ``None``
    is not checked.

    Args:
        device: the config's ``@device``.
        epochs: the config's ``@epochs``.
        val_interval: the config's ``@val_interval``.
        ckpt_path: the checkpoint the run loads.
        argv: the command line (default ``sys.argv``).
        exit_on_error: raise :class:`BundleStartExit` (what bundles set) instead of :class:`BundleStartError`.

    Raises:
        BundleStartExit | BundleStartError: naming every mistake, one per line.
    """
    problems: list[str] = []
    overrides = cli_overrides(argv)
    if overrides is not None:
        problems += unknown_override_problems(overrides)
    if device is not None and (problem := _device_problem(device)):
        problems.append(problem)
    if ckpt_path is not None:
        problems += _checkpoint_problems(ckpt_path, overrides)
    if epochs is not None and val_interval is not None:
        problems += _epoch_problems(epochs, val_interval, overrides)
    if problems:
        error = BundleStartError("\n".join(problems))
        if exit_on_error:  # not logged: Python prints the exit message, once
            raise BundleStartExit(error) from None
        raise error
