"""medmtl compare: planted differences found with the right sign, equal runs not, DeLong checked, mismatches named."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from medmtl import cli
from medmtl.metrics import EvaluationResults, TaskResult, build_summary
from medmtl.metrics import functional as F
from medmtl.metrics.compare import (  # the private helpers: their level is checked directly
    ComparisonError,
    _mcnemar,
    _paired_bootstrap,
    _wilcoxon,
    compare_results,
    compare_runs,
    default_out_dir,
    delong_test,
    holm,
)

N = 200


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _truth(kit, seed: int = 0) -> dict:
    """Labels of N cases for the four task kinds; a fifth of the cases have an empty lesion (Dice undefined)."""
    rng = np.random.default_rng(seed)
    empty = rng.random((N, 2)) < 0.2
    return {
        "ids": [f"case{i:03d}" for i in range(N)],
        "bin": (rng.random((N, 1)) < 0.4).astype(float),
        "mlb": (rng.random((N, 3)) < 0.5).astype(float),
        "mcl": rng.integers(0, 3, N),
        "empty": empty,
    }


def _run(kit, truth: dict, skill: float, seed: int, dice: float) -> EvaluationResults:
    """A run whose scores carry ``skill`` x signal plus its own noise, and per-case Dice around ``dice``."""
    rng = np.random.default_rng(seed)
    ids, labels = truth["ids"], {k: truth[k].copy() for k in ("bin", "mlb", "mcl")}  # each run its own arrays
    d = np.clip(dice + 0.08 * rng.normal(size=(N, 2)), 0.0, 1.0)
    d[truth["empty"]] = np.nan
    mcl_logits = skill * np.eye(3)[truth["mcl"]] + rng.normal(size=(N, 3))
    mcl = np.exp(mcl_logits) / np.exp(mcl_logits).sum(axis=1, keepdims=True)
    return EvaluationResults.from_results(
        [
            TaskResult(kit.SEG, ids, case_metrics={"dice": d}),
            TaskResult(
                kit.BIN, ids, _sigmoid(skill * (2 * labels["bin"] - 1) + rng.normal(size=(N, 1))), labels["bin"]
            ),
            TaskResult(
                kit.MLB, ids, _sigmoid(skill * (2 * labels["mlb"] - 1) + rng.normal(size=(N, 3))), labels["mlb"]
            ),
            TaskResult(kit.MCL, ids, mcl, labels["mcl"]),
        ]
    )


def _write(results: EvaluationResults, folder) -> None:
    """An evaluation folder as the evaluation writes it: summary.json (its tasks) + predictions.npz."""
    folder.mkdir(parents=True)
    summary = build_summary(results, n_resamples=10)
    (folder / "summary.json").write_text(json.dumps(summary, default=lambda v: None))
    results.save(folder / "predictions.npz")


def _rows(comparison) -> dict[tuple[str, str], object]:
    return {(r.task, r.metric): r for r in comparison.rows}


def test_planted_improvement_is_significant_with_the_right_sign(kit) -> None:
    truth = _truth(kit)
    weak, strong = _run(kit, truth, 0.4, 1, 0.60), _run(kit, truth, 2.5, 2, 0.75)
    comparison = compare_results(weak, strong, "weak", "strong", n_resamples=1000)
    rows = _rows(comparison)
    expected = {
        ("lesion", "dice"): "Wilcoxon signed-rank",
        ("lesion", "dice_lesion"): "Wilcoxon signed-rank",
        ("lesion", "dice_edema"): "Wilcoxon signed-rank",
        ("malignant", "auroc"): "DeLong",
        ("findings", "auroc"): "paired bootstrap",
        ("findings", "auroc_acl"): "DeLong",
        ("diagnosis", "balanced_accuracy"): "paired bootstrap",
        ("diagnosis", "accuracy"): "McNemar exact",
    }
    for key, test in expected.items():
        assert rows[key].test == test, key
    for r in comparison.rows:
        assert r.significant and r.significant_holm, (r.task, r.metric, r.p)
        assert r.difference > 0 and 0 < r.ci_low <= r.difference <= r.ci_high, (r.task, r.metric)
        assert r.p_holm >= r.p
    # A and B are the runs' own metrics, as summary.json gives them
    for run, attr in ((weak, "a"), (strong, "b")):
        flat = run.metrics()
        for (task, metric), r in rows.items():
            assert getattr(r, attr) == pytest.approx(flat[f"{task}/{metric}"]), (task, metric)
    assert rows[("lesion", "dice")].cases == int((~truth["empty"].all(axis=1)).sum())
    # swapping the runs flips every difference and interval (the same resamples), the p-values stay
    back = _rows(compare_results(strong, weak, n_resamples=1000))
    for key, r in rows.items():
        assert back[key].difference == pytest.approx(-r.difference)
        assert (back[key].ci_low, back[key].ci_high) == pytest.approx((-r.ci_high, -r.ci_low))
        assert back[key].p == pytest.approx(r.p)


def test_runs_from_the_same_distribution_are_not_significant(kit) -> None:
    truth = _truth(kit, seed=3)
    a, b = _run(kit, truth, 1.0, 11, 0.7), _run(kit, truth, 1.0, 12, 0.7)
    comparison = compare_results(a, b, n_resamples=1000)
    for r in comparison.rows:
        assert not r.significant, (r.task, r.metric, r.p)
        assert r.ci_low <= 0 <= r.ci_high, (r.task, r.metric)


def test_tests_hold_their_level_under_the_null() -> None:
    """Same-distribution runs: DeLong, Wilcoxon, McNemar and the bootstrap p-value reject about alpha of the time."""
    rng = np.random.default_rng(7)
    n, reps = 120, 300
    rejected = {"delong": 0, "wilcoxon": 0, "mcnemar": 0, "bootstrap": 0}
    for rep in range(reps):
        y = (rng.random(n) < 0.4).astype(float)
        sa = y + rng.normal(size=n)
        sb = y + rng.normal(size=n)
        rejected["delong"] += delong_test(sa, sb, y).p < 0.05
        da, db = rng.beta(8, 3, n), rng.beta(8, 3, n)
        da[:10] = np.nan  # undefined Dice (empty truth): dropped from both runs
        rejected["wilcoxon"] += _wilcoxon(da, db)[1] < 0.05
        if rep < 100:  # the bootstrap p-value: fewer, it resamples
            ca, cb = rng.random(n) < 0.7, rng.random(n) < 0.7
            rejected["mcnemar"] += _mcnemar(ca, cb)[0] < 0.05
            diff = (cb.astype(float), ca.astype(float))
            p_boot = _paired_bootstrap(lambda idx, d=diff: d[0][idx].mean(1) - d[1][idx].mean(1), n, 400, 0.95, rep)[2]
            rejected["bootstrap"] += p_boot < 0.05
    assert 0.01 <= rejected["delong"] / reps <= 0.10, rejected
    assert 0.01 <= rejected["wilcoxon"] / reps <= 0.10, rejected
    assert rejected["mcnemar"] <= 10 and rejected["bootstrap"] <= 12, rejected


def _delong_brute_force(sa: np.ndarray, sb: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """DeLong (1988) from its definition: placement values over every positive-negative pair, O(m n)."""
    out = []
    for s in (sa, sb):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        out.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = out
    m, n = len(v10a), len(v01a)
    var = np.var(v10b - v10a, ddof=1) / m + np.var(v01b - v01a, ddof=1) / n
    return auc_a, auc_b, var


def test_delong_matches_its_definition_sklearn_and_the_bootstrap() -> None:
    rng = np.random.default_rng(5)
    n = 300
    y = (rng.random(n) < 0.35).astype(float)
    sa = np.round(y + rng.normal(size=n), 1)  # rounded: many ties, counted one half
    sb = np.round(1.6 * y + rng.normal(size=n) + 0.5 * (sa - y), 1)  # correlated with A
    d = delong_test(sa, sb, y)
    assert d.auc_a == pytest.approx(roc_auc_score(y, sa))
    assert d.auc_b == pytest.approx(roc_auc_score(y, sb))
    auc_a, auc_b, var = _delong_brute_force(sa, sb, y)
    assert d.auc_a == pytest.approx(auc_a) and d.auc_b == pytest.approx(auc_b)
    assert d.std_error == pytest.approx(math.sqrt(var))
    assert d.z == pytest.approx((auc_b - auc_a) / math.sqrt(var))
    assert d.p == pytest.approx(2 * stats.norm.sf(abs(d.z)))
    assert d.p < 0.05 and d.difference > 0
    # the bootstrap standard deviation of the AUROC difference estimates the same quantity
    idx = np.random.default_rng(0).integers(0, n, size=(4000, n))
    boot = F.resampled_auroc(sb, y, idx) - F.resampled_auroc(sa, y, idx)
    assert np.std(boot) == pytest.approx(d.std_error, rel=0.1)
    # a tiny example by hand: positives (0.9, 0.4), negatives (0.5, 0.1); B ranks perfectly
    tiny = delong_test(np.array([0.9, 0.4, 0.5, 0.1]), np.array([0.9, 0.8, 0.5, 0.1]), np.array([1, 1, 0, 0]))
    assert (tiny.auc_a, tiny.auc_b) == (0.75, 1.0)
    # placements of A: positives (1, 0.5), negatives (0.5, 1); B's constant: var = 0.125 / 2 + 0.125 / 2
    assert tiny.std_error == pytest.approx(math.sqrt(0.125))


def test_delong_edge_cases() -> None:
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    same = delong_test(s, s, y)
    assert same.difference == 0 and same.p == 1.0
    one_class = delong_test(s, s, np.ones(5))
    assert math.isnan(one_class.auc_a) and math.isnan(one_class.p)
    with pytest.raises(ValueError, match="labels"):
        delong_test(s, s, y[:3])


def test_holm_adjustment() -> None:
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    adjusted = holm(p)
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone: 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert np.all(adjusted[:4] >= np.array(p[:4]))


def test_different_cases_and_labels_are_named(kit, tmp_path) -> None:
    truth = _truth(kit)
    a = _run(kit, truth, 1.0, 1, 0.7)
    ids_b = [f"extra{i}" for i in range(3)] + truth["ids"][15:]
    keep = np.arange(15, N)
    flipped_bin = truth["bin"][keep].copy()
    flipped_bin[:2] = 1 - flipped_bin[:2]  # case015, case016
    mcl_b = truth["mcl"][keep].copy()
    mcl_b[5] = (mcl_b[5] + 1) % 3  # case020
    empty_b = truth["empty"][keep].copy()
    empty_b[10, 0] = ~empty_b[10, 0]  # case025: lesion mask empty in one run only
    n = len(ids_b)
    rng = np.random.default_rng(0)
    pad = np.zeros((3, 1))
    dice_b = rng.random((n, 2))
    dice_b[3:][empty_b] = np.nan
    b = EvaluationResults.from_results(
        [
            TaskResult(kit.SEG, ids_b, case_metrics={"dice": dice_b}),
            TaskResult(kit.BIN, ids_b, rng.random((n, 1)), np.concatenate([pad, flipped_bin])),
            TaskResult(kit.MCL, ids_b, rng.dirichlet(np.ones(3), n), np.concatenate([[0, 0, 0], mcl_b])),
        ]
    )
    _write(a, tmp_path / "run_a" / "eval")
    _write(b, tmp_path / "run_b" / "eval")
    with pytest.raises(ComparisonError) as info:
        compare_runs(tmp_path / "run_a", tmp_path / "run_b")
    msg = str(info.value)
    assert str(tmp_path / "run_a") in msg and str(tmp_path / "run_b") in msg
    assert "tasks only in A: ['findings']" in msg
    # the same missing cases in every common task are listed once, first ten and the count
    assert "tasks 'lesion', 'malignant', 'diagnosis': 15 of A's 200 cases are not in B: case000, case001" in msg
    assert "case009, ... (15 in all)" in msg and "case010" not in msg.split("not in B:")[1].split("\n")[0]
    assert "3 of B's 188 cases are not in A: extra0, extra1, extra2" in msg
    assert "Fix: evaluate both runs on the same test split" in msg
    # labels are compared only once the cases match: B with A's cases but other labels
    b2 = _run(kit, truth, 1.0, 2, 0.7)
    b2["malignant"].labels[[3, 4]] = 1 - b2["malignant"].labels[[3, 4]]
    b2["diagnosis"].labels[7] = (b2["diagnosis"].labels[7] + 1) % 3
    b2["lesion"].case_metrics["dice"][9, 1] = np.nan if truth["empty"][9, 1] == 0 else 0.5
    with pytest.raises(ComparisonError) as info:
        compare_results(a, b2, "A-run", "B-run")
    msg = str(info.value)
    assert "A-run" in msg and "B-run" in msg
    lab = int(truth["bin"][3, 0])
    assert f"task 'malignant': 2 cases have different labels in A and B: case003 (A: {lab}, B: {1 - lab})" in msg
    names = kit.MCL.class_names
    old = names[truth["mcl"][7]]
    assert f"task 'diagnosis': 1 cases have different labels in A and B: case007 (A: {old}, B: " in msg
    side = "B" if truth["empty"][9, 1] == 0 else "A"
    assert (
        f"task 'lesion': 1 cases have different labels in A and B: case009 (ground truth edema empty in {side} only)"
        in msg
    )


def test_cli_end_to_end(kit, tmp_path, monkeypatch, capsys) -> None:
    truth = _truth(kit)
    a, b = _run(kit, truth, 0.5, 1, 0.6), _run(kit, truth, 2.0, 2, 0.7)
    _write(a, tmp_path / "runs" / "base" / "eval")
    _write(b, tmp_path / "runs" / "better" / "eval")
    run_a, eval_b = str(tmp_path / "runs" / "base"), str(tmp_path / "runs" / "better" / "eval")  # a run, an eval folder
    out = tmp_path / "cmp"
    args = ["compare", run_a, eval_b, "-o", str(out), "--n-resamples", "300", "--alpha", "0.01", "--seed", "3"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "B-A [99% CI]" in printed and "NOT corrected" in printed and f"wrote {out / 'compare.json'}" in printed
    saved = json.loads((out / "compare.json").read_text())
    expected = compare_results(a, b, run_a, eval_b, n_resamples=300, alpha=0.01, seed=3)
    assert saved["settings"]["alpha"] == 0.01 and saved["run_b"] == eval_b
    assert len(saved["rows"]) == len(expected.rows)
    for row, r in zip(saved["rows"], expected.rows, strict=True):
        assert (row["task"], row["metric"], row["test"]) == (r.task, r.metric, r.test)
        assert row["difference"] == pytest.approx(r.difference) and row["p"] == pytest.approx(r.p)
        assert row["ci_low"] == pytest.approx(r.ci_low) and row["significant"] == r.significant
    table = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text(), newline="")))
    assert [(t["task"], t["metric"]) for t in table] == [(r.task, r.metric) for r in expected.rows]
    assert float(table[0]["p"]) == pytest.approx(expected.rows[0].p) and table[0]["significant"] in ("yes", "no")
    for line in printed.splitlines()[2 : 2 + len(expected.rows)]:
        assert line.split()[0] in {t.name for t in kit.TASKS}
    # an existing comparison is never replaced silently
    assert cli.main(args) == 1
    assert "compare.json exists" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    # the default folder is named after the runs; a mismatch is one clear error, exit 1
    monkeypatch.chdir(tmp_path)
    assert default_out_dir(run_a, eval_b).name == "compare_base_vs_better"
    assert cli.main(["compare", run_a, eval_b, "--n-resamples", "50"]) == 0
    assert (tmp_path / "compare_base_vs_better" / "compare.csv").is_file()
    capsys.readouterr()
    short = EvaluationResults.from_results(
        [TaskResult(r.task, r.case_ids[:-1], case_metrics={"dice": r.case_metrics["dice"][:-1]}) for r in [a["lesion"]]]
    )
    _write(short, tmp_path / "runs" / "short" / "eval")
    assert cli.main(["compare", run_a, str(tmp_path / "runs" / "short"), "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot compare") and "case199" in err
    assert not (tmp_path / "x").exists()
    assert cli.main(["compare", run_a, str(tmp_path / "nowhere")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compare", run_a, eval_b, "--alpha", "1.5"])


def test_undefined_tests_are_shown_as_such(kit) -> None:
    """One class only (AUROC undefined) or no case at all: no p-value, never called significant."""
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(30)]
    negatives = np.zeros((30, 1))
    runs = [
        EvaluationResults.from_results(
            [
                TaskResult(kit.BIN, ids, rng.random((30, 1)), negatives.copy()),
                TaskResult(kit.MCL, [], np.zeros((0, 3)), np.zeros(0, dtype=int)),
            ]
        )
        for _ in range(2)
    ]
    comparison = compare_results(*runs, n_resamples=50)
    assert [(r.task, r.metric) for r in comparison.rows] == [
        ("malignant", "auroc"),
        ("diagnosis", "balanced_accuracy"),
        ("diagnosis", "accuracy"),
    ]
    for r in comparison.rows:
        assert math.isnan(r.p) and math.isnan(r.p_holm) and not r.significant, (r.task, r.metric)
    assert comparison.num_tests == 0
    assert all(line.rstrip().endswith("n/a") for line in comparison.format_table().splitlines()[2:5])
    assert json.loads(json.dumps(comparison.to_dict()))["rows"][0]["p"] is None


def _study_run(kit, study_of: dict[str, str], truth: dict, skill: float, seed: int) -> EvaluationResults:
    """Per-image results of two image-level tasks whose labels belong to the study (as MURA's)."""
    rng = np.random.default_rng(seed)
    ids = list(study_of)
    y = truth["bin"][[truth["study_index"][study_of[c]] for c in ids]]
    mc = truth["mcl"][[truth["study_index"][study_of[c]] for c in ids]]
    logits = skill * np.eye(3)[mc] + rng.normal(size=(len(ids), 3))
    return EvaluationResults.from_results(
        [
            TaskResult(kit.BIN, ids, _sigmoid(skill * (2 * y - 1) + rng.normal(size=(len(ids), 1))), y.copy()),
            TaskResult(kit.MCL, ids, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), mc.copy()),
        ]
    )


