"""Calibration: ECE / MCE / Brier against independent computations, temperature scaling, calibration.json, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, roc_auc_score

from medmtl.data import Task
from medmtl.metrics import collect_results, report_from_dir, write_report
from medmtl.metrics.calibration import (
    CALIBRATION_FILE,
    CalibrationFileError,
    CalibrationRecord,
    apply_calibration,
    apply_temperature,
    binary_calibration,
    fit_temperature,
    fit_temperatures,
    multiclass_calibration,
    negative_log_likelihood,
    read_calibration,
    reliability_bins,
    write_calibration,
)
from medmtl.metrics.results import EvaluationResults, TaskResult


def _ece_by_hand(p: np.ndarray, hit: np.ndarray, n_bins: int) -> tuple[float, float]:
    """ECE / MCE with an explicit loop over bins (lower edge open except the first, as scikit-learn bins)."""
    edges = np.linspace(0, 1, n_bins + 1)
    ece, mce = 0.0, 0.0
    for i in range(n_bins):
        inside = (p > edges[i]) & (p <= edges[i + 1]) if i else (p <= edges[1])
        if inside.any():
            gap = abs(hit[inside].mean() - p[inside].mean())
            ece += inside.mean() * gap
            mce = max(mce, gap)
    return ece, mce


def _binary_sample(n: int, planted: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn with probability sigmoid(z); the model reports sigmoid(planted * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < expit(z)).astype(np.float64)
    return expit(planted * z), y


def _multiclass_sample(n: int, planted: float, seed: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, k))
    cum = softmax(z, axis=1).cumsum(axis=1)
    y = np.minimum((rng.random((n, 1)) > cum).sum(axis=1), k - 1)
    return softmax(planted * z, axis=1), y


def test_bins_and_scores_match_independent_computations():
    rng = np.random.default_rng(3)
    p = rng.random(400) ** 2
    p[:5] = [0.0, 0.1, 0.3, 0.5, 1.0]  # values on bin edges
    y = (rng.random(400) < p).astype(np.float64)
    scores = binary_calibration(p, y, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    filled = scores.bins.count > 0
    np.testing.assert_allclose(scores.bins.frequency[filled], prob_true)
    np.testing.assert_allclose(scores.bins.confidence[filled], prob_pred)
    assert scores.bins.count.sum() == 400
    ece, mce = _ece_by_hand(p, y, 10)
    assert scores.ece == pytest.approx(ece)
    assert scores.mce == pytest.approx(mce)
    assert scores.brier == pytest.approx(np.mean((p - y) ** 2))
    assert scores.num_cases == 400


def test_hand_built_bins():
    p = np.array([0.05, 0.15, 0.15, 0.95])
    bins = reliability_bins(p, [0, 1, 0, 1], n_bins=10)
    assert bins.count.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert np.isnan(bins.confidence[2]) and np.isnan(bins.frequency[5])  # empty bins: no value, skipped
    ece, mce = bins.errors()
    assert ece == pytest.approx(0.25 * 0.05 + 0.5 * 0.35 + 0.25 * 0.05)
    assert mce == pytest.approx(0.35)
    records = bins.to_list()
    assert records[1] == {"low": 0.1, "high": pytest.approx(0.2), "count": 2, "confidence": 0.15, "frequency": 0.5}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_bins(np.array([1.2]), [1])
    empty = binary_calibration(np.zeros(0), np.zeros(0))
    assert np.isnan(empty.ece) and np.isnan(empty.brier) and empty.num_cases == 0


def test_multiclass_top_label_and_brier():
    p, y = _multiclass_sample(300, 1.0, seed=4)
    scores = multiclass_calibration(p, y, n_bins=10)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    ece, mce = _ece_by_hand(conf, hit, 10)
    assert scores.ece == pytest.approx(ece) and scores.mce == pytest.approx(mce)
    assert scores.brier == pytest.approx(np.mean(np.sum((p - np.eye(3)[y]) ** 2, axis=1)))
    prob_true, prob_pred = calibration_curve(hit, conf, n_bins=10)
    np.testing.assert_allclose(scores.bins.frequency[scores.bins.count > 0], prob_true)


def test_calibrated_sample_is_near_zero_and_overconfident_is_not():
    p_cal, y_cal = _binary_sample(6000, 1.0, seed=0)
    p_over, y_over = _binary_sample(6000, 3.0, seed=0)
    good, bad = binary_calibration(p_cal, y_cal), binary_calibration(p_over, y_over)
    assert good.ece < 0.03
    assert bad.ece > 0.1 > good.ece
    assert bad.brier > good.brier


@pytest.mark.parametrize("planted", [0.4, 3.0])
def test_temperature_scaling_recovers_the_planted_temperature(planted):
    p, y = _binary_sample(6000, planted, seed=1)
    fit = fit_temperature(p, y, "binary", name="malignant")
    assert fit.temperature == pytest.approx(planted, rel=0.1)
    after = apply_temperature(p, fit.temperature, "binary")
    assert binary_calibration(after, y).ece < 0.5 * binary_calibration(p, y).ece
    assert log_loss(y, after) < log_loss(y, p)
    assert fit.nll_before == pytest.approx(log_loss(y, p), rel=1e-6)
    assert fit.nll_after == pytest.approx(log_loss(y, after), rel=1e-6)
    assert roc_auc_score(y, after) == pytest.approx(roc_auc_score(y, p))  # ranking kept


def test_multiclass_and_multilabel_temperatures():
    p, y = _multiclass_sample(4000, 2.5, seed=2)
    fit = fit_temperature(p, y, "multiclass")
    assert fit.temperature == pytest.approx(2.5, rel=0.1)
    after = apply_temperature(p, fit.temperature, "multiclass")
    np.testing.assert_allclose(after.sum(axis=1), 1.0)
    np.testing.assert_array_equal(after.argmax(axis=1), p.argmax(axis=1))
    assert multiclass_calibration(after, y).ece < 0.5 * multiclass_calibration(p, y).ece
    assert log_loss(y, after, labels=[0, 1, 2]) < log_loss(y, p, labels=[0, 1, 2])
    assert negative_log_likelihood(p, y, "multiclass") == pytest.approx(log_loss(y, p, labels=[0, 1, 2]), rel=1e-6)
    # multilabel: one temperature shared by the labels
    cols = [_binary_sample(3000, 2.0, seed=s) for s in (5, 6)]
    pm, ym = np.stack([c[0] for c in cols], axis=1), np.stack([c[1] for c in cols], axis=1)
    shared = fit_temperature(pm, ym, "multilabel")
    assert shared.temperature == pytest.approx(2.0, rel=0.1)
    np.testing.assert_allclose(apply_temperature(pm, 1.0, "multilabel"), np.clip(pm, 1e-7, 1 - 1e-7))


def test_fit_and_apply_refuse_bad_input():
    with pytest.raises(ValueError, match=r"task 'malignant'.*3 labelled cases.*only negative labels"):
        fit_temperature(np.array([0.2, 0.3, 0.4]), np.zeros(3), "binary", name="malignant")
    with pytest.raises(ValueError, match="outside \\[0, 1\\] or not finite"):
        fit_temperature(np.r_[np.full(11, 0.4), np.nan], np.arange(12) % 2, "binary")
    with pytest.raises(ValueError, match="only one class"):
        fit_temperature(np.full((12, 3), 1 / 3), np.ones(12, dtype=int), "multiclass")
    with pytest.raises(ValueError, match="positive number"):
        apply_temperature(np.array([0.5]), 0.0, "binary")
    with pytest.raises(ValueError, match="no calibration"):
        apply_temperature(np.array([0.5]), 1.0, "segmentation")
    binary = Task(name="malignant", kind="binary")
    multiclass = Task(name="diagnosis", kind="multiclass", classes=["a", "b", "c"])
    results = EvaluationResults.from_results(
        [
            TaskResult(binary, ["a", "b"], probabilities=[[0.2], [0.9]], labels=[[0], [1]]),
            TaskResult(multiclass, ["a"], probabilities=[[0.2, 0.3, 0.5]], labels=[2]),
        ]
    )
    with pytest.raises(ValueError) as err:  # every task's problem at once
        fit_temperatures(results)
    assert "'malignant'" in str(err.value) and "'diagnosis'" in str(err.value)


@pytest.fixture
def fitted(kit):
    """Temperatures fitted on one sample of the conftest tasks (stands in for validation predictions)."""
    return fit_temperatures(collect_results(kit.TASKS, kit.make_samples(60, seed=7)), fitted_on="validation")


def test_calibration_json_round_trip_and_refusals(tmp_path, kit, fitted):
    assert set(fitted.tasks) == {"malignant", "findings", "diagnosis"}
    path = write_calibration(fitted, tmp_path / CALIBRATION_FILE)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["tasks"]["diagnosis"]["classes"] == ["normal", "benign", "malignant"]
    again = read_calibration(path, kit.TASKS)
    assert again.to_dict() == fitted.to_dict()
    assert isinstance(again, CalibrationRecord)

    other = [kit.SEG, kit.BIN, Task(name="grade", kind="multiclass", classes=["1", "2"]), kit.MLB]
    with pytest.raises(CalibrationFileError, match=r"refused.*no temperature for tasks \['grade'\].*\['diagnosis'\]"):
        read_calibration(path, other)
    relabelled = [kit.BIN, kit.MLB, Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "x"])]
    with pytest.raises(CalibrationFileError, match="fitted on classes"):
        read_calibration(path, relabelled)
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationFileError, match="newer than this medmtl"):
        read_calibration(path)
    data["version"], data["tasks"]["malignant"]["temperature"] = 1, -1
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationFileError, match="malignant.*not a positive number"):
        read_calibration(path)
    path.write_text("{not json")
    with pytest.raises(CalibrationFileError, match="not valid JSON"):
        read_calibration(path)

    results = collect_results(kit.TASKS, kit.make_samples(20, seed=1))
    scaled = apply_calibration(results, fitted)
    t = fitted.tasks["diagnosis"].temperature
    expected = apply_temperature(results["diagnosis"].probabilities, t, "multiclass")
    np.testing.assert_allclose(scaled["diagnosis"].probabilities, expected)
    assert scaled["lesion"] is results["lesion"]


def test_report_has_calibration_before_and_after(tmp_path, kit, tasks, samples, fitted):
    results = collect_results(tasks, samples)
    out = tmp_path / "eval"
    page = write_report(results, out, tasks, n_resamples=50).read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["calibration"]) == {"malignant", "findings", "diagnosis"}  # image-level only
    binary = summary["calibration"]["malignant"]
    r = results["malignant"]
    direct = binary_calibration(r.probabilities[:, 0], r.labels[:, 0])
    assert binary["ece"] == pytest.approx(direct.ece) and binary["brier"] == pytest.approx(direct.brier)
    assert binary["num_cases"] == r.num_cases and len(binary["bins"]) == 10
    assert sum(b["count"] for b in binary["bins"]) == r.num_cases
    labels = summary["calibration"]["findings"]["labels"]
    assert summary["calibration"]["findings"]["ece"] == pytest.approx(np.mean([v["ece"] for v in labels.values()]))
    assert "temperature" not in summary["calibration"]["diagnosis"]
    assert "<h2>Calibration</h2>" in page and "ECE after" not in page
    for name in ("malignant", "findings", "diagnosis"):
        assert (out / "figures" / f"reliability_{name}.png").is_file()
        assert f"figures/reliability_{name}.png" in page
    assert not (out / "figures" / "reliability_lesion.png").exists()

    # temperatures fitted elsewhere, dropped into the eval folder: the rebuilt report shows before / after
    write_calibration(fitted, out / CALIBRATION_FILE)
    page = report_from_dir(out, tmp_path / "again").read_text()
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert {k: v for k, v in again["calibration"]["diagnosis"].items() if k != "temperature"} == summary["calibration"][
        "diagnosis"
    ]
    after = again["calibration"]["diagnosis"]["temperature"]
    t = fitted.tasks["diagnosis"].temperature
    d = results["diagnosis"]
    scaled = multiclass_calibration(apply_temperature(d.probabilities, t, "multiclass"), d.labels)
    assert after["value"] == pytest.approx(t) and after["fitted_on"] == "validation"
    assert after["ece"] == pytest.approx(scaled.ece) and after["brier"] == pytest.approx(scaled.brier)
    rows = d.probabilities / d.probabilities.sum(axis=1, keepdims=True)  # float32 softmax rows, renormalised
    assert after["nll_before"] == pytest.approx(log_loss(d.labels, rows, labels=[0, 1, 2]), rel=1e-6)
    assert set(again["calibration"]["findings"]["temperature"]["labels"]) == set(labels)
    assert "ECE after" in page
    assert read_calibration(tmp_path / "again" / CALIBRATION_FILE).to_dict() == fitted.to_dict()

    record = read_calibration(out / CALIBRATION_FILE)
    record.tasks["grade"] = record.tasks.pop("diagnosis")
    write_calibration(record, out / CALIBRATION_FILE)
    with pytest.raises(CalibrationFileError, match=r"refused.*no temperature for tasks \['diagnosis'\].*grade"):
        report_from_dir(out)
