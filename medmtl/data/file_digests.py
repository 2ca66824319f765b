"""File digests that are computed again only when a file's stat signature changed: unchanged data is not read.

Why: a cache keyed by file content (validation's :mod:`~medmtl.data.validate.result_cache`) must
know each file's digest, and hashing every byte of every image before each validation reads the
whole dataset again to find that nothing changed. As git's index does, a file whose path, size,
modification and status-change times (ns), inode and device are those recorded when it was hashed is taken as unchanged and its
recorded digest reused; any of them changing hashes it again. A file modified less than
:data:`FRESH_SECONDS` before it was hashed is not recorded: a rewrite within the same timestamp
tick (same size) would otherwise go unnoticed. The records are one JSON file (nothing pickled).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from medmtl.atomic_io import atomic_write
from medmtl.data.image_signatures import CACHE_ENV, content_digest, file_sha256

__all__ = ["FRESH_SECONDS", "FileDigests"]

logger = logging.getLogger(__name__)

FRESH_SECONDS = 2.0
"""A file modified less than this before it was hashed is hashed again next time (timestamp granularity)."""


class FileDigests:
    """sha256 of files (and folders, lists of files: :func:`~medmtl.data.image_signatures.content_digest`).

    Args:
        path: the JSON file of the records (``None``: nothing is read or written, every file is hashed).

    Example::

        digests = FileDigests(cache_dir() / "validation" / "files.json")
        keys = [digests.digest(p) for p in paths]  # only new or changed files are read
        digests.save()  # keeps the records of the files asked for in this run
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._known: dict[str, list[Any]] = {}
        self._used: dict[str, list[Any]] = {}
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text())
                self._known = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError) as err:  # a damaged file is ignored and rewritten, never trusted
                logger.warning("ignoring the unreadable file digests %s (%s)", path, err)

    def digest(self, path: str | os.PathLike | list[str | os.PathLike]) -> str:
        """The digest :func:`~medmtl.data.image_signatures.content_digest` gives, reading only changed files.

        Raises:
            OSError: a file cannot be read.
        """
        return content_digest(path, file_digest=self._file)

    def _file(self, path: Path) -> str:
        name = os.path.abspath(path)
        info = os.stat(name)  # before reading: a write during the read changes what is recorded
        # ctime as git's index does: a rewrite that puts the mtime back (touch -r, cp -p) still moves it
        stamp = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]
        known = self._known.get(name)
        if isinstance(known, list) and len(known) == len(stamp) + 1 and known[:-1] == stamp:
            self._used[name] = known
            return str(known[-1])
        digest = file_sha256(name)
        if time.time_ns() - info.st_mtime_ns >= FRESH_SECONDS * 1e9:
            self._used[name] = [*stamp, digest]
        return digest

    def save(self) -> None:
        """Write the records of the files hashed or reused since loading (others are dropped), if they changed."""
        if self.path is None or self._used == self._known:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(self._used).encode())
            self._known = dict(self._used)
        except OSError as err:  # a read-only home must not stop a validation or a run
            logger.warning(
                "cannot write the file digests %s (%s); set %s to a writable folder", self.path, err, CACHE_ENV
            )
