"""Decisions chosen on validation predictions: thresholds against brute force, prior correction, decisions.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medmtl.data import Task
from medmtl.metrics.decisions import (
    DECISIONS_FILE,
    Decisions,
    DecisionsFileError,
    apply_decisions,
    choose_decisions,
    choose_threshold,
    correct_priors,
    prior_weights,
    with_decisions,
)
from medmtl.metrics.results import EvaluationResults, TaskResult

BIN = Task(name="malignant", kind="binary")
MLB = Task(name="findings", kind="multilabel", classes=["abnormal", "acl", "meniscus"])
MCL = Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"])
SEG = Task(name="lesion", kind="segmentation", classes=["background", "lesion"])


def _scores(rng: np.random.Generator, n: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.4).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(size=n))))
    return (np.round(p, decimals) if decimals else p), y


def _sens_spec(p: np.ndarray, y: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    return float(positive[y == 1].mean()), float((~positive[y == 0]).mean())


def _brute_youden(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Every cut point by hand: (best J, the midpoint threshold closest to 0.5 among the best, higher first)."""
    distinct = np.unique(p)[::-1]  # descending
    below = np.r_[distinct[1:], 0.0]
    cuts = [(0.0, float(np.nextafter(distinct[0], np.inf)))]  # nothing positive: J = 0
    for s, lower in zip(distinct, below, strict=True):
        sens, spec = _sens_spec(p, y, p >= s)
        cuts.append((sens + spec - 1.0, (s + lower) / 2.0))
    best = max(j for j, _ in cuts)
    tied = [c for j, c in cuts if j >= best - 1e-12]
    return best, min(tied, key=lambda c: abs(c - 0.5))


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 2), (2, 1), (3, None)])
def test_youden_against_brute_force(seed, decimals):
    p, y = _scores(np.random.default_rng(seed), 80, decimals)
    choice = choose_threshold(p, y)
    best_j, best_cut = _brute_youden(p, y)
    assert choice.youden_j == pytest.approx(best_j)
    assert choice.threshold == pytest.approx(best_cut)
    sens, spec = _sens_spec(p, y, p >= choice.threshold)  # the figures are what the threshold does
    assert (choice.sensitivity, choice.specificity) == (pytest.approx(sens), pytest.approx(spec))
    assert (choice.num_cases, choice.num_positive) == (80, int(y.sum()))


def test_youden_tie_goes_to_the_cut_closest_to_half():
    # J = 0.5 at "p >= 0.9" (cut 0.75) and at "p >= 0.3" (cut 0.2): 0.75 is closer to 0.5
    p = np.array([0.1, 0.6, 0.3, 0.9])
    y = np.array([0, 0, 1, 1])
    choice = choose_threshold(p, y, min_cases=4)
    assert choice.threshold == pytest.approx(0.75)
    assert choice.youden_j == pytest.approx(0.5)
    # perfect separation: the midpoint between the highest negative and the lowest positive
    assert choose_threshold([0.1, 0.2, 0.7, 0.9], [0, 0, 1, 1], min_cases=4).threshold == pytest.approx(0.45)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_target_sensitivity_is_reached_at_the_highest_threshold(target):
    p, y = _scores(np.random.default_rng(7), 120, decimals=2)
    choice = choose_threshold(p, y, target_sensitivity=target)
    called = p >= choice.threshold
    sens, spec = _sens_spec(p, y, called)
    assert sens >= target and choice.sensitivity == pytest.approx(sens) and choice.specificity == pytest.approx(spec)
    # brute force: the highest score s with sensitivity(p >= s) >= target is the lowest score still called positive
    reaching = [s for s in np.unique(p) if _sens_spec(p, y, p >= s)[0] >= target]
    assert max(reaching) == p[called].min()
    assert _sens_spec(p, y, p > p[called].min())[0] < target  # one cut higher misses the target


def test_threshold_errors():
    p, y = _scores(np.random.default_rng(0), 30)
    with pytest.raises(ValueError, match="at least 10 cases"):
        choose_threshold(p[:5], y[:5])
    with pytest.raises(ValueError, match="0 positive"):
        choose_threshold(p, np.zeros(30))
    for bad in (0.0, 1.5, -0.1, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match=r"target sensitivity must be"):
            choose_threshold(p, y, target_sensitivity=bad)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        choose_threshold(p * 3, y)
    with pytest.raises(ValueError, match="0 or 1"):
        choose_threshold(p, y * 2)


