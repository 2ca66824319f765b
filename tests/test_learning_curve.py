"""Learning-curve sweep: real bundle runs on tiny demo data, resume, failures recorded, and the pieces around them."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from medmtl.bundle_layers import bundle_command, config_layers
from medmtl.cli import build_parser, main
from medmtl.data.demo import generate_demo2d
from medmtl.experiments.learning_curve import (
    MEAN_PRIMARY,
    CurvePoint,
    override_args,
    read_primary_metrics,
    run_learning_curve,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "bundles" / "demo"
FRACTIONS = (0.25, 1.0)


def _tiny(data: Path) -> dict:
    """Overrides that make one demo run take seconds on a CPU."""
    return {
        "data_spec": str(REPO / "data_specs" / "demo.yaml"),
        "dataset_dir": str(data / "demo2d"),
        "spatial_size": [32, 32],
        "epochs": 1,
        "val_interval": 1,
        "batch_size": 8,
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """A sweep in which supervised runs succeed and every semi-supervised run fails (a bogus threshold),
    then a resumed sweep at 100 % with a valid threshold: finished runs must be reused, failed ones
    retried. Eight bundle processes in all (each costs seconds of imports), to stay quick on a CPU."""
    work = tmp_path_factory.mktemp("learning_curve")
    generate_demo2d(work / "data" / "demo2d", num_cases=24, seed=0)  # the 2D set only: what the demo bundle reads
    out = work / "sweep"
    first = run_learning_curve(
        DEMO,
        out,
        fractions=FRACTIONS,
        modes=("supervised", "semi_supervised", "weak_strong"),
        overrides={**_tiny(work / "data"), "semi_supervised_threshold": 5},
        cwd=work,
    )
    first_csv = (out / "learning_curve.csv").read_text()
    finished = sorted(out.glob("supervised/*/eval/summary.json")) + sorted(out.glob("supervised/*/models/best.pt"))
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    second = run_learning_curve(
        DEMO, out, fractions=(1.0,), modes=("supervised", "semi_supervised"), overrides=_tiny(work / "data"), cwd=work
    )
    return {"out": out, "first": first, "first_csv": first_csv, "second": second, "mtimes": mtimes}


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


def test_sweep_writes_table_json_markdown_and_plot(sweep) -> None:
    out = sweep["out"]
    for name in ("csv", "json", "md", "png"):
        assert (out / f"learning_curve.{name}").is_file(), name
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    markdown = sweep["first"].to_markdown()
    assert "| supervised | 25% |" in markdown and "lesion (dice)" in markdown and "malignant (auroc)" in markdown
    assert "| semi-supervised | 25% | " in markdown and "failed (train)" in markdown


def _check_rows(rows: list[dict[str, str]], expected: set[tuple[str, float, str]]) -> None:
    assert {(r["mode"], float(r["fraction"]), r["task"]) for r in rows} == expected and len(rows) == len(expected)
    metrics = {r["task"]: r["metric"] for r in rows}
    assert metrics["lesion"] == "dice" and metrics["malignant"] == "auroc"
    for row in rows:
        if row["value"]:  # a metric can be undefined (no positive test case): empty, not a fake number
            assert 0.0 <= float(row["value"]) <= 1.0, row
        if row["ci_low"]:
            assert float(row["ci_low"]) <= float(row["ci_high"])


def test_rows_per_mode_fraction_and_task_with_values_in_unit_range(sweep) -> None:
    tasks = ("lesion", "malignant", MEAN_PRIMARY)
    first = _csv_rows(sweep["first_csv"])
    _check_rows(first, {("supervised", f, t) for f in FRACTIONS for t in tasks})
    labelled = {float(r["fraction"]): int(r["labelled_cases"]) for r in first}
    assert 0 < labelled[0.25] < labelled[1.0]
    second = _csv_rows((sweep["out"] / "learning_curve.csv").read_text())
    _check_rows(second, {(m, 1.0, t) for m in ("supervised", "semi_supervised") for t in tasks})
    assert {int(r["labelled_cases"]) for r in second} == {labelled[1.0]}  # same budget in every mode


def test_failed_runs_and_missing_configs_are_recorded_not_fatal(sweep) -> None:
    first = sweep["first"]
    assert [r.status for r in first.runs if r.mode == "supervised"] == ["done", "done"]
    failed = first.failed
    assert [(r.mode, r.fraction, r.stage) for r in failed] == [("semi_supervised", f, "train") for f in FRACTIONS]
    assert all("threshold" in r.log_tail and r.log_file.is_file() for r in failed)
    assert "pretrain.json" in first.skipped["weak_strong"]  # the demo bundle has no weak labels
    assert not (sweep["out"] / "weak_strong").exists()


def test_resumed_sweep_reuses_finished_runs_and_retries_failed_ones(sweep) -> None:
    second = sweep["second"]
    assert [(r.mode, r.status) for r in second.runs] == [("supervised", "reused"), ("semi_supervised", "done")]
    assert not second.failed
    for path, mtime in sweep["mtimes"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten by the resumed sweep"
    saved = json.loads((sweep["out"] / "learning_curve.json").read_text())
    assert [(r["mode"], r["status"]) for r in saved["runs"]] == [("supervised", "reused"), ("semi_supervised", "done")]
    semi_log = (sweep["out"] / "semi_supervised" / "1.0" / "logs" / "train.log").read_text()
    assert "semi_supervised.json" in semi_log.splitlines()[0]  # the exact command heads its log


# -- the pieces, without training ------------------------------------------------------------------


def test_run_commands_are_what_a_user_types(tmp_path) -> None:
    args = override_args({"epochs": 2, "spatial_size": [32, 32], "dataset_dir": Path("/d"), "amp": None}, "mlflow")
    assert args == ["--epochs", "2", "--spatial_size", "[32, 32]", "--dataset_dir", "/d", "--amp", "None"] + [
        "--tracking",
        "mlflow",
    ]
    assert override_args() == []
    result = run_learning_curve("demo", tmp_path, fractions=(0.5,), modes=("supervised",), dry_run=True)
    train, evaluate = result.runs[0].commands  # the bundle's layers (as `medmtl run` has them), then overrides
    assert train[:5] == [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    assert train[: train.index("--seed")] == bundle_command(DEMO, ["train"])
    assert evaluate[: evaluate.index("--seed")] == bundle_command(DEMO, ["evaluate"])
    assert train[5] == "[" + ",".join(repr(str(f)) for f in config_layers(DEMO, "train")) + "]"


def test_read_primary_metrics_uses_the_tasks_primary_metric(tmp_path) -> None:
    summary = {
        "tasks": [
            {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
            {"name": "diagnosis", "kind": "multiclass", "classes": ["a", "b", "c"]},
        ],
        "settings": {"primary": {}},
        "mean": {"lesion": {"dice": 0.7, "hd95": 3.0}, "diagnosis": {"balanced_accuracy": 0.6, "accuracy": 0.8}},
        "ci": {
            "lesion": {"metric": "dice", "value": 0.7, "low": 0.6, "high": 0.8},
            "diagnosis": {"metric": "balanced_accuracy", "value": 0.6, "low": None, "high": None},
        },
        "mean_primary": 0.65,
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    assert read_primary_metrics(path) == [
        CurvePoint("lesion", "dice", 0.7, 0.6, 0.8),
        CurvePoint("diagnosis", "balanced_accuracy", 0.6, None, None),
        CurvePoint(MEAN_PRIMARY, MEAN_PRIMARY, 0.65),
    ]
    path.write_text("{}")
    with pytest.raises(ValueError, match="not an evaluation summary"):
        read_primary_metrics(path)


def test_bad_arguments_are_refused_before_anything_runs(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        run_learning_curve(DEMO, tmp_path, fractions=(0.0, 0.5), dry_run=True)
    with pytest.raises(ValueError, match="unknown learning-curve mode"):
        run_learning_curve(DEMO, tmp_path, modes=("fixmatch",), dry_run=True)
    with pytest.raises(ValueError, match="label_fraction"):
        run_learning_curve(DEMO, tmp_path, overrides={"label_fraction": 0.5}, dry_run=True)
    with pytest.raises(ValueError, match="no bundle .*: give a bundle name"):
        run_learning_curve(tmp_path, tmp_path / "out", dry_run=True)
    with pytest.raises(ValueError, match=r"\['epoch'\] are defined by none of the bundle's configs"):
        run_learning_curve(DEMO, tmp_path, overrides={"epoch": 3}, dry_run=True)  # a typo of epochs


def test_sweep_wide_overrides_go_only_to_the_runs_whose_configs_define_them(tmp_path) -> None:
    result = run_learning_curve(
        DEMO,
        tmp_path,
        fractions=(0.5,),
        modes=("supervised", "semi_supervised"),
        overrides={"semi_supervised_threshold": 0.9, "network_def#backbone_kwargs#dropout": 0.2},
        dry_run=True,
    )
    commands = {run.mode: [" ".join(c) for c in run.commands] for run in result.runs}
    supervised_train, supervised_eval = commands["supervised"]
    semi_train, _ = commands["semi_supervised"]
    assert "--semi_supervised_threshold 0.9" in semi_train
    assert "semi_supervised_threshold" not in supervised_train + supervised_eval
    assert all("--network_def#backbone_kwargs#dropout 0.2" in c for c in (supervised_train, semi_train))


def test_cli_parses_overrides_as_json_and_dry_run_prints_commands(tmp_path, capsys) -> None:
    args = build_parser().parse_args(
        ["learning-curve", "b", "o", "--fractions", "0.1", "1", "--set", "epochs=20", "--set", "spatial_size=[64,64]"]
        + ["--set", "dataset_dir=/data/busi", "--modes", "supervised"]
    )
    assert args.fractions == [0.1, 1.0] and args.modes == ["supervised"]
    assert dict(args.overrides) == {"epochs": 20, "spatial_size": [64, 64], "dataset_dir": "/data/busi"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["learning-curve", "b", "o", "--fractions", "2"])
    code = main(["learning-curve", str(DEMO), str(tmp_path / "o"), "--fractions", "0.5", "--modes", "weak_strong"])
    code += main(["learning-curve", str(DEMO), str(tmp_path / "o"), "--fractions", "0.5", "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "--label_fraction 0.5" in printed and "semi_supervised.json" in printed
    assert "weak_strong: skipped" in printed
    assert not (tmp_path / "o" / "supervised").exists()  # a dry run runs nothing
