"""Loading checkpoints safely, with an error that names the file and what is wrong with it.

Why: ``torch.load`` answers a damaged or hostile file with messages that do not help a user, or
mislead them: a truncated ``best.pt`` gives ``OSError: [Errno 22] Invalid argument``, a text file
a bare ``KeyError: 101``, and a pickle that would run code PyTorch's advice to re-run with
``weights_only=False``, which would run that code. Every checkpoint medmtl reads goes through
:func:`load_checkpoint` (``weights_only=True``: nothing in the file is executed), which checks the
zip archive first (truncation, CRC) and turns each failure into a :class:`CheckpointError` that
says what the file is, never how to switch the protection off. :func:`check_state_dict_fits`
names the keys that do not fit a network (a checkpoint of other tasks or another backbone), and
:class:`SafeCheckpointLoader` is MONAI's ``CheckpointLoader`` with both checks for bundle configs.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from medmtl.engines.guards import GuardExit

__all__ = [
    "CheckpointError",
    "CheckpointExit",
    "CheckpointWriteError",
    "RUN_CONFIG_KEY",
    "SafeCheckpointLoader",
    "check_state_dict_fits",
    "load_checkpoint",
    "read_run_config",
    "strip_ddp_prefix",
]

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # pickle protocol >= 2: torch's legacy (non-zip) format
_SHOWN_KEYS = 5

RUN_CONFIG_KEY = "run_config"
"""Where ``last.pt`` and ``best.pt`` keep the JSON record of how the run was trained."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the file, the problem and the fix."""


class CheckpointWriteError(OSError):
    """A checkpoint (or the history that goes with it) could not be written: disk full, read-only folder."""


class CheckpointExit(GuardExit):  # same exit: status 1, one line, no traceback
    """:class:`CheckpointError` / :class:`CheckpointWriteError` for bundle runs: exit status 1, the message, no traceback.

    ``python -m monai.bundle run`` wraps every ``Exception`` of a config expression in a
    ``RuntimeError`` whose traceback buries the message; a ``SystemExit`` passes through (as
    :class:`medmtl.engines.GuardExit` and :class:`medmtl.data.validate.DatasetExit`).
    """


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size} bytes"
    except OSError:
        return "size unknown"


def _damaged(path: Path, detail: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{what} {path} is truncated or corrupt ({detail}; {_size(path)}): it was not written completely "
        "(a full disk, an interrupted copy) or was changed afterwards; restore it from a good copy, or train "
        "again into a new output folder"
    )