def _validation(n: int = 60, seed: int = 0) -> EvaluationResults:
    rng = np.random.default_rng(seed)
    ids = [f"v{i}" for i in range(n)]
    pb, yb = _scores(rng, n)
    ym = (rng.random((n, 3)) < 0.5).astype(np.float64)
    pm = 1.0 / (1.0 + np.exp(-(2 * ym - 1 + rng.normal(size=(n, 3)))))
    yc = rng.integers(0, 3, n)
    logits = np.eye(3)[yc] * 1.5 + rng.normal(size=(n, 3))
    pc = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return EvaluationResults.from_results(
        [
            TaskResult(BIN, ids, probabilities=pb, labels=yb),
            TaskResult(MLB, ids, probabilities=pm, labels=ym),
            TaskResult(MCL, ids, probabilities=pc, labels=yc),
            TaskResult(SEG, ids, case_metrics={"dice": rng.random((n, 1))}),
        ]
    )


def test_choose_decisions_per_task_and_label():
    val = _validation()
    decisions = choose_decisions(val, target_sensitivity={"malignant": 0.9})
    assert decisions.task_names == ["malignant", "findings", "diagnosis"]  # segmentation is not decided here
    binary = decisions["malignant"]
    assert binary.rule == "target_sensitivity" and binary.validation["malignant"]["sensitivity"] >= 0.9
    expected = choose_threshold(val["malignant"].probabilities[:, 0], val["malignant"].labels[:, 0], 0.9)
    assert binary.threshold_value() == pytest.approx(expected.threshold)
    findings = decisions["findings"]
    assert findings.rule == "youden" and len(findings.thresholds) == 3
    for j, label in enumerate(MLB.classes):
        own = choose_threshold(val["findings"].probabilities[:, j], val["findings"].labels[:, j])
        assert findings.thresholds[j] == pytest.approx(own.threshold)
        assert findings.validation[label]["youden_j"] == pytest.approx(own.youden_j)
    assert decisions["diagnosis"].rule == "argmax" and decisions["diagnosis"].prior_weights is None


def test_choose_decisions_reports_every_problem_at_once():
    val = _validation(n=8)
    with pytest.raises(ValueError) as err:
        choose_decisions(val, target_sensitivity={"diagnosis": 0.9, "nope": 0.8}, class_counts={"malignant": [1, 2]})
    message = str(err.value)
    for part in (
        "'malignant'",
        "label 'abnormal'",
        "'diagnosis', a multiclass task",
        "'nope', not a task",
        "class_counts",
    ):
        assert part in message, part
    with pytest.raises(ValueError, match="task 'malignant': target sensitivity must be in"):
        choose_decisions(_validation(), target_sensitivity=1.2)


def test_prior_correction_closed_form_and_identity():
    # weights uniform / (0.5, 0.3, 0.2) turn p = (0.5, 0.3, 0.2) into the uniform distribution
    w = prior_weights([50, 30, 20])
    assert w.sum() == pytest.approx(1.0)
    assert correct_priors(np.array([[0.5, 0.3, 0.2]]), w) == pytest.approx(np.full((1, 3), 1 / 3))
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=20)
    assert correct_priors(p, prior_weights([30, 30, 30])) == pytest.approx(p)  # equal priors: identity
    assert correct_priors(p, prior_weights([5, 3, 2], target=[50, 30, 20])) == pytest.approx(p)
    for bad in ([10, 0, 5], [10], [[1, 2], [3, 4]], [1, float("nan"), 2]):
        with pytest.raises(ValueError, match="positive numbers"):
            prior_weights(bad)
    with pytest.raises(ValueError, match="differ in length"):
        prior_weights([1, 2, 3], target=[1, 1])


