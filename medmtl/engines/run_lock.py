"""One training per output folder, and an output folder checked before any work starts.

Why: two trainings started into one ``output_dir`` both ran to the end, the second overwriting the
first's ``best.pt`` while the first's log still pointed at it; a read-only or full disk was found
only when the first checkpoint was written, inside a traceback chain, after the data had been
validated and cached.

- :func:`claim_output_dir`: takes ``<output_dir>/.medmtl.lock`` (``fcntl.flock`` on an open file,
  which the kernel releases when the process ends, however it ends), writes the holder into it
  (pid, host, start time, command) and refuses a second run with one line naming the holder.
  A lock file left by a killed run (``SIGKILL``, power loss) holds no ``flock`` any more: the next
  run takes it over with a warning naming the run that left it (processes forked from the killed
  run, such as data-loader workers, keep the lock until they notice, within seconds). Under DDP
  only rank 0 takes the lock and every rank gets the outcome (no rank waits for a rank that stopped).
- :func:`check_free_space`: the folder can be written (a real write, so read-only mounts and ACLs
  are caught) and holds the space the checkpoints will need, estimated from the network
  (see :func:`estimate_checkpoint_bytes`).
- :func:`check_output_dir`: for evaluation and inference, which write to their own subfolder and
  take no lock: writable, and a warning when a training still holds the run folder.

Errors are :class:`OutputDirError` (one line: the folder, what was found, the fix); with
``exit_on_error=True`` (what bundles set) a :class:`RunExit`, a ``SystemExit`` that
``python -m monai.bundle run`` prints without a traceback.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from medmtl.engines.distributed import get_world_size, is_main_process
from medmtl.engines.guards import GuardExit

__all__ = [
    "LOCK_NAME",
    "OutputDirError",
    "OutputDirLock",
    "OutputDirLocked",
    "RunExit",
    "WRITE_CHECK_PREFIX",
    "check_free_space",
    "check_output_dir",
    "claim_output_dir",
    "estimate_checkpoint_bytes",
    "lock_holder",
    "release_output_dir",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".medmtl.lock"
MARGIN_BYTES = 64 * 2**20
"""Space kept for everything but checkpoints: history, splits, configs, logs, a local MLflow store."""


class OutputDirError(RuntimeError):
    """The output folder cannot take this run: the message names the folder, what was found and the fix."""


class OutputDirLocked(OutputDirError):
    """Another run holds the output folder's lock.

    Attributes:
        holder: what the holder wrote into the lock file (pid, host, since, command), ``{}`` if unknown.
    """

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder

    def __reduce__(self):
        return type(self), (self.args[0], self.holder)


class RunExit(GuardExit):  # same exit: status 1, one line, no traceback
    """An :class:`OutputDirError` for bundle runs: exit status 1, the message, no traceback."""


def _stop(error: OutputDirError, exit_on_error: bool) -> None:
    if exit_on_error:  # not logged: Python prints the exit message, once
        raise RunExit(error) from None
    logger.error("%s", error)
    raise error


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.1f} MB"


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (it has not written its details yet)"
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, int | float) else "?"
    command = holder.get("command") or "?"
    command = command if len(command) <= 160 else command[:157] + "..."
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when} ({command})"


def _pid_running(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {"command": "unreadable lock file"}
    return holder if isinstance(holder, dict) else {}


def _flock_retrying(fd: int, tries: int = 5, pause_s: float = 0.05) -> None:
    """Exclusive non-blocking ``flock``, retried briefly: :func:`lock_holder` holds a shared lock for an instant."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(pause_s)


