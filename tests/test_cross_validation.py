"""``medmtl cv``: real bundle folds on tiny demo data, out-of-fold pooling, resume, refusals, nested MLflow runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medmtl.cli import main
from medmtl.data.demo import generate_demo_data
from medmtl.data.spec import load_spec
from medmtl.data.splits import read_splits
from medmtl.experiments.cross_validation import CV_FILE, CVError, run_cv
from medmtl.experiments.cv_report import pool_results
from medmtl.metrics.calibration import apply_temperature, read_calibration
from medmtl.metrics.decisions import DECISIONS_FILE, Decisions
from medmtl.metrics.postprocessing import CANDIDATE_PREFIX, POSTPROCESSING_FILE, Postprocessing
from medmtl.metrics.report import load_evaluation
from medmtl.metrics.results import EvaluationResults, TaskResult

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "data_specs" / "demo.yaml"


def _tiny(data: Path) -> list[str]:
    """Overrides that make one demo fold take seconds on a CPU."""
    return [
        "--data_spec",
        str(SPEC),
        "--dataset_dir",
        str(data),
        "--spatial_size",
        "[32,32]",
        "--epochs",
        "1",
        "--val_interval",
        "1",
        "--batch_size",
        "8",
        "--tracking",
        "mlflow",
    ]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> dict:
    """Two folds through the CLI (train + out-of-fold evaluation each, MLflow in a SQLite store)."""
    work = tmp_path_factory.mktemp("cv")
    generate_demo_data(work / "data", num_cases=32, seed=0)
    data = work / "data" / "demo2d"
    out = work / "cv"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    try:
        code = main(["cv", "--bundle", "demo", "--folds", "2", "--output_dir", str(out), *_tiny(data)])
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return {"code": code, "out": out, "data": data, "work": work}


def test_folds_cover_the_development_cases_once_and_never_the_test_split(cv_run) -> None:
    assert cv_run["code"] == 0
    out, data = cv_run["out"], cv_run["data"]
    plain = load_spec(SPEC).build_cases(root=data).cases
    test = {c["case_id"] for c in plain if c["split"] == "test"}
    development = {c["case_id"] for c in plain if c["split"] in ("train", "val")}
    seen: list[str] = []
    for fold in range(2):
        recorded = read_splits(out / f"fold_{fold}" / "splits.json")
        held_out = {case for case, split in recorded.items() if split == "val"}
        assert held_out and held_out <= development
        assert {case for case, split in recorded.items() if split == "test"} == test
        oof = load_evaluation(out / f"fold_{fold}" / "oof")
        assert set(oof.case_ids()) <= held_out
        seen += oof.case_ids()
    assert len(seen) == len(set(seen))  # each development case predicted by one fold only


def test_cv_report_pools_the_folds_with_intervals(cv_run) -> None:
    report = cv_run["out"] / "cv_report"
    summary = json.loads((report / "cv_summary.json").read_text())
    assert len(summary["folds"]) == 2 and set(summary["pooled"]) == {"lesion", "malignant"}
    folds = [load_evaluation(cv_run["out"] / f"fold_{k}" / "oof") for k in range(2)]
    pooled = pool_results(folds)
    for name, entry in summary["pooled"].items():
        assert entry["cases"] == sum(f[name].num_cases for f in folds) == pooled[name].num_cases
        assert entry["value"] == pytest.approx(pooled[name].primary()[1], nan_ok=True)
        if not np.isnan(entry["value"]):
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert "fold 1" in (report / "cv.html").read_text() and (report / "report.html").is_file()
    pooled_on_disk = load_evaluation(report)
    assert sorted(pooled_on_disk.case_ids()) == sorted(pooled.case_ids())


def test_decisions_and_temperature_are_chosen_on_out_of_fold_predictions(cv_run) -> None:
    out = cv_run["out"]
    tasks = load_spec(SPEC).tasks
    pooled = load_evaluation(out / "cv_report")["malignant"]
    decisions = Decisions.load(out / DECISIONS_FILE, tasks)
    threshold = float(decisions["malignant"].threshold_value())
    assert pooled.probabilities.min() - 1e-6 <= threshold <= pooled.probabilities.max() + 1e-6
    record = read_calibration(out / "calibration.json", tasks)
    assert record.tasks["malignant"].fitted_on == "out-of-fold"
    assert record.tasks["malignant"].num_cases == pooled.num_cases
    assert record.tasks["malignant"].nll_after <= record.tasks["malignant"].nll_before + 1e-9


def test_postprocessing_is_chosen_on_the_out_of_fold_dice_of_its_candidates(cv_run) -> None:
    out = cv_run["out"]
    tasks = load_spec(SPEC).tasks
    pooled = load_evaluation(out / "cv_report")["lesion"]
    chosen = Postprocessing.load(out / POSTPROCESSING_FILE, tasks)["lesion"]
    # every candidate was scored per case during the folds' out-of-fold evaluations
    names = [m[len(CANDIDATE_PREFIX) :] for m in pooled.case_metrics if m.startswith(CANDIDATE_PREFIX)]
    assert sorted(names) == sorted(["keep_largest", "remove_small_0.1", "remove_small_0.25"])
    assert chosen.dice["none"] == pytest.approx(pooled.primary()[1], nan_ok=True)
    for name in names:
        assert chosen.dice[name] == pytest.approx(pooled.metrics()[f"{CANDIDATE_PREFIX}{name}"], nan_ok=True)
    best = max(chosen.dice.values())
    if chosen.op.name == "none":
        assert chosen.dice["none"] >= best - 1e-9  # kept only when it beats the plain prediction
    else:
        assert chosen.dice[chosen.op.name] == best > chosen.dice["none"]
    summary = json.loads((out / "cv_report" / "cv_summary.json").read_text())
    assert summary["postprocessing"]["tasks"] == {"lesion": chosen.op.name}
    assert POSTPROCESSING_FILE in (out / "cv_report" / "cv.html").read_text()


def test_fold_runs_are_nested_under_one_parent_mlflow_run(cv_run) -> None:
    from mlflow.tracking import MlflowClient

    record = json.loads((cv_run["out"] / CV_FILE).read_text())
    client = MlflowClient(f"sqlite:///{cv_run['work'] / 'mlflow.db'}")
    parent = client.get_run(record["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    folds = sorted(r.data.tags["medmtl.cv_fold"] for r in children if "medmtl.cv_fold" in r.data.tags)
    assert folds == ["0", "0", "1", "1"]  # training and out-of-fold evaluation of each fold
    stages = sorted(r.data.tags["medmtl.cv_stage"] for r in children if "medmtl.cv_stage" in r.data.tags)
    assert stages == ["fold 0", "fold 1", "fold ensemble"]  # test-split evaluations
    assert parent.info.status == "FINISHED" and parent.data.tags["medmtl.cv_folds"] == "2"


def test_fold_ensemble_averages_the_folds_probabilities_on_the_test_split(cv_run) -> None:
    out = cv_run["out"]
    folds = [load_evaluation(out / f"fold_{k}" / "test")["malignant"] for k in range(2)]
    ensemble = load_evaluation(out / "ensemble_test")["malignant"]
    assert folds[0].case_ids == folds[1].case_ids == ensemble.case_ids and ensemble.num_cases > 0
    expected = (folds[0].probabilities + folds[1].probabilities) / 2
    np.testing.assert_allclose(ensemble.probabilities, expected, atol=1e-5)
    assert not np.allclose(folds[0].probabilities, folds[1].probabilities)  # two different models
    test = json.loads((out / "cv_report" / "cv_summary.json").read_text())["test"]
    lesion = [load_evaluation(out / f"fold_{k}" / "test")["lesion"].primary()[1] for k in range(2)]
    assert test["mean_single_fold"]["lesion"] == pytest.approx(sum(lesion) / 2)
    ensemble_dice = load_evaluation(out / "ensemble_test")["lesion"].primary()[1]
    assert test["ensemble"]["lesion"]["value"] == pytest.approx(ensemble_dice) and 0.0 <= ensemble_dice <= 1.0
    # the ensemble at the out-of-fold threshold, with calibration before / after the out-of-fold temperature
    decided = json.loads((out / "ensemble_test" / "summary.json").read_text())
    threshold = float(Decisions.load(out / DECISIONS_FILE, load_spec(SPEC).tasks)["malignant"].threshold_value())
    assert ensemble.threshold == pytest.approx(threshold)  # nothing refitted on the test cases
    assert test["ensemble"] and "href='../ensemble_test/report.html'" in (out / "cv_report" / "cv.html").read_text()
    record = read_calibration(out / "calibration.json")
    assert decided["calibration"]["malignant"]["temperature"]["value"] == pytest.approx(
        record.tasks["malignant"].temperature
    )


def test_a_cross_validation_folder_infers_as_its_fold_ensemble_with_the_out_of_fold_choices(cv_run) -> None:
    out = cv_run["out"]
    ensemble = load_evaluation(out / "ensemble_test")["malignant"]
    threshold = float(Decisions.load(out / DECISIONS_FILE, load_spec(SPEC).tasks)["malignant"].threshold_value())
    assert ensemble.threshold == pytest.approx(threshold)  # the test evaluation already decides at it
    cmd = [sys.executable, "-m", "medmtl.cli", "run", "demo", "inference", "--output_dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with (out / "predictions" / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    probability = dict(zip(ensemble.case_ids, ensemble.probabilities.reshape(-1), strict=True))
    # the test split, by the ensemble (evaluation scores the cases labelled for the task, inference every case)
    assert set(probability) <= {r["case_id"] for r in rows} and len(probability) > 0
    temperature = read_calibration(out / "calibration.json").tasks["malignant"].temperature
    for row in (r for r in rows if r["case_id"] in probability):
        p = probability[row["case_id"]]
        calibrated = apply_temperature(np.array([p]), temperature, "binary")[0]
        assert float(row["malignant_probability"]) == pytest.approx(calibrated, abs=2e-6)
        assert int(row["malignant"]) == int(p >= threshold)
        assert 0.0 <= float(row["malignant_entropy"]) <= 1.0
    spread = [float(r["malignant_fold_std"]) for r in rows]
    assert min(spread) >= 0 and max(spread) > 0  # two different folds disagree somewhere


def test_resume_skips_finished_folds_and_other_settings_are_refused(cv_run) -> None:
    out, data = cv_run["out"], cv_run["data"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("fold_*/oof/summary.json")}
    calls: list[list[str]] = []
    overrides = _tiny(data)
    result = run_cv("demo", 2, out, overrides, runner=lambda argv, env: calls.append(argv) or 0)
    assert calls == [] and result.skipped == [0, 1]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    changed = [*overrides[:-4], "--epochs", "2", *overrides[-2:]]
    with pytest.raises(CVError, match=r"other settings[\s\S]*overrides: recorded"):
        run_cv("demo", 2, out, changed, runner=lambda argv, env: 0)
    with pytest.raises(CVError, match="folds: recorded 2, now 3"):
        run_cv("demo", 3, out, overrides, runner=lambda argv, env: 0)


def test_bad_arguments_are_refused_before_anything_runs(tmp_path) -> None:
    never = lambda argv, env: pytest.fail("nothing may run")  # noqa: E731
    with pytest.raises(CVError, match="--output_dir is set by medmtl cv"):
        run_cv("demo", 2, tmp_path / "a", ["--output_dir", "x"], runner=never)
    with pytest.raises(CVError, match="method 'kfold'"):
        run_cv("demo", 2, tmp_path / "b", ["--spec_overrides", "{'splits': {'method': 'kfold'}}"], runner=never)
    with pytest.raises(SystemExit):  # argparse: --folds must be an integer >= 2
        main(["cv", "--bundle", "demo", "--folds", "1", "--output_dir", str(tmp_path / "c")])
    assert main(["cv", "--bundle", "no_such_bundle", "--output_dir", str(tmp_path / "d")]) == 1
    assert not (tmp_path / "d").exists()


def test_pool_refuses_a_case_in_two_folds() -> None:
    task = load_spec(SPEC).task("malignant")
    fold = EvaluationResults.from_results(
        [TaskResult(task, ["a", "b"], probabilities=[[0.2], [0.7]], labels=[[0], [1]])]
    )
    with pytest.raises(ValueError, match="in the validation of two folds"):
        pool_results([fold, fold])


@pytest.mark.parametrize("trained_on_the_counts", [True, False])
def test_prior_correction_is_kept_only_when_it_raises_the_out_of_fold_balanced_accuracy(trained_on_the_counts) -> None:
    # out-of-fold labels 70/15/15; a model whose probabilities carry those counts as its prior gains from the
    # correction, a model that already decides with equal priors (likelihood argmax: balanced accuracy optimal) loses
    from medmtl.data.tasks import Task
    from medmtl.experiments.cv_report import out_of_fold_decisions

    task = Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"])
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=900, p=[0.7, 0.15, 0.15])
    likelihood = np.exp(np.eye(3)[y] * 1.0 + rng.normal(size=(900, 3)))
    p = likelihood * (np.bincount(y, minlength=3) if trained_on_the_counts else 1.0)
    p /= p.sum(1, keepdims=True)
    pooled = EvaluationResults.from_results([TaskResult(task, [f"c{i}" for i in range(900)], p, y)])
    decision = out_of_fold_decisions(pooled)["diagnosis"]
    figures = decision.validation
    if trained_on_the_counts:
        assert decision.rule == "prior_correction"
        assert figures["decision"]["balanced_accuracy"] > figures["argmax"]["balanced_accuracy"]
        assert np.allclose(decision.prior_weights, (1 / np.bincount(y)) / (1 / np.bincount(y)).sum())
    else:
        assert decision.rule == "argmax" and decision.prior_weights is None and "decision" not in figures