def _write_with_studies(results: EvaluationResults, folder, study_of: dict[str, str] | None, rule: str = "mean"):
    from medmtl.metrics.studies import study_results, study_summary

    _write(results, folder)
    if study_of is not None:
        summary = json.loads((folder / "summary.json").read_text())
        summary["studies"] = study_summary(study_results(results, study_of, rule), n_resamples=10)
        (folder / "summary.json").write_text(json.dumps(summary, default=lambda v: None))


def test_per_study_comparison_groups_the_images_of_each_study(kit, tmp_path, capsys) -> None:
    rng = np.random.default_rng(4)
    studies = [f"study{s:02d}" for s in range(60)]
    study_of = {f"{s}_image{i}": s for s in studies for i in range(1, int(rng.integers(1, 4)) + 1)}
    truth = {
        "study_index": {s: k for k, s in enumerate(studies)},
        "bin": (rng.random((60, 1)) < 0.4).astype(float),
        "mcl": rng.integers(0, 3, 60),
    }
    weak, strong = _study_run(kit, study_of, truth, 0.3, 1), _study_run(kit, study_of, truth, 2.5, 2)
    _write_with_studies(weak, tmp_path / "weak" / "eval", study_of)
    _write_with_studies(strong, tmp_path / "strong" / "eval", study_of)
    out = tmp_path / "cmp"
    runs = [str(tmp_path / "weak"), str(tmp_path / "strong"), "-o", str(out), "--n-resamples", "300"]
    assert cli.main(["compare", *runs, "--level", "study"]) == 0
    assert "studies" in capsys.readouterr().out.splitlines()[0]
    saved = json.loads((out / "compare_studies.json").read_text())
    assert saved["level"] == "study"
    rows = {(r["task"], r["metric"]): r for r in saved["rows"]}
    assert {r["cases"] for r in saved["rows"]} == {60}  # one per study, not per image
    for run, key in ((weak, "a"), (strong, "b")):  # the study probability: the mean of its images', by hand
        p = run["malignant"].probabilities[:, 0]
        mean = [np.mean([p[i] for i, c in enumerate(run["malignant"].case_ids) if study_of[c] == s]) for s in studies]
        assert rows[("malignant", "auroc")][key] == pytest.approx(roc_auc_score(truth["bin"][:, 0], mean))
    assert rows[("malignant", "auroc")]["significant"] and rows[("malignant", "auroc")]["difference"] > 0
    assert rows[("diagnosis", "accuracy")]["test"] == "McNemar exact"
    table = list(csv.DictReader(io.StringIO((out / "compare_studies.csv").read_text(), newline="")))
    assert {t["studies"] for t in table} == {"60"}
    # per case, into the same folder: its own files, one row per image
    assert cli.main(["compare", *runs]) == 0
    per_case = json.loads((out / "compare.json").read_text())
    assert per_case["level"] == "case" and {r["cases"] for r in per_case["rows"]} == {len(study_of)}
    capsys.readouterr()

    # a run without per-study results, or grouped by another rule, cannot be compared per study
    _write_with_studies(strong, tmp_path / "flat" / "eval", None)
    assert cli.main(["compare", str(tmp_path / "weak"), str(tmp_path / "flat"), "--level", "study"]) == 1
    assert "has no per-study results" in capsys.readouterr().err
    _write_with_studies(strong, tmp_path / "max" / "eval", study_of, rule="max")
    with pytest.raises(ComparisonError, match="probability is the mean of its images', B's the max"):
        compare_runs(tmp_path / "weak", tmp_path / "max", n_resamples=10, level="study")
