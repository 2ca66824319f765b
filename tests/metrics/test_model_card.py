"""MODEL_CARD.md: written from an evaluation's summary.json, the run record and the bundle metadata."""

from __future__ import annotations

import numpy as np

from medmtl.data import Task
from medmtl.metrics import MODEL_CARD_FILE, write_model_card, write_report
from medmtl.metrics.calibration import fit_temperatures
from medmtl.metrics.results import EvaluationResults, TaskResult

SEG = Task(name="lesion", kind="segmentation", classes=["background", "lesion"])
MCL = Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"])
BIN = Task(name="malignant", kind="binary")


def _results() -> EvaluationResults:
    rng = np.random.default_rng(0)
    ids = [f"case_{i:02d}" for i in range(30)]
    dice = rng.uniform(0.2, 0.95, size=(30, 1))
    dice[3] = np.nan  # empty truth and prediction
    y = rng.integers(0, 3, 30)
    p = rng.dirichlet(np.ones(3), size=30)
    p[0] = [0.01, 0.01, 0.98]  # a confident error unless its label is 2
    b = rng.integers(0, 2, 30)
    q = np.clip(b * 0.6 + rng.uniform(0, 0.4, 30), 0, 1)
    return EvaluationResults.from_results(
        [
            TaskResult(SEG, ids, case_metrics={"dice": dice}),
            TaskResult(MCL, ids, p, y, class_weights=[0.5, 0.2, 0.3]),
            TaskResult(BIN, ids, q[:, None], b[:, None], threshold=0.41),
        ]
    )


def test_card_carries_the_reports_figures_decisions_calibration_and_failures(tmp_path) -> None:
    results = _results()
    record = fit_temperatures(results, fitted_on="out-of-fold")  # on the same cases: only the card is tested
    write_report(results, tmp_path, n_resamples=200, calibration=record)
    run_record = {
        "bundle": "ultrasound_mtl",
        "training": {"data_spec": "specs/busi.yaml", "split_counts": {"train": 500, "test": 30}, "backbone": "resunet"},
        "versions": {"monai": "1.6.1"},
    }
    metadata = {"name": "US multi-task", "intended_use": "Research only; not for clinical use.", "version": "0.2.0"}
    path = write_model_card(
        tmp_path,
        record=run_record,
        metadata=metadata,
        checkpoint="/x/models/best.pt",
        split="test",
        decisions_path="/x/decisions.json",
        calibration_path="/x/calibration.json",
    )
    card = path.read_text()
    assert path.name == MODEL_CARD_FILE
    lesion = results["lesion"]
    value = lesion.metrics()["dice"]
    assert f"| lesion | segmentation | 30 | dice | {value:.3f} [" in card
    ba = results["diagnosis"].metrics()["balanced_accuracy"]  # decided after the prior correction
    assert f"| diagnosis | multiclass | 30 | balanced_accuracy | {ba:.3f} [" in card
    assert "- malignant: positive at probability >= 0.410" in card
    assert "- diagnosis: argmax after a prior correction (class weights 0.500, 0.200, 0.300)" in card
    assert "chosen on validation / out-of-fold predictions (`decisions.json`)" in card
    t = record.tasks["malignant"].temperature
    assert "| malignant |" in card.split("## Calibration")[1] and f"T={t:.2f}" in card
    worst = np.argsort(np.where(np.isnan(lesion.dice_per_case()), np.inf, lesion.dice_per_case()))[0]
    assert f"lowest Dice: case_{worst:02d}" in card and "case_03 (" not in card.split("lowest Dice")[1].split("\n")[0]
    wrong = int((results["diagnosis"].predictions() != results["diagnosis"].labels).sum())
    assert f"- diagnosis, {wrong} wrong; most confident errors: " in card
    assert "Trained on the 500 training cases" in card and "- monai: 1.6.1" in card and "- backbone: resunet" in card