def _not_torch(path: Path, detail: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{what} {path} is not a PyTorch checkpoint ({detail}: neither a torch.save zip archive nor a weights "
        "pickle); give the path of a .pt file written by medmtl or torch.save"
    )


def _check_archive(path: Path, what: str) -> None:
    """Read the whole zip archive once: a missing end (truncation) or a CRC mismatch raises."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        raise _damaged(path, f"not a complete zip archive: {err}", what) from None
    except OSError as err:
        raise _damaged(path, f"cannot read the archive: {err.strerror or err}", what) from None
    if bad is not None:
        raise _damaged(path, f"member {bad} fails its CRC check", what)


def _refusal(path: Path, error: pickle.UnpicklingError, what: str) -> CheckpointError:
    """Translate the weights-only unpickler's error, without relaying PyTorch's advice to turn it off."""
    text = str(error)
    match = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", text, re.IGNORECASE)
    if match:
        name = (match.group(1) or match.group(2)).rstrip(".,")
        return CheckpointError(
            f"refused: {what} {path} contains code/objects medmtl will not load ({name}); medmtl reads only "
            "tensors and plain values from a checkpoint, so nothing in a file can run. Do not use this file; take "
            "the checkpoint from a source you trust, or train one"
        )
    operand = re.search(r"Unsupported operand (\d+)", text)
    detail = f"pickle opcode {operand.group(1)} is not allowed" if operand else "its content is not plain weights"
    return CheckpointError(
        f"refused: {what} {path} is not a PyTorch weights file medmtl can load ({detail}); it may hold code or "
        "objects, which medmtl never loads. Use a checkpoint written by medmtl (last.pt / best.pt) or a "
        "state_dict saved with torch.save"
    )


def load_checkpoint(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    what: str = "checkpoint",
    verify_archive: bool = True,
) -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors (see the module docstring).

    Args:
        path: the checkpoint file.
        map_location: as for ``torch.load``.
        what: how the file is named in messages (``"checkpoint"``, ``"last.pt of the run"``...).
        verify_archive: read the zip archive once first and check its CRCs (detects a truncated or
            bit-flipped file that ``torch.load`` would load or fail on obscurely); costs one more
            read of the file.

    Returns:
        What the file holds (tensors, dicts, lists and plain values only).

    Raises:
        CheckpointError: the file is missing, a folder, unreadable, empty, truncated, corrupt, not
            a PyTorch file, or holds anything but weights (refused, never executed).
    """
    file = Path(path)
    if not file.exists():
        raise CheckpointError(
            f"{what} {file} does not exist: train first (it is written to <output_dir>/models), or give the path "
            "of an existing checkpoint"
        )
    if file.is_dir():
        raise CheckpointError(f"{what} {file} is a folder, not a checkpoint file: give the path of the .pt file")
    try:
        with file.open("rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise CheckpointError(f"cannot read {what} {file}: {err.strerror or err}") from None
    if not head:
        raise _damaged(file, "the file is empty", what)
    if head != _ZIP_MAGIC and not head.startswith(_PICKLE_PROTO):
        raise _not_torch(file, f"it starts with {head!r}", what)
    if head == _ZIP_MAGIC and verify_archive:
        _check_archive(file, what)
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(file, err, what) from None
    except (EOFError, zipfile.BadZipFile) as err:
        raise _damaged(file, f"ends early: {type(err).__name__}", what) from None
    except RuntimeError as err:
        if "PytorchStreamReader" in str(err) or "zip archive" in str(err):
            raise _damaged(file, str(err).split(".")[0], what) from None
        raise CheckpointError(f"{what} {file} cannot be loaded: {str(err).splitlines()[0]}") from None
    except OSError as err:
        if head == _ZIP_MAGIC:
            raise _damaged(file, err.strerror or str(err), what) from None
        raise CheckpointError(f"cannot read {what} {file}: {err.strerror or err}") from None
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise _not_torch(file, f"{type(err).__name__} while reading it", what) from None


def read_run_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``run_config`` record a medmtl checkpoint carries, or ``None`` (a checkpoint written before records).

    Loaded with :func:`load_checkpoint` (nothing in the file is executed).

    Raises:
        CheckpointError: the file cannot be loaded (see :func:`load_checkpoint`), or its record is not a
            JSON object.
    """
    # the archive check is the start check's (check_bundle_start): one full read fewer per command
    checkpoint = load_checkpoint(path, map_location="cpu", verify_archive=False)
    record = checkpoint.get(RUN_CONFIG_KEY) if isinstance(checkpoint, Mapping) else None
    if record is None:
        return None
    if not isinstance(record, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a '{RUN_CONFIG_KEY}' that is a {type(record).__name__}, not a run record "
            "(a JSON object): it was not written by medmtl; pass the training overrides explicitly instead"
        )
    return dict(record)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def check_state_dict_fits(
    network: torch.nn.Module,
    state: Mapping[str, Any],
    path: str | os.PathLike,
    fix: str = "use the checkpoint trained with this bundle's tasks and network, or the matching config",
) -> None:
    """Raise a :class:`CheckpointError` naming the keys of ``state`` that do not fit ``network``.

    Why: ``load_state_dict`` lists every key of a mismatch in one paragraph of several hundred
    names; a checkpoint of other tasks differs only in a few head keys, which this shows first.

    Raises:
        CheckpointError: some key is missing, unexpected or of another shape.
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a network state_dict (name -> tensor); {fix}")
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    from medmtl.networks.layouts import layout_change_from_state

    why = layout_change_from_state(network, state)
    if why:
        raise CheckpointError(f"checkpoint {path} does not fit the network {type(network).__name__}: {why}")
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) missing ({_listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({_listed(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} key(s) of another shape, checkpoint vs network ({_listed(shapes)})")
    raise CheckpointError(
        f"checkpoint {path} does not fit the network {type(network).__name__}: " + "; ".join(parts) + f"; {fix}"
    )


def strip_ddp_prefix(state: Mapping[str, Any], prefix: str = "module.") -> Mapping[str, Any]:
    """A network state dict saved from a DDP / DataParallel wrapper (every key ``module.*``), unwrapped.

    torch's ``consume_prefix_in_state_dict_if_present`` strips the keys and ``_metadata``, on a
    copy (``state`` is left as it is). Only a state in which every key has the prefix is changed:
    a plain network with a child named ``module`` keeps its keys.
    """
    if not (state and all(isinstance(k, str) and k.startswith(prefix) for k in state)):
        return state
    out: OrderedDict[str, Any] = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict(metadata)  # type: ignore[attr-defined]
    consume_prefix_in_state_dict_if_present(out, prefix)
    return out


class SafeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that first loads the file with :func:`load_checkpoint` and checks the fit.

    A damaged, hostile or mismatched checkpoint then stops the evaluation/inference with one line
    naming the file (a :class:`CheckpointExit` with ``exit_on_error=True``, what bundles set)
    instead of a traceback. The loading itself is MONAI's, unchanged. In a bundle config::

        {"_target_": "medmtl.engines.SafeCheckpointLoader", "exit_on_error": true,
         "load_path": "@ckpt_path", "load_dict": {"network": "@network"}, "map_location": "@device"}

    Args:
        exit_on_error: raise :class:`CheckpointExit` instead of :class:`CheckpointError`.
        *args, **kwargs: MONAI ``CheckpointLoader``'s.
    """

    def __init__(self, *args: Any, exit_on_error: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exit_on_error = exit_on_error

    def __call__(self, engine: Any) -> None:
        try:
            self._check(self.load_path)
        except CheckpointError as err:
            if self.exit_on_error:  # not logged: Python prints the exit message, once
                raise CheckpointExit(err) from None
            logger.error("%s", err)
            raise
        super().__call__(engine)

    def _check(self, path: str) -> None:
        checkpoint = load_checkpoint(path, map_location="cpu")
        (first, _), *_ = self.load_dict.items()
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict of state_dicts")
        single = len(self.load_dict) == 1 and first not in checkpoint
        for name, obj in self.load_dict.items():
            state = checkpoint if single else checkpoint.get(name)
            if state is None:
                raise CheckpointError(
                    f"checkpoint {path} has no '{name}' entry (it has {sorted(map(str, checkpoint))[:10]}): give a "
                    "checkpoint written by medmtl (best.pt / last.pt)"
                )
            if isinstance(obj, torch.nn.Module) and self.strict and self.strict_shape:
                module = obj.module if isinstance(getattr(obj, "module", None), torch.nn.Module) else obj
                check_state_dict_fits(module, strip_ddp_prefix(state), path)
