"""Where the files that ship with medmtl live: the bundles and the data specs.

Why: bundle configs name their data spec relative to the repository root
(``data_specs/demo.yaml``), which only worked when the command ran from there. A relative path is
now looked up in the working folder first (a user's own spec wins), then next to the package: the
source checkout, or ``<prefix>/share/medmtl`` where a wheel installs them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["RESOURCES_ENV", "resolve_resource", "resources_root"]

RESOURCES_ENV = "MEDMTL_RESOURCES"  # a folder holding bundles/ and data_specs/, instead of the installed ones


def resources_root() -> Path:
    """The folder holding ``bundles/`` and ``data_specs/``: ``$MEDMTL_RESOURCES``, the checkout, or the install."""
    if os.environ.get(RESOURCES_ENV):
        return Path(os.environ[RESOURCES_ENV]).resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "bundles").is_dir() and (checkout / "data_specs").is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "medmtl"


def resolve_resource(path: str | os.PathLike) -> Path:
    """``path`` as given if it exists (absolute, or relative to the working folder), else next to the package.

    A path found nowhere is returned as given, so the caller's own "not found" message names it.
    """
    given = Path(path)
    if given.is_absolute() or given.exists():
        return given
    shipped = resources_root() / given
    return shipped if shipped.exists() else given
