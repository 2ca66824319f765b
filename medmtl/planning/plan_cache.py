"""What a second ``medmtl plan`` on unchanged data may reuse: the validation outcome and the trial steps.

Why: the fingerprint is cached per case by file content (:mod:`medmtl.planning.fingerprint`); the
validation (every file opened again) and the trial steps (fresh processes building the network)
would still cost most of a re-run. Both depend only on the data's bytes, the spec, the overrides,
the bundle's config and the software, so they are kept in ``plan_cache.json`` beside the plan under
a sha256 of exactly those; any change (one byte of one image, another torch) misses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import monai
import torch

import medmtl
from medmtl.atomic_io import atomic_write

__all__ = ["PlanCache", "data_digest"]

_VERSION = 2  # 2: trials time the bundle's trainer (handlers, loader), not bare steps


def data_digest(root: str | os.PathLike, spec: str | os.PathLike, overrides: Mapping[str, Any]) -> str:
    """sha256 over the spec file, the overrides and the content of every file under ``root``."""
    digest = hashlib.sha256()
    digest.update(Path(spec).read_bytes())
    digest.update(json.dumps(overrides, sort_keys=True, default=str).encode())
    base = Path(root)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(base)).encode())
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def _software() -> dict[str, str]:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else os.uname().machine
    return {"medmtl": medmtl.__version__, "torch": torch.__version__, "monai": monai.__version__, "device": device}


class PlanCache:
    """``plan_cache.json``: ``validated`` data digests and trial results by request digest.

    Args:
        path: the cache file (beside the plan).
        data: :func:`data_digest` of this run's data.
    """

    def __init__(self, path: str | os.PathLike, data: str) -> None:
        self.path = Path(path)
        self.data = data
        self._entries: dict[str, Any] = {"version": _VERSION, "validated": [], "trials": {}}
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            loaded = None
        if isinstance(loaded, dict) and loaded.get("version") == _VERSION:
            self._entries = loaded

    def validated(self) -> bool:
        """Whether this exact data passed validation before."""
        return self.data in self._entries["validated"]

    def mark_validated(self) -> None:
        self._entries["validated"] = [self.data]
        self._save()

    def _key(self, request: Mapping[str, Any]) -> str:
        text = json.dumps({"data": self.data, "software": _software(), **request}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def trials(self, request: Mapping[str, Any]) -> dict | None:
        """The answer stored for this trial request on this data and software, else ``None``."""
        return self._entries["trials"].get(self._key(request))

    def store_trials(self, request: Mapping[str, Any], results: dict) -> None:
        self._entries["trials"][self._key(request)] = results
        self._save()

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self._entries, indent=1).encode())
