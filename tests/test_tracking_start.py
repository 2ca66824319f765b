"""usable_tracking_uri: a tracking store that cannot be opened at the start degrades to the offline store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from medmtl.tracking import FALLBACK_DB, usable_tracking_uri

LOCK_DB = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("CREATE TABLE IF NOT EXISTS t (x)")
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(300)
"""


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_locked_sqlite_store_falls_back_with_one_warning(tmp_path, monkeypatch, caplog) -> None:
    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    locker = subprocess.Popen([sys.executable, "-c", LOCK_DB, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # MONAI's handler prefers it over the config's URI
        with caplog.at_level("WARNING"):
            chosen = usable_tracking_uri("sqlite:///ignored.db", fallback_dir=tmp_path / "run")
    finally:
        locker.kill()
        locker.wait(timeout=30)
    fallback = f"sqlite:///{tmp_path / 'run' / FALLBACK_DB}"
    assert chosen == fallback
    assert os.environ["MLFLOW_TRACKING_URI"] == fallback  # what MLFlowHandler will open
    (warning,) = _warnings(caplog)
    assert "cannot be opened at the start of the run" in warning and "database is locked" in warning
    assert "\n" not in warning


def test_http_server_down_is_left_to_the_tracking_guard(tmp_path, caplog) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    uri = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with caplog.at_level("WARNING"):
        assert usable_tracking_uri(uri, fallback_dir=tmp_path) == uri
    assert time.perf_counter() - start < 1.0 and not _warnings(caplog)  # no probe: TrackingGuard warns once


@pytest.mark.parametrize("uri", ["unknownscheme://x"])
def test_other_errors_are_left_to_mlflow(tmp_path, uri) -> None:
    assert usable_tracking_uri(uri, fallback_dir=tmp_path) == uri
