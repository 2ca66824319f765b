"""Uncertainty per case: entropy against the closed form, member disagreement, risk-coverage, the report section."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medmtl.metrics import TaskResult, collect_results, report_from_dir, write_report
from medmtl.metrics.uncertainty import (
    case_errors,
    member_variance,
    most_uncertain,
    mutual_information,
    pairwise_disagreement,
    predictive_entropy,
    risk_coverage,
    tta_variance,
    uncertainty_summary,
)


def _h2(p: float) -> float:
    """Bernoulli entropy in bits, by hand."""
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_entropy_against_the_closed_form():
    binary = predictive_entropy(np.array([[0.5], [0.0], [1.0], [0.1], [0.9]]), "binary")
    assert binary == pytest.approx([1.0, 0.0, 0.0, _h2(0.1), _h2(0.9)])
    assert predictive_entropy(np.array([0.5, 0.1]), "binary") == pytest.approx([1.0, _h2(0.1)])  # (N,) accepted
    labels = np.array([[0.1, 0.5, 0.8]])
    assert predictive_entropy(labels, "multilabel") == pytest.approx([np.mean([_h2(0.1), 1.0, _h2(0.8)])])
    assert predictive_entropy(labels, "multilabel", normalise=False) == pytest.approx(
        [np.mean([_h2(0.1), 1.0, _h2(0.8)]) * math.log(2)]
    )
    p = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.7, 0.2, 0.1, 0.0]])
    nats = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert predictive_entropy(p, "multiclass") == pytest.approx([1.0, 0.0, nats / math.log(4)])
    assert predictive_entropy(p, "multiclass", normalise=False) == pytest.approx([math.log(4), 0.0, nats])
    with pytest.raises(ValueError, match="segmentation"):
        predictive_entropy(p, "segmentation")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        predictive_entropy(p * 2, "multiclass")


def test_member_disagreement():
    agree = np.repeat(np.array([[[0.2, 0.8], [0.6, 0.4]]]), 4, axis=0)  # (M=4, N=2, K=2)
    assert mutual_information(agree, "multiclass") == pytest.approx([0.0, 0.0])
    assert member_variance(agree) == pytest.approx([0.0, 0.0])
    assert pairwise_disagreement(agree, "multiclass") == pytest.approx([0.0, 0.0])
    # two confident members that contradict each other: mean 0.5, MI = H(0.5) - 0 = 1 bit
    opposed = np.array([[[0.0]], [[1.0]]])
    assert mutual_information(opposed, "binary") == pytest.approx([1.0])
    assert member_variance(opposed) == pytest.approx([0.25])
    assert pairwise_disagreement(opposed, "binary") == pytest.approx([1.0])
    # three members of a binary task: variance and pairwise |differences| by hand
    three = np.array([[[0.2]], [[0.6]], [[0.7]]])
    assert member_variance(three) == pytest.approx([np.var([0.2, 0.6, 0.7])])
    assert tta_variance(three) == pytest.approx(member_variance(three))
    assert pairwise_disagreement(three, "binary") == pytest.approx([(0.4 + 0.5 + 0.1) / 3])
    mean = 0.5
    expected_mi = _h2(mean) - np.mean([_h2(0.2), _h2(0.6), _h2(0.7)])
    assert mutual_information(three, "binary") == pytest.approx([expected_mi])
    tv = np.array([[[0.5, 0.5, 0.0]], [[0.0, 0.5, 0.5]]])
    assert pairwise_disagreement(tv, "multiclass") == pytest.approx([0.5])  # total variation distance
    with pytest.raises(ValueError, match="M >= 2"):
        member_variance(three[:1])
    with pytest.raises(ValueError, match=r"\(M, N, K\)"):
        member_variance(three[0])


def test_case_errors():
    assert case_errors([0, 2, 1], [0, 1, 1], "multiclass") == pytest.approx([0, 1, 0])
    assert case_errors([[1], [0]], [[0], [0]], "binary") == pytest.approx([1, 0])
    assert case_errors([[1, 0, 1], [0, 0, 0]], [[1, 1, 0], [0, 0, 0]], "multilabel") == pytest.approx([2 / 3, 0])


def test_summary_of_a_task_without_labelled_cases(kit):
    # a task no test case is labelled for: NaN figures, not an error (the report still gets written)
    for task in (kit.BIN, kit.MLB, kit.MCL):
        labels = np.zeros(0, int) if task.kind == "multiclass" else np.zeros((0, task.num_outputs))
        empty = TaskResult(task, [], probabilities=np.zeros((0, task.num_outputs)), labels=labels)
        entry, curve = uncertainty_summary(empty)
        assert (
            entry["num_cases"] == 0 and math.isnan(entry["aurc"]) and math.isnan(entry["error_rate_at_coverage"]["80%"])
        )


def test_risk_coverage_by_hand():
    u = np.array([0.9, 0.1, 0.5, 0.3])
    e = np.array([1.0, 0.0, 1.0, 0.0])
    curve = risk_coverage(u, e)  # most certain first: cases 1, 3, 2, 0 -> errors 0, 0, 1, 1
    assert curve.coverage == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert curve.risk == pytest.approx([0.0, 0.0, 1 / 3, 0.5])
    assert curve.aurc == pytest.approx(np.mean([0.0, 0.0, 1 / 3, 0.5]))
    assert curve.aurc == pytest.approx(curve.oracle_aurc)
    assert curve.random_aurc == curve.error_rate == 0.5
    assert (curve.risk_at(0.5), curve.risk_at(0.8), curve.risk_at(1.0)) == (0.0, 0.5, 0.5)
    # ties carry no order: all uncertainties equal gives the error rate at every coverage
    assert risk_coverage(np.zeros(4), e).risk == pytest.approx([0.5] * 4)
    with pytest.raises(ValueError, match="one length"):
        risk_coverage(u, e[:3])
    with pytest.raises(ValueError, match=r"coverage must be in \(0, 1\]"):
        curve.risk_at(0.0)
    assert math.isnan(risk_coverage([], []).aurc)


def test_uncertain_cases_being_the_wrong_ones_gives_aurc_near_zero():
    rng = np.random.default_rng(0)
    n = 400
    errors = (rng.random(n) < 0.2).astype(np.float64)
    uncertainty = errors + 0.5 * rng.random(n)  # every error less certain than every correct case
    curve = risk_coverage(uncertainty, errors)
    assert curve.aurc == pytest.approx(curve.oracle_aurc)
    assert curve.aurc < 0.25 * curve.random_aurc
    assert np.all(np.diff(curve.risk) >= -1e-12)  # error rate rises with uncertainty
    assert curve.risk_at(0.7) == 0.0 and curve.risk_at(1.0) == pytest.approx(errors.mean())
    # the reverse ranking is the worst
    assert risk_coverage(-uncertainty, errors).aurc > curve.random_aurc


def test_random_ranking_gives_the_error_rate():
    rng = np.random.default_rng(1)
    n = 300
    errors = (rng.random(n) < 0.3).astype(np.float64)
    aurcs = [risk_coverage(rng.random(n), errors).aurc for _ in range(200)]
    assert np.mean(aurcs) == pytest.approx(errors.mean(), abs=0.01)
    assert risk_coverage(rng.random(n), errors).random_aurc == pytest.approx(errors.mean())


def test_most_uncertain():
    assert most_uncertain([0.1, 0.9, 0.5, 0.9], 3).tolist() == [1, 3, 2]


def test_report_uncertainty_section(tmp_path, kit, samples):
    tasks = [kit.SEG, kit.MLB, kit.MCL]  # binary: same code path as multilabel; fewer figures keep it fast
    results = collect_results(tasks, samples)
    results["findings"].threshold = np.array([0.3, 0.5, 0.7])  # per-label thresholds render too
    out = tmp_path / "eval"
    page = write_report(results, out, tasks, n_resamples=50).read_text()
    summary = json.loads((out / "summary.json").read_text())
    image_tasks = [t for t in tasks if not t.is_dense]
    assert set(summary["uncertainty"]) == {t.name for t in image_tasks}
    per_case = {c["case_id"]: c["metrics"] for c in summary["metric_per_case"]}
    for task in image_tasks:
        r = results[task.name]
        entropy = predictive_entropy(r.probabilities, task.kind)
        errors = case_errors(r.labels, r.predictions(), task.kind)
        curve = risk_coverage(entropy, errors)
        entry = summary["uncertainty"][task.name]
        assert entry["aurc"] == pytest.approx(curve.aurc) and entry["random_aurc"] == pytest.approx(errors.mean())
        assert entry["error_rate_at_coverage"]["100%"] == pytest.approx(errors.mean())
        assert entry["error_rate_at_coverage"]["80%"] == pytest.approx(curve.risk_at(0.8))
        for i, case in enumerate(r.case_ids):
            assert per_case[case][task.name]["entropy"] == pytest.approx(entropy[i])
        assert f"Uncertainty: {task.name}" in page
        assert f"figures/risk_coverage_{task.name}.png" in page
        assert (out / "figures" / f"risk_coverage_{task.name}.png").is_file()
        top = r.case_ids[int(most_uncertain(entropy, 1)[0])]
        assert f"<td>{top}</td>" in page
    assert "lesion" not in summary["uncertainty"] and "risk_coverage_lesion.png" not in page
    assert summary["settings"]["threshold"]["findings"] == [0.3, 0.5, 0.7]
    again = tmp_path / "again"
    page_again = report_from_dir(out, again).read_text()
    assert json.loads((again / "summary.json").read_text()) == summary
    for task in image_tasks:
        assert (again / "figures" / f"risk_coverage_{task.name}.png").is_file()
        assert f"Uncertainty: {task.name}" in page_again


def test_report_uncertainty_section_binary(tmp_path, kit, samples):
    results = collect_results([kit.BIN], samples)
    r = results["malignant"]
    page = write_report(results, tmp_path, n_resamples=20).read_text()
    entropy = predictive_entropy(r.probabilities, "binary")
    i = int(most_uncertain(entropy, 1)[0])
    row = f"<td>{r.case_ids[i]}</td><td>{int(r.labels[i, 0])}</td><td>{int(r.predictions()[i, 0])}</td>"
    assert "Uncertainty: malignant" in page and row in page