class OutputDirLock:
    """The lock of one output folder, held by this process until :meth:`release` (or its end).

    Args:
        folder: the output folder (created if absent).
        command: what the lock file names as the holder's command (default: this process's argv).
    """

    def __init__(self, folder: str | os.PathLike, command: str | None = None) -> None:
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK_NAME
        self.command = command if command is not None else " ".join(sys.argv)
        self._fd: int | None = None
        self.previous: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputDirLock:
        """Take the lock or raise :class:`OutputDirLocked`; a stale lock file is taken over with a warning."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock_retrying(fd)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputDirLocked(
                    f"{self.folder} is in use by another training: {_describe(holder)}. Wait for it to finish, "
                    "stop it, or give this run another --output_dir (two runs in one folder overwrite each "
                    "other's checkpoints)",
                    holder,
                ) from None
            except OSError as err:  # a filesystem without flock (some network mounts)
                os.close(fd)
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                logger.warning(
                    "%s: file locks are not supported here (%s): a second training started into this folder "
                    "would not be detected",
                    self.folder,
                    err.strerror,
                )
                return self
            try:  # a releasing holder unlinks the file: make sure we locked the file the path names now
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.previous = _read_holder(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        os.fsync(fd)
        self._fd = fd
        if self.previous:
            gone = (
                " (that process is no longer running)"
                if self.previous.get("host") == socket.gethostname() and not _pid_running(self.previous.get("pid"))
                else ""
            )
            logger.warning(
                "%s: took over the lock left by a run that ended without releasing it (killed?): %s%s; "
                "this run resumes from its last checkpoint if there is one",
                self.folder,
                _describe(self.previous),
                gone,
            )
        return self

    def release(self) -> None:
        """Remove the lock file and unlock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                self.path.unlink()
        except OSError:
            pass  # already gone, or a read-only folder now: the flock still ends below
        finally:
            os.close(fd)
        _HELD.pop(_key(self.folder), None)

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[str, OutputDirLock] = {}


def _key(folder: str | os.PathLike) -> str:
    return str(Path(folder).resolve())


def _release_all() -> None:
    for held in list(_HELD.values()):
        held.release()


atexit.register(_release_all)


def _no_link_out(folder: Path) -> None:
    """Raise when a subfolder of ``folder`` is a link out of it: case files are never written outside it."""
    root = folder.resolve()
    with os.scandir(folder) as entries:
        links = sorted(Path(e.path) for e in entries if e.is_symlink() and e.is_dir())
    for link in links:
        target = link.resolve()
        if not target.is_relative_to(root):
            raise OutputDirError(
                f"{link} is a link to {target}, outside the output folder {root}: medmtl writes case files only "
                "inside the output folder; remove the link, or give an --output_dir on the disk it points to"
            )


WRITE_CHECK_PREFIX = ".medmtl-write-check."
"""Name prefix of the byte written (then removed) to check that a folder is writable."""


def _writable(folder: Path) -> None:
    """Create the folder and write a byte into it; raise :class:`OutputDirError` in one line if that fails."""
    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"the output folder {folder} is a file, not a folder; choose another --output_dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(
            f"cannot create the output folder {folder}: {err.strerror or err}; choose a folder you can write "
            "(--output_dir) or fix its permissions"
        ) from None
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=WRITE_CHECK_PREFIX)
        try:
            os.write(handle, b"0")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as err:
        reason = "read-only file system" if err.errno == errno.EROFS else (err.strerror or str(err))
        raise OutputDirError(
            f"cannot write into the output folder {folder}: {reason}; choose a folder you can write "
            "(--output_dir) or fix its permissions/mount"
        ) from None


def _agree(error: OutputDirError | None, exit_on_error: bool) -> None:
    """Under DDP, rank 0's outcome for every rank: all go on, or all stop with the same error."""
    if get_world_size() > 1:
        box = [None if error is None else (type(error).__name__, str(error))]
        dist.broadcast_object_list(box, src=0)  # our own ranks' strings, not user data
        if box[0] is not None and error is None:
            name, message = box[0]
            error = OutputDirLocked(message, {}) if name == OutputDirLocked.__name__ else OutputDirError(message)
    if error is not None:
        _stop(error, exit_on_error)


