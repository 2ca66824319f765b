"""File names for case ids: safe on every file system, one per case, reversible, of bounded length.

Case ids are the data spec's ids, and those come from file and folder names anyone chose: ``sub.01``
and ``sub.02`` (a dot that a writer would take for an extension), ``site/a`` (a folder separator),
``..``, ``CON`` (a Windows device), 300 characters, any script. A prediction file named after the id
as it is would overwrite another case's file, land outside the output folder or fail to be written.

:func:`case_file_stem` maps an id to a file-name stem that keeps ``A-Za-z0-9_-`` and writes every
other character as ``%XX`` escapes of its UTF-8 bytes (``sub.01`` -> ``sub%2E01``, ``a/b`` ->
``a%2Fb``, ``..`` -> ``%2E%2E``), so distinct ids give distinct stems and :func:`case_id_from_stem`
reads the id back. A leading ``-`` (an option to command-line tools) and Windows device names
(``CON``, ``NUL``, ``COM1``...) get their first character escaped too. A stem has no dot, so it is
never mistaken for a name with an extension, and never starts or ends with a dot or a space. An
escaped id longer than :data:`MAX_STEM_LENGTH` characters is cut (never inside an escape) and ends
with ``~`` and 16 hex digits of the SHA-256 of the whole id: still one name per id, read back through
the ``case_id`` column next to it in ``predictions.csv``.

:class:`CaseFileNames` picks the stem of each case for one output folder and checks the folder's
existing files, so two ids that differ only in letter case (``Sub01``, ``sub01``: one file on
Windows and macOS disks) never share a file either: the later one gets the hashed form.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

__all__ = ["MAX_STEM_LENGTH", "CaseFileNames", "case_file_stem", "case_id_from_stem"]

MAX_STEM_LENGTH = 120
"""Longest stem (characters, all ASCII): room for an extension and temporary-file affixes within 255 bytes."""

_KEEP = frozenset(string.ascii_letters + string.digits + "_-")
_CANONICAL = re.compile(r"[A-Za-z0-9_%-]+")
_HASH_SEP = "~"
_HASH_DIGITS = 16
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{port}{i}" for port in ("COM", "LPT") for i in range(10)]
)


def _escape(text: str) -> str:
    # surrogatepass: an id from a file name that was not UTF-8 (Python's surrogate escapes) still has a name
    return "".join(f"%{b:02X}" for b in text.encode("utf-8", "surrogatepass"))


def _escaped(case_id: str) -> str:
    """Every character outside ``A-Za-z0-9_-`` as ``%XX``; a leading ``-`` and Windows device names too."""
    escaped = "".join(ch if ch in _KEEP else _escape(ch) for ch in case_id)
    if escaped.startswith("-") or escaped.upper() in _WINDOWS_DEVICES:
        escaped = _escape(escaped[0]) + escaped[1:]
    return escaped


def _hashed(case_id: str, escaped: str, max_length: int) -> str:
    digest = hashlib.sha256(case_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_DIGITS]
    keep = max(0, max_length - len(_HASH_SEP) - _HASH_DIGITS)
    prefix = escaped[:keep]
    cut = prefix.rfind("%")
    if cut > keep - 3:  # never half an escape
        prefix = prefix[:cut]
    return f"{prefix or 'case'}{_HASH_SEP}{digest}"


def case_file_stem(case_id: str, max_length: int = MAX_STEM_LENGTH) -> str:
    """The file-name stem (no extension) of ``case_id``: escaped, unique per id, at most ``max_length`` characters.

    Args:
        case_id: the case id, any text (an empty id gets a hashed stem).
        max_length: longest stem; longer escapes are cut and end with ``~<16 hex digits>``.

    Returns:
        ``[A-Za-z0-9_%-]`` characters, plus ``~`` in a hashed stem.

    Raises:
        ValueError: ``max_length`` leaves no room for the hash (under 24).

    Example::

        case_file_stem("sub.01")  # "sub%2E01"
        case_file_stem("a/b")  # "a%2Fb"
        case_file_stem("CON")  # "%43ON"
    """
    if max_length < 24:
        raise ValueError(f"case_file_stem: max_length {max_length} is too short, give at least 24")
    escaped = _escaped(case_id)
    if not escaped or len(escaped) > max_length:
        return _hashed(case_id, escaped, max_length)
    return escaped


def case_id_from_stem(stem: str) -> str | None:
    """The case id a stem of :func:`case_file_stem` was made from, or ``None`` for a hashed or foreign stem.

    A hashed stem (an id too long for a file name) is looked up in the ``case_id`` column of
    ``predictions.csv`` instead.
    """
    if not _CANONICAL.fullmatch(stem):
        return None
    try:
        case_id = unquote(stem, errors="surrogatepass")
    except UnicodeDecodeError:
        return None
    return case_id if case_file_stem(case_id, max(MAX_STEM_LENGTH, len(stem))) == stem else None


class CaseFileNames:
    """One stem per case id for the files under ``root``, never one that another case's file has.

    Args:
        root: the output folder.
        folders: its subfolders that hold case files (e.g. one per segmentation task).
        max_length: longest stem (see :func:`case_file_stem`).

    A stem that equals, ignoring letter case, the stem of a file already in one of ``folders`` (from
    an earlier run into the same folder) or given to another id in this run belongs to another case:
    the id gets its hashed stem instead. A file's stem is its name up to the first dot (stems have
    none). Predicting the same case again finds its own stem and rewrites its own files.
    """

    def __init__(self, root: str | os.PathLike, folders: Iterable[str], max_length: int = MAX_STEM_LENGTH) -> None:
        self.root = Path(root)
        self.folders = tuple(folders)
        self.max_length = max_length
        self._taken: dict[str, str] | None = None  # casefolded stem -> stem, filled on first use
        self._chosen: dict[str, str] = {}

    def reset(self) -> None:
        """Forget this run's names and rescan the folders on next use (a new run)."""
        self._taken = None
        self._chosen.clear()

    def stem(self, case_id: str) -> str:
        """The stem of ``case_id``'s files (the same for every call with that id)."""
        if case_id in self._chosen:
            return self._chosen[case_id]
        taken = self._scan() if self._taken is None else self._taken
        stem = case_file_stem(case_id, self.max_length)
        owner = taken.get(stem.casefold())
        if owner is not None and owner != stem:
            stem = _hashed(case_id, _escaped(case_id), self.max_length)
        taken.setdefault(stem.casefold(), stem)
        self._chosen[case_id] = stem
        return stem

    def path(self, folder: str, case_id: str, suffix: str) -> Path:
        """``root/folder/<stem><suffix>``, checked to stay inside ``root`` (also through links).

        Raises:
            ValueError: ``folder`` or ``suffix`` lead elsewhere, or the path is a link out of ``root``.
        """
        name = f"{self.stem(case_id)}{suffix}"
        path = self.root / folder / name
        root = self.root.resolve()
        if os.sep in suffix or "/" in suffix or not path.resolve().is_relative_to(root):
            raise ValueError(
                f"the output file of case {case_id!r}, {path}, is outside the output folder {root}; "
                "remove the link or choose folder names without '..' or separators"
            )
        return path

    def _scan(self) -> dict[str, str]:
        taken: dict[str, str] = {}
        for folder in self.folders:
            try:
                with os.scandir(self.root / folder) as entries:
                    for entry in entries:
                        stem = entry.name.split(".", 1)[0]
                        if stem:
                            taken.setdefault(stem.casefold(), stem)
            except (FileNotFoundError, NotADirectoryError):
                continue
        self._taken = taken
        return taken
