"""Shared fixtures: the real data folder (skipped cleanly when absent) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDMTL_SHARED_DATA", REPO.parent / "shared" / "data"))
SPECS = REPO / "data_specs"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real images); tests using it are skipped when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def specs_dir() -> Path:
    return SPECS


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """medmtl's cache (image signatures) in a session folder, never the real home; subprocesses inherit it."""
    os.environ["MEDMTL_CACHE_DIR"] = str(tmp_path_factory.mktemp("medmtl_cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny convolutions: the intra-op thread pool costs more than it saves (and the CI box is shared).

    Use per module: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
