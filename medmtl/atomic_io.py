"""Writing a file so that nobody ever sees half of it: temp file in the same folder, fsync, ``os.replace``.

Why our own: the standard library has no atomic write, and the packages we depend on keep theirs
private (ignite's ``DiskSaver(atomic=True)`` writes checkpoints only). Every file a run, an
evaluation or a prediction writes (splits, history, checkpoints, tables, masks) goes through
:func:`atomic_write` so that a kill, a full disk or a crash leaves the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_with", "temp_path_for"]

DEFAULT_MODE = 0o644  # mkstemp's 0600 would hide a run's files from colleagues evaluating it


def temp_path_for(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new hidden temporary file next to ``path`` (``.<name>.<random><suffix>``): ``(fd, path)``.

    Hidden so that globbing the folder never picks it up; same folder so ``os.replace`` is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    return fd, Path(tmp)


def atomic_write_with(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], object],
    *,
    mode: int = DEFAULT_MODE,
    suffix: str = ".tmp",
    before_replace: Callable[[Path], object] | None = None,
) -> Path:
    """Call ``write(handle)`` on a temp file next to ``path``, fsync it, then rename it to ``path``.

    Args:
        path: the final file.
        write: writes the content into the open binary handle (``torch.save``, ``np.save``, ...).
        mode: permission bits of the final file.
        suffix: the temp file's suffix (some writers need the real one, e.g. ``.nii.gz``).
        before_replace: called with the finished temp file just before the rename (tests pause here).

    Returns:
        ``path``. On any error (including ``KeyboardInterrupt``) the temp file is removed and
        ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = temp_path_for(path, suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | os.PathLike, data: str | bytes, *, mode: int = DEFAULT_MODE) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; see :func:`atomic_write_with`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return atomic_write_with(path, lambda handle: handle.write(payload), mode=mode)