def test_prior_correction_moves_decisions_away_from_the_training_majority():
    # a model trained on 80/10/10 class counts: probabilities = likelihood x training prior (renormalised);
    # the test cases are balanced, so dividing the prior out must move decisions off class 0 and help
    rng = np.random.default_rng(3)
    n, train = 600, np.array([80.0, 10.0, 10.0])
    y = rng.integers(0, 3, n)
    likelihood = np.exp(np.eye(3)[y] * 1.2 + rng.normal(size=(n, 3)))
    p = likelihood * train
    p /= p.sum(1, keepdims=True)
    ids = [f"c{i}" for i in range(n)]
    val = EvaluationResults.from_results([TaskResult(MCL, ids, probabilities=p, labels=y)])
    decisions = choose_decisions(val, class_counts={"diagnosis": train})
    d = decisions["diagnosis"]
    assert d.rule == "prior_correction"
    before, after = p.argmax(1), apply_decisions({"diagnosis": p}, decisions)["diagnosis"]
    assert (after == 0).sum() < (before == 0).sum()
    assert not np.any((after == 0) & (before != 0))  # a down-weighted class never gains a case
    assert d.validation["decision"]["balanced_accuracy"] > d.validation["argmax"]["balanced_accuracy"] + 0.05
    assert after == pytest.approx((likelihood / likelihood.sum(1, keepdims=True)).argmax(1))


def test_decisions_json_round_trip_and_apply(tmp_path):
    val = _validation()
    decisions = choose_decisions(val, target_sensitivity=0.85, class_counts={"diagnosis": [20, 30, 50]})
    path = decisions.save(tmp_path)
    assert path == tmp_path / DECISIONS_FILE
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["tasks"] == ["malignant", "findings", "diagnosis"]
    loaded = Decisions.load(path, [SEG, BIN, MLB, MCL])
    assert loaded == decisions
    probs = {n: val[n].probabilities for n in loaded.task_names}
    hard = apply_decisions(probs, loaded)
    assert hard["malignant"].shape == (60, 1)
    assert np.array_equal(hard["malignant"][:, 0], (probs["malignant"][:, 0] >= loaded["malignant"].thresholds[0]))
    assert np.array_equal(hard["findings"], probs["findings"] >= np.asarray(loaded["findings"].thresholds))
    w = np.asarray(loaded["diagnosis"].prior_weights)
    assert np.array_equal(hard["diagnosis"], (probs["diagnosis"] * w).argmax(1))
    # the thresholds plug into TaskResult: its predictions are the applied decisions
    result = TaskResult(
        MLB,
        val["findings"].case_ids,
        val["findings"].probabilities,
        val["findings"].labels,
        threshold=loaded.thresholds()["findings"],
    )
    assert np.array_equal(result.predictions(), hard["findings"])
    with pytest.raises(KeyError, match="no decision for tasks"):
        apply_decisions({"other": probs["malignant"]}, loaded)
    with pytest.raises(ValueError, match=r"expect \(N, 3\)"):
        apply_decisions({"findings": probs["findings"][:, :2]}, loaded)


