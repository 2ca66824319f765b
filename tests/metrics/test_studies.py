"""Per-study results: aggregation checked against scikit-learn on hand-grouped arrays, files, report round trip."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, roc_auc_score

from medmtl.data import Task
from medmtl.metrics import EvaluationResults, TaskResult, report_from_dir, study_results, write_report
from medmtl.metrics.studies import aggregate_task

BIN = Task(name="abnormal", kind="binary")
MCL = Task(name="body_part", kind="multiclass", classes=["elbow", "hand", "wrist"])
SEG = Task(name="bone", kind="segmentation", classes=["background", "bone"])


def _images(seed: int = 0, studies: int = 30):
    """Images of ``studies`` studies (1-4 each), with study-level labels and noisy per-image probabilities."""
    rng = np.random.default_rng(seed)
    case_ids, study_of, y_bin, y_mc = [], {}, [], []
    for s in range(studies):
        label, part = int(rng.random() < 0.4), int(rng.integers(0, 3))
        for i in range(int(rng.integers(1, 5))):
            case = f"s{s:02d}_image{i}"
            case_ids.append(case)
            study_of[case] = f"s{s:02d}"
            y_bin.append(label)
            y_mc.append(part)
    n = len(case_ids)
    p_bin = np.clip(0.35 * np.asarray(y_bin) + 0.65 * rng.random(n), 0, 1)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y_mc]
    p_mc = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    results = EvaluationResults.from_results(
        [
            TaskResult(BIN, case_ids, probabilities=p_bin[:, None], labels=np.asarray(y_bin)[:, None]),
            TaskResult(MCL, case_ids, probabilities=p_mc, labels=y_mc),
        ]
    )
    return results, study_of


def _by_hand(case_ids, study_of, values, reduce):
    """``{study: reduce(values of its images)}`` with plain Python grouping (the independent computation)."""
    groups: dict[str, list] = {}
    for case, value in zip(case_ids, values, strict=True):
        groups.setdefault(study_of[case], []).append(value)
    return {s: reduce(np.asarray(v)) for s, v in groups.items()}


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_binary_study_metrics_match_sklearn_on_hand_grouped_studies(aggregate):
    results, study_of = _images()
    grouped = study_results(results, study_of, aggregate)
    r = grouped.results["abnormal"]
    image = results["abnormal"]
    reduce = np.mean if aggregate == "mean" else np.max
    probs = _by_hand(image.case_ids, study_of, image.probabilities[:, 0], reduce)
    labels = _by_hand(image.case_ids, study_of, image.labels[:, 0], np.max)
    assert r.case_ids == list(probs) and len(probs) == 30
    np.testing.assert_allclose(r.probabilities[:, 0], list(probs.values()))
    y, p = np.asarray(list(labels.values()), dtype=int), np.asarray(list(probs.values()))
    metrics = r.metrics()
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert metrics["kappa"] == pytest.approx(cohen_kappa_score(y, (p >= 0.5).astype(int)))
    assert metrics["num_cases"] == 30
    assert grouped.images == {s: list(study_of.values()).count(s) for s in probs}


def test_max_is_never_below_mean_and_differs_on_multi_image_studies():
    results, study_of = _images(seed=1)
    mean = study_results(results, study_of, "mean").results["abnormal"].probabilities[:, 0]
    top = study_results(results, study_of, "max").results["abnormal"].probabilities[:, 0]
    assert np.all(top >= mean - 1e-12)
    assert np.any(top > mean + 1e-6)  # some study has several images with different probabilities


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_multiclass_study_metrics_match_sklearn(aggregate):
    results, study_of = _images(seed=2)
    image = results["body_part"]
    r = study_results(results, study_of, aggregate).results["body_part"]
    reduce = (lambda v: v.mean(axis=0)) if aggregate == "mean" else (lambda v: v.max(axis=0) / v.max(axis=0).sum())
    probs = _by_hand(image.case_ids, study_of, list(image.probabilities), reduce)
    truth = _by_hand(image.case_ids, study_of, image.labels, lambda v: np.bincount(v, minlength=3).argmax())
    expected = np.stack(list(probs.values()))
    np.testing.assert_allclose(r.probabilities, expected)
    np.testing.assert_allclose(r.probabilities.sum(axis=1), 1.0)
    y, pred = np.asarray(list(truth.values())), expected.argmax(axis=1)
    metrics = r.metrics()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert metrics["kappa"] == pytest.approx(cohen_kappa_score(y, pred, labels=[0, 1, 2]))


def test_mixed_label_studies_follow_the_documented_rule_and_are_counted():
    ids = ["a1", "a2", "b1", "b2", "c1", "c2", "c3", "d1"]
    study_of = {c: c[0] for c in ids}
    binary = TaskResult(BIN, ids, probabilities=np.full((8, 1), 0.5), labels=[[1], [0], [0], [0], [1], [1], [0], [1]])
    r, mixed = aggregate_task(binary, study_of)
    assert dict(zip(r.case_ids, r.labels[:, 0], strict=True)) == {"a": 1, "b": 0, "c": 1, "d": 1}  # any positive
    assert mixed == ["a", "c"]
    multi = TaskResult(MCL, ids, probabilities=np.full((8, 3), 1 / 3), labels=[2, 1, 0, 0, 2, 1, 1, 0])
    r, mixed = aggregate_task(multi, study_of)
    assert r.labels.tolist() == [1, 0, 1, 0]  # majority; a's tie (2 vs 1) goes to the lower index
    assert mixed == ["a", "c"]


def test_cases_without_a_study_and_bad_settings_are_refused():
    results, study_of = _images()
    del study_of["s03_image0"]
    with pytest.raises(ValueError, match="s03_image0"):
        study_results(results, study_of)
    with pytest.raises(ValueError, match="mean"):
        study_results(results, {**study_of, "s03_image0": "s03"}, "median")
    seg = TaskResult(SEG, ["x"], case_metrics={"dice": [[0.5]]})
    with pytest.raises(ValueError, match="per image"):
        aggregate_task(seg, {"x": "s"})


def test_report_writes_studies_csv_summary_block_and_section_and_rebuilds_them(tmp_path):
    results, study_of = _images(seed=3)
    seg = TaskResult(SEG, ["s00_image0"], case_metrics={"dice": [[0.8]]})  # segmentation: per image only
    results = EvaluationResults.from_results([*results.results.values(), seg])
    out = tmp_path / "eval"
    write_report(results, out, studies=study_of, study_aggregate="max", n_resamples=200)
    summary = json.loads((out / "summary.json").read_text())
    block = summary["studies"]
    assert block["aggregate"] == "max" and set(block["mean"]) == {"abnormal", "body_part"}
    assert block["num_studies"] == {"abnormal": 30, "body_part": 30}
    grouped = study_results(results, study_of, "max")
    auroc = grouped.results["abnormal"].metrics()["auroc"]
    assert block["mean"]["abnormal"]["auroc"] == pytest.approx(auroc)
    ci = block["ci"]["abnormal"]
    assert ci["metric"] == "auroc" and ci["low"] <= auroc <= ci["high"]
    assert block["study_of"] == study_of
    with open(out / "studies.csv", newline="") as handle:
        rows = {row["study"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 30
    r = grouped.results["abnormal"]
    for i, study in enumerate(r.case_ids):
        row = rows[study]
        assert int(row["images"]) == grouped.images[study] == int(row["abnormal_images"])
        assert float(row["abnormal_probability"]) == pytest.approx(r.probabilities[i, 0], abs=1e-6)
        assert int(row["abnormal"]) == int(r.probabilities[i, 0] >= 0.5)
        assert int(row["abnormal_label"]) == int(r.labels[i, 0])
        assert row["body_part"] in MCL.classes and row["body_part_mixed_labels"] == "0"
    page = (out / "report.html").read_text()
    assert "Per study" in page and "studies.csv" in page

    again = tmp_path / "again"
    report_from_dir(out, again)
    rebuilt = json.loads((again / "summary.json").read_text())["studies"]
    assert rebuilt["mean"] == block["mean"] and rebuilt["aggregate"] == "max"
    assert (again / "studies.csv").read_text() == (out / "studies.csv").read_text()

    write_report(results, out, n_resamples=50)  # evaluated again without studies: nothing stale is left
    assert "studies" not in json.loads((out / "summary.json").read_text())
    assert not (out / "studies.csv").exists()


def test_a_study_without_labels_for_one_task_leaves_its_cells_empty(tmp_path):
    ids = ["a1", "a2", "b1"]
    study_of = {"a1": "a", "a2": "a", "b1": "b"}
    results = EvaluationResults.from_results(
        [
            TaskResult(BIN, ids, probabilities=[[0.2], [0.6], [0.9]], labels=[[0], [0], [1]]),
            TaskResult(MCL, ["a1"], probabilities=[[0.7, 0.2, 0.1]], labels=[0]),
        ]
    )
    write_report(results, tmp_path, studies=study_of, n_resamples=20)
    with open(tmp_path / "studies.csv", newline="") as handle:
        rows = {row["study"]: row for row in csv.DictReader(handle)}
    assert float(rows["a"]["abnormal_probability"]) == pytest.approx(0.4)
    assert rows["a"]["body_part"] == "elbow" and rows["a"]["body_part_images"] == "1"
    assert rows["b"]["body_part"] == "" and rows["b"]["abnormal_images"] == "1"
    block = json.loads((tmp_path / "summary.json").read_text())["studies"]
    assert block["num_studies"] == {"abnormal": 2, "body_part": 1}
    assert math.isclose(block["mean"]["abnormal"]["auroc"], 1.0)
