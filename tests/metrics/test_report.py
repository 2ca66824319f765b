"""write_report / report_from_dir: files written, numbers match the metrics, round trip from disk."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medmtl.metrics import (
    EvaluationResults,
    Overlay,
    collect_results,
    report_from_dir,
    write_report,
)


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and (b is None or math.isnan(b))
    return a == pytest.approx(b)


@pytest.fixture
def written(tmp_path, tasks, samples):
    results = collect_results(tasks, samples)
    rng = np.random.default_rng(0)
    volume = rng.random((12, 12, 5))
    truth = np.zeros((12, 12, 5), dtype=np.int64)
    truth[2:6, 2:6, :] = 1
    overlays = [
        Overlay(samples[0]["case_id"], volume, truth, np.roll(truth, 1, axis=0)),
        (samples[1]["case_id"], volume[..., 0], truth[..., 0], truth[..., 0], "lesion"),
    ]
    history = {"train_loss": [1.0, 0.7, 0.5], "mean_primary": [0.4, 0.5, 0.6]}
    out = tmp_path / "eval"
    path = write_report(results, out, tasks, history=history, overlays=overlays, n_resamples=300)
    return results, out, path


def test_report_files_and_numbers(written, tasks):
    results, out, path = written
    assert path == out / "report.html"
    for name in ("summary.json", "predictions.npz", "overlays.npz"):
        assert (out / name).is_file(), name
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"dice_lesion.png", "roc_malignant.png", "roc_findings.png", "confusion_diagnosis.png"} <= figures
    assert {"confusion_malignant.png", "history.png", "overlay_lesion_0.png", "overlay_lesion_1.png"} <= figures
    page = path.read_text()
    for task in tasks:
        assert task.name in page
    for fig in figures:
        assert f"figures/{fig}" in page

    summary = json.loads((out / "summary.json").read_text())
    flat = results.metrics()
    for task in tasks:
        for key, value in summary["mean"][task.name].items():
            assert _close(value, flat[f"{task.name}/{key}"]), (task.name, key)
        assert summary["counts"][task.name]["labelled"] == results[task.name].num_cases
        ci = summary["ci"][task.name]
        assert ci["low"] <= ci["value"] <= ci["high"]
    assert summary["mean_primary"] == pytest.approx(flat["mean_primary"])
    assert summary["ci"]["diagnosis"]["metric"] == "balanced_accuracy"
    cm = np.array(summary["confusion_matrix"]["diagnosis"]["matrix"])
    assert cm.sum() == results["diagnosis"].num_cases
    per_case = {c["case_id"]: c["metrics"] for c in summary["metric_per_case"]}
    lesion = results["lesion"]
    first = lesion.case_ids[0]
    assert per_case[first]["lesion"]["dice"] == pytest.approx(float(lesion.dice_per_case()[0]))
    assert summary["history"]["train_loss"] == [1.0, 0.7, 0.5]


def test_report_from_dir_round_trips(written, tmp_path, tasks):
    results, out, _ = written
    again = report_from_dir(out, tmp_path / "again")
    assert again == tmp_path / "again" / "report.html"
    first = json.loads((out / "summary.json").read_text())
    second = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert first == second
    assert {p.name for p in (out / "figures").glob("*.png")} == {
        p.name for p in (tmp_path / "again" / "figures").glob("*.png")
    }
    loaded = EvaluationResults.load(out / "predictions.npz", tasks)
    for task in tasks:
        assert loaded[task.name].case_ids == results[task.name].case_ids
    in_place = report_from_dir(out)
    assert in_place == out / "report.html"
    assert json.loads((out / "summary.json").read_text()) == first


def test_report_errors(tmp_path, tasks, samples, kit):
    with pytest.raises(FileNotFoundError, match="summary.json"):
        report_from_dir(tmp_path)
    results = collect_results(tasks[1:], samples)
    with pytest.raises(KeyError, match="lesion"):
        write_report(results, tmp_path / "x", tasks)
    seg_only = collect_results([kit.SEG], samples)
    with pytest.raises(ValueError, match="not a segmentation task"):
        write_report(
            seg_only, tmp_path / "y", overlays=[("a", np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4)), "x")]
        )
    with pytest.raises(ValueError, match="differs from image slice"):
        write_report(seg_only, tmp_path / "z", overlays=[("a", np.zeros((4, 4)), np.zeros((5, 5)), np.zeros((4, 4)))])


def test_report_without_labelled_cases(tmp_path, kit, samples):
    for s in samples:
        s["malignant_present"] = False
    results = collect_results([kit.BIN, kit.MCL], samples)
    path = write_report(results, tmp_path / "r", n_resamples=50)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["counts"]["malignant"]["labelled"] == 0
    assert summary["mean"]["malignant"]["auroc"] is None
    assert summary["mean_primary"] == pytest.approx(results["diagnosis"].metrics()["balanced_accuracy"])
    assert "malignant" in path.read_text()