def claim_output_dir(
    output_dir: str | os.PathLike, exit_on_error: bool = False, command: str | None = None
) -> OutputDirLock | None:
    """Check that ``output_dir`` can be written and take its lock for this training (see the module docstring).

    Call it in a training bundle's ``initialize``, before anything is written to the folder. Claiming
    a folder this process already holds returns the same lock (a bundle run twice in one process).

    Args:
        output_dir: the run folder (created if absent).
        exit_on_error: raise :class:`RunExit` instead of :class:`OutputDirError`.
        command: the command recorded in the lock file (default: this process's argv).

    Returns:
        The lock (``None`` on DDP ranks other than 0), released when the process ends or by
        :func:`release_output_dir`.

    Raises:
        OutputDirLocked: another run holds the folder (the message names it).
        OutputDirError: the folder cannot be created or written.
    """
    folder = Path(output_dir).absolute()
    lock: OutputDirLock | None = None
    error: OutputDirError | None = None
    if is_main_process():
        try:
            _writable(folder)
            lock = _HELD.get(_key(folder))
            if lock is None:
                lock = OutputDirLock(folder, command).acquire()
                _HELD[_key(folder)] = lock
        except OutputDirError as err:
            error = err
    _agree(error, exit_on_error)
    return lock


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Release the lock this process holds on ``output_dir`` (nothing if it holds none)."""
    lock = _HELD.get(_key(output_dir))
    if lock is not None:
        lock.release()


def lock_holder(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Which other process holds ``output_dir``'s lock now (pid, host, since, command), or ``None``."""
    if _key(output_dir) in _HELD:
        return None
    path = Path(output_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the shared lock taken when nobody held it
    return None


def estimate_checkpoint_bytes(network: torch.nn.Module, optimizer_states: int = 2) -> dict[str, int]:
    """Bytes of ``last.pt`` and ``best.pt`` for ``network``.

    ``best.pt`` holds the weights (parameters and buffers); ``last.pt`` the weights plus the
    optimizer's state, ``optimizer_states`` tensors the size of each parameter (2 for Adam/AdamW:
    both moments; 1 for SGD with momentum).
    """
    params = sum(p.numel() * p.element_size() for p in network.parameters())
    buffers = sum(b.numel() * b.element_size() for b in network.buffers())
    return {"best": params + buffers, "last": params * (1 + optimizer_states) + buffers}


def _existing_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def check_free_space(
    ckpt_dir: str | os.PathLike,
    network: torch.nn.Module | None = None,
    optimizer_states: int = 2,
    margin_bytes: int = MARGIN_BYTES,
    exit_on_error: bool = False,
) -> int:
    """Check that ``ckpt_dir`` can be written and has room for the run's checkpoints.

    Needed: each checkpoint once as the hidden temp file of its atomic write (the old file stays
    until the rename) plus what the final files add over existing ones (a resumed run replaces
    them), plus ``margin_bytes`` for everything else.

    Args:
        ckpt_dir: where ``last.pt`` / ``best.pt`` go (created if absent).
        network: the network (its parameters size the estimate); ``None`` checks only the margin.
        optimizer_states: see :func:`estimate_checkpoint_bytes`.
        margin_bytes: space kept for history, splits, configs, logs.
        exit_on_error: raise :class:`RunExit` instead of :class:`OutputDirError`.

    Returns:
        The estimated bytes needed.

    Raises:
        OutputDirError: not writable, or less free space than needed (both numbers in the message).
    """
    folder = Path(ckpt_dir).absolute()
    needed = margin_bytes
    detail = f"{_mb(margin_bytes)} for history, splits and logs"
    error: OutputDirError | None = None
    if is_main_process():
        try:
            _writable(folder)
            if network is not None:
                sizes = estimate_checkpoint_bytes(network, optimizer_states)
                for name, size in sizes.items():
                    needed += size + max(0, size - _existing_size(folder / f"{name}.pt"))
                count = sum(p.numel() for p in network.parameters())
                detail = (
                    f"last.pt about {_mb(sizes['last'])} and best.pt about {_mb(sizes['best'])} for {count:,} "
                    f"parameters, each written beside the old file before it is replaced, plus {detail}"
                )
            free = shutil.disk_usage(folder).free
            if free < needed:
                error = OutputDirError(
                    f"not enough free space for the run in {folder}: {_mb(free)} free, about {_mb(needed)} needed "
                    f"({detail}); free some space or choose another --output_dir"
                )
        except OutputDirError as err:
            error = err
    _agree(error, exit_on_error)
    return needed


def check_output_dir(
    folder: str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    margin_bytes: int = MARGIN_BYTES,
    exit_on_error: bool = False,
) -> None:
    """Before an evaluation or inference: ``folder`` (its own output) writable with some space free.

    Evaluation and inference take no lock: they write to their own subfolder (``eval/``,
    ``predictions/``) and read ``best.pt``, which a training replaces atomically. When a training
    still holds ``run_dir`` they warn that ``best.pt`` may still change.

    Raises:
        OutputDirError: ``folder`` cannot be written or has less than ``margin_bytes`` free.
    """
    path = Path(folder).absolute()
    try:
        _writable(path)
        _no_link_out(path)
        free = shutil.disk_usage(path).free
        if free < margin_bytes:
            raise OutputDirError(
                f"not enough free space in {path}: {_mb(free)} free, at least {_mb(margin_bytes)} needed for the "
                "outputs; free some space or choose another output folder"
            )
    except OutputDirError as err:
        _stop(err, exit_on_error)
    holder = lock_holder(run_dir) if run_dir is not None else None
    if holder is not None:
        logger.warning(
            "a training still runs in %s (%s): this uses best.pt as it is now; it may change when that training "
            "finds a better epoch",
            run_dir,
            _describe(holder),
        )
