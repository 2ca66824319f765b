"""What the light commands import, and the bundle run ``medmtl predict`` makes in its own process.

``import monai`` loads every MONAI module (``monai/__init__.py``), ignite and MLflow with them: seconds
before anything happens. ``medmtl --help`` and ``medmtl validate`` of the spec and case table
(``--no-files --no-duplicates``) need none of it, so each runs in a fresh interpreter here and reports
what it loaded. ``medmtl predict`` runs the bundle's inference in its own process
(:func:`medmtl.bundle_in_process.run_bundle_in_process`) instead of starting Python, torch and MONAI again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medmtl.bundle_in_process import run_bundle_in_process
from medmtl.data.demo import generate_demo2d

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("monai", "monai.handlers", "ignite", "mlflow")

# medmtl's CLI in a fresh interpreter; the last line of stdout says its exit status and what it loaded
_PROBE = f"""
import json, sys
from medmtl.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as stop:
    status = stop.code
print(json.dumps({{"status": status, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _medmtl_fresh(*argv: str) -> tuple[int, list[str], str]:
    """``medmtl ARGV`` in a new interpreter: its exit status, the heavy modules it loaded, its output."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    *text, last = result.stdout.splitlines()
    found = json.loads(last)
    return found["status"], found["loaded"], "\n".join(text) + result.stderr


def test_help_loads_neither_monai_nor_ignite_nor_mlflow() -> None:
    status, loaded, text = _medmtl_fresh("--help")
    assert status == 0 and "validate" in text and "predict" in text
    assert loaded == []


def test_validate_of_the_case_table_loads_neither_monai_nor_ignite_nor_mlflow(tmp_path) -> None:
    """The spec and the case table only: no image is opened (``--no-files``, ``--no-duplicates``, and a split
    that ignores duplicates: a duplicate-aware split reads every image's signature, through MONAI's readers)."""
    generate_demo2d(tmp_path / "demo2d", seed=0)
    spec = yaml.safe_load((REPO / "data_specs" / "demo.yaml").read_text())
    spec["splits"]["duplicates"] = "ignore"
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(spec))
    status, loaded, text = _medmtl_fresh(
        "validate", str(tmp_path / "demo.yaml"), "--root", str(tmp_path / "demo2d"), "--no-files", "--no-duplicates"
    )
    assert status == 0 and "no errors" in text, text[-2000:]
    assert loaded == []


@pytest.fixture
def config_dir(tmp_path) -> Path:
    (tmp_path / "metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    return tmp_path


def _config(folder: Path, name: str, run: str) -> list[str]:
    """``python -m monai.bundle`` arguments running the expression ``run`` (``$...``) as the config's ``run``."""
    (folder / f"{name}.json").write_text(json.dumps({"run": run}))
    return ["run", "--config_file", str(folder / f"{name}.json"), "--meta_file", str(folder / "metadata.json")]


def test_bundle_in_process_sees_monai_s_command_line(config_dir, capsys) -> None:
    """The start checks read the overrides from ``sys.argv`` (:func:`cli_overrides`), as in MONAI's process."""
    show = "$print('overrides', __import__('medmtl.engines.start_checks', fromlist=['x']).cli_overrides())"
    argv = list(sys.argv)
    assert run_bundle_in_process([*_config(config_dir, "show", show), "--answer", "42"]) == 0
    printed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("overrides"))
    assert "'answer': 42" in printed and "show.json" in printed
    assert sys.argv == argv  # given back


def test_bundle_in_process_exit_status_as_the_process_would_give(config_dir, capsys) -> None:
    assert run_bundle_in_process(_config(config_dir, "stop", "$__import__('sys').exit(3)")) == 3
    guard = "$__import__('sys').exit('NonFiniteLossError: the loss of task lesion is nan')"
    assert run_bundle_in_process(_config(config_dir, "guard", guard)) == 1
    assert "NonFiniteLossError: the loss of task lesion is nan" in capsys.readouterr().err  # printed, as Python does
    assert run_bundle_in_process(_config(config_dir, "fails", "$1 / 0")) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err  # the traceback, as Python prints it