def test_decisions_json_refusals(tmp_path):
    path = choose_decisions(_validation()).save(tmp_path / DECISIONS_FILE)
    other = [Task(name="malignant", kind="binary"), Task(name="grade", kind="multiclass", classes=["a", "b"])]
    with pytest.raises(DecisionsFileError) as err:
        Decisions.load(path, other)
    assert str(path) in str(err.value) and "no decision for ['grade']" in str(err.value)
    assert "'findings', 'diagnosis'" in str(err.value) and "choose the decisions again" in str(err.value)
    wrong_kind = [BIN, MLB, Task(name="diagnosis", kind="multilabel", classes=["normal", "benign", "malignant"])]
    with pytest.raises(DecisionsFileError, match="'diagnosis' is multiclass in the file, multilabel in the model"):
        Decisions.load(path, wrong_kind)
    data = json.loads(path.read_text())
    data["version"] = 2
    (tmp_path / "v2.json").write_text(json.dumps(data))
    with pytest.raises(
        DecisionsFileError, match=r"v2.json has decisions format version 2; this medmtl reads version 1"
    ):
        Decisions.load(tmp_path / "v2.json")
    data["version"] = 1
    data["decisions"]["malignant"]["thresholds"] = [0.5, 0.6]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DecisionsFileError, match="'thresholds' must be a list of 1 finite numbers"):
        Decisions.load(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text(path.read_text()[:50])
    with pytest.raises(DecisionsFileError, match="cut.json is not valid JSON"):
        Decisions.load(tmp_path / "cut.json")
    (tmp_path / "plain.json").write_text("{}")
    with pytest.raises(DecisionsFileError, match="not a medmtl decisions file"):
        Decisions.load(tmp_path / "plain.json")
    with pytest.raises(FileNotFoundError, match="missing.json not found"):
        Decisions.load(tmp_path / "missing.json")


def test_task_result_per_label_threshold_round_trip(tmp_path):
    val = _validation()
    r = val["findings"]
    thresholds = np.array([0.3, 0.5, 0.7])
    per_label = TaskResult(MLB, r.case_ids, r.probabilities, r.labels, threshold=thresholds)
    assert np.array_equal(per_label.predictions(), (r.probabilities >= thresholds).astype(int))
    sens = per_label.metrics()["sensitivity_acl"]
    called = r.probabilities[:, 1] >= 0.5
    assert sens == pytest.approx(called[r.labels[:, 1] == 1].mean())
    binary = TaskResult(
        BIN, val["malignant"].case_ids, val["malignant"].probabilities, val["malignant"].labels, threshold=0.4
    )
    EvaluationResults.from_results([per_label, binary]).save(tmp_path / "p.npz")
    loaded = EvaluationResults.load(tmp_path / "p.npz", [MLB, BIN])
    assert np.array_equal(loaded["findings"].threshold, thresholds)
    assert isinstance(loaded["malignant"].threshold, float) and loaded["malignant"].threshold == 0.4
    with pytest.raises(ValueError, match=r"one number or 3 \(one per label\), got shape \(2,\)"):
        TaskResult(MLB, r.case_ids, r.probabilities, r.labels, threshold=[0.3, 0.5])
    with pytest.raises(ValueError, match="one number, got shape"):
        TaskResult(BIN, binary.case_ids, binary.probabilities, binary.labels, threshold=[0.3, 0.5])


def _majority_biased(n: int = 600, seed: int = 3) -> tuple[EvaluationResults, np.ndarray, np.ndarray]:
    """A model trained on 80/10/10 class counts scored on balanced cases: (results, likelihood, counts)."""
    rng = np.random.default_rng(seed)
    train = np.array([80.0, 10.0, 10.0])
    y = rng.integers(0, 3, n)
    likelihood = np.exp(np.eye(3)[y] * 1.2 + rng.normal(size=(n, 3)))
    p = likelihood * train
    p /= p.sum(1, keepdims=True)
    ids = [f"c{i}" for i in range(n)]
    return EvaluationResults.from_results([TaskResult(MCL, ids, probabilities=p, labels=y)]), likelihood, train


def test_prior_corrected_task_result_scores_the_decided_classes(tmp_path):
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    val, likelihood, train = _majority_biased()
    decided = with_decisions(val, choose_decisions(val, class_counts={"diagnosis": train}))["diagnosis"]
    raw = val["diagnosis"]
    # the decided class is the argmax of the reweighted probabilities, i.e. of the likelihood here
    assert np.array_equal(decided.predictions(), likelihood.argmax(1))
    m = decided.metrics()
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(raw.labels, likelihood.argmax(1)))
    assert m["balanced_accuracy"] > raw.metrics()["balanced_accuracy"] + 0.05
    # AUROC ranks the model's probabilities, untouched by the decision rule
    ovr = np.mean([roc_auc_score(raw.labels == j, raw.probabilities[:, j]) for j in range(3)])
    assert m["auroc"] == pytest.approx(ovr) == pytest.approx(raw.metrics()["auroc"])
    assert decided.confusion_matrix().sum(0)[0] < raw.confusion_matrix().sum(0)[0]
    EvaluationResults.from_results([decided]).save(tmp_path / "p.npz")
    loaded = EvaluationResults.load(tmp_path / "p.npz", [MCL])["diagnosis"]
    assert np.allclose(loaded.class_weights, decided.class_weights)
    assert loaded.metrics()["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
    with pytest.raises(ValueError, match="class_weights must be 3 positive numbers"):
        TaskResult(MCL, raw.case_ids, raw.probabilities, raw.labels, class_weights=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="class_weights are for multiclass tasks"):
        TaskResult(BIN, ["a"], [[0.2]], [[0]], class_weights=[1.0])
