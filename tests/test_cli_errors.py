"""Every ``medmtl`` command ends in one named error and exit status 1, never a traceback.

Real damaged artefacts given to ``medmtl report`` / ``medmtl summary``: a ``predictions.npz`` holding
pickled objects (whose ``__reduce__`` would create a sentinel file if it ran), a truncated one, one
of other tasks, an invalid ``summary.json``; plus an unexpected exception, shown with ``--debug``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medmtl import cli
from medmtl.data.tasks import Task
from medmtl.metrics.results import EvaluationResults, ResultsFileError, TaskResult

TASK = Task(name="malignant", kind="binary")


class _Payload:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.fixture()
def eval_dir(tmp_path) -> Path:
    """A folder as an evaluation leaves it: summary.json with the tasks, predictions.npz."""
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"tasks": [TASK.model_dump(mode="json")]}))
    probabilities = np.array([[0.2], [0.7], [0.4], [0.9]])
    labels = np.array([[0], [1], [0], [1]])
    result = TaskResult(TASK, ["a", "b", "c", "d"], probabilities=probabilities, labels=labels)
    EvaluationResults.from_results([result]).save(folder / "predictions.npz")
    return folder


def _main(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_report_refuses_pickled_predictions_without_running_them(eval_dir, tmp_path, capsys) -> None:
    sentinel = tmp_path / "code_ran"
    ids = np.empty(1, dtype=object)
    ids[0] = _Payload(sentinel)
    np.savez(eval_dir / "predictions.npz", **{"malignant.case_ids": ids, "malignant.threshold": np.asarray(0.5)})
    code, err = _main(capsys, "report", str(eval_dir))
    assert code == 1 and err.startswith("error: refused: ") and "pickled Python objects" in err
    assert "allow_pickle" not in err and not sentinel.exists()


def test_report_names_truncated_and_foreign_predictions(eval_dir, capsys) -> None:
    assert cli.main(["report", str(eval_dir)]) == 0  # the intact folder builds its report
    capsys.readouterr()
    predictions = eval_dir / "predictions.npz"
    intact = predictions.read_bytes()
    predictions.write_bytes(intact[: len(intact) // 2])
    code, err = _main(capsys, "report", str(eval_dir))
    assert code == 1 and "truncated or corrupt" in err and str(predictions) in err
    np.savez(predictions, **{"grade.case_ids": np.array(["a"])})
    code, err = _main(capsys, "report", str(eval_dir))
    assert code == 1 and "no arrays for task 'malignant'" in err and "grade" in err
    with pytest.raises(ResultsFileError, match="no arrays for task"):
        EvaluationResults.load(predictions, [TASK])


def test_report_names_predictions_that_are_a_folder_or_a_pipe(eval_dir, capsys) -> None:
    predictions = eval_dir / "predictions.npz"
    predictions.unlink()
    predictions.mkdir()
    code, err = _main(capsys, "report", str(eval_dir))
    assert code == 1 and f"predictions file {predictions} is a folder: it is not read" in err
    predictions.rmdir()
    os.mkfifo(predictions)  # opening it would wait for a writer
    code, err = _main(capsys, "report", str(eval_dir))
    assert code == 1 and "is not a regular file (a pipe, device or socket)" in err


def test_report_and_summary_with_a_damaged_summary_json(eval_dir, tmp_path, capsys) -> None:
    (eval_dir / "summary.json").write_text('{"tasks": [')
    code, err = _main(capsys, "report", str(eval_dir))
    assert code == 1 and "summary.json is not valid JSON" in err
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "summary.json").write_text("{broken")
    code = cli.main(["summary", str(run)])
    out = capsys.readouterr().out
    assert code == 0 and "summary.json cannot be read" in out and "MLflow runs:" in out  # the rest still shown
    code, err = _main(capsys, "summary", str(tmp_path / "nowhere"))
    assert code == 1 and err.startswith("error: run folder ") and "does not exist" in err


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"tasks": 5}, "its 'tasks' is a JSON int, not a list"),
        ({"settings": [1]}, "its 'settings' (an object"),
        ({"settings": {"n_resamples": "many"}}, "its 'settings' hold a value that is not a number"),
        ({"settings": {"n_resamples": 10**12}}, "ask for 1000000000000 bootstrap resamples, more than the 100000"),
        ({"settings": {"primary": 5}}, "'primary' mapping task names to metric names"),
        ({"history": {"loss": 5}}, "or 'history' (an object of number lists) is malformed"),
        ({"history": "x"}, "or 'history' (an object of number lists) is malformed"),
    ],
)
def test_report_names_a_summary_json_of_the_wrong_shape(eval_dir, capsys, change, says) -> None:
    summary = json.loads((eval_dir / "summary.json").read_text())
    (eval_dir / "summary.json").write_text(json.dumps({**summary, **change}))
    code, err = _main(capsys, "report", str(eval_dir))
    assert code == 1 and err.startswith(f"error: {eval_dir / 'summary.json'}: ") and says in err


def test_unexpected_errors_are_named_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch) -> None:
    import medmtl.experiments.summary

    def broken(run_dir, tracking_uri=None):
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(medmtl.experiments.summary, "run_summary_text", broken)
    code, err = _main(capsys, "summary", str(tmp_path))
    assert (
        code == 1 and err.strip() == "error (RuntimeError): something unforeseen (run with --debug for the traceback)"
    )
    with pytest.raises(RuntimeError, match="something unforeseen"):
        cli.main(["--debug", "summary", str(tmp_path)])


def test_the_installed_command_exits_1_without_a_traceback(eval_dir) -> None:
    (eval_dir / "predictions.npz").write_bytes(b"PK\x03\x04 truncated")
    result = subprocess.run(
        [sys.executable, "-m", "medmtl.cli", "report", str(eval_dir)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert "truncated or corrupt" in result.stderr


def test_a_none_override_is_refused_instead_of_silently_dropped(tmp_path, capsys) -> None:
    """MONAI's runner drops ``None`` values: the key would keep the plan's value without a word."""
    code = cli.main(["run", "--print", "demo", "train", "--output_dir", str(tmp_path), "--time_limit_minutes", "None"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--time_limit_minutes None" in err and "give a value" in err
    assert cli.main(["cv", "--bundle", "demo", "--output_dir", str(tmp_path / "cv"), "--val_interval=None"]) == 2
    assert "--val_interval None" in capsys.readouterr().err and not (tmp_path / "cv").exists()
    assert (
        cli.main(["run", "--print", "demo", "train", "--output_dir", str(tmp_path), "--time_limit_minutes", "600"]) == 0
    )
