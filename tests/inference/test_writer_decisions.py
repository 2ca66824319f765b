"""predictions.csv carries each decision at the model's thresholds, calibrated probabilities and per-case uncertainty."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import expit, logit, softmax

from medmtl.data.tasks import as_tasks
from medmtl.inference import MultiTaskPredictionWriter
from medmtl.metrics.calibration import CalibrationRecord, TaskTemperature, write_calibration
from medmtl.metrics.decisions import Decisions, DecisionsFileError, TaskDecision

TASKS = as_tasks(
    [
        {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
        {"name": "malignant", "kind": "binary", "classes": ["benign", "malignant"]},
        {"name": "grade", "kind": "multiclass", "classes": ["low", "mid", "high"]},
    ]
)


def _decisions(threshold: float, prior_weights: tuple[float, ...] | None = None) -> Decisions:
    return Decisions(
        {
            "malignant": TaskDecision("malignant", "binary", "youden", ("malignant",), thresholds=(threshold,)),
            "grade": TaskDecision(
                "grade",
                "multiclass",
                "prior_correction" if prior_weights else "argmax",
                ("low", "mid", "high"),
                prior_weights=prior_weights,
            ),
        }
    )


def _calibration(t_binary: float, t_multiclass: float) -> CalibrationRecord:
    def entry(kind: str, classes: list[str], t: float) -> TaskTemperature:
        return TaskTemperature(kind, classes, t, 50, 0.5, 0.4, "out-of-fold")

    return CalibrationRecord(
        {
            "malignant": entry("binary", ["benign", "malignant"], t_binary),
            "grade": entry("multiclass", ["low", "mid", "high"], t_multiclass),
        }
    )


def _sample(case_id: str, p_malignant: float, grade_logits: list[float], pred: dict | None = None) -> dict:
    lesion = torch.stack([torch.full((4, 4), 3.0), torch.full((4, 4), -3.0)])  # confident background
    lesion[:, 1:3, 1:3] = torch.tensor([-3.0, 3.0])[:, None, None]  # a 2x2 lesion, confident
    lesion[:, 1, 1] = 0.0  # one voxel at 50 / 50
    return {
        "case_id": case_id,
        "image": torch.zeros(1, 4, 4),
        "pred_lesion": lesion,
        "pred_malignant": torch.tensor([float(logit(p_malignant))]),
        "pred_grade": torch.tensor(grade_logits),
        "pred": pred or {},
    }


def test_decisions_use_the_chosen_threshold_and_the_prior_correction(tmp_path) -> None:
    weights = (0.2, 1.0, 3.0)
    writer = MultiTaskPredictionWriter(TASKS, tmp_path, decisions=_decisions(0.3, weights))
    row = writer.write_sample(_sample("a", 0.35, [1.0, 0.8, 0.0]))
    assert row["malignant"] == 1 and row["malignant_threshold"] == pytest.approx(0.3)  # 0.35 >= 0.3 (0.5 would say 0)
    p = softmax([1.0, 0.8, 0.0])
    corrected = p * np.array(weights) / (p * np.array(weights)).sum()
    assert row["grade"] == ["low", "mid", "high"][int(corrected.argmax())] == "high"  # plain argmax would say "low"
    assert row["grade_p_low"] == pytest.approx(p[0], abs=1e-6)  # the model's probabilities, not the corrected ones
    plain = MultiTaskPredictionWriter(TASKS, tmp_path / "plain").write_sample(_sample("a", 0.35, [1.0, 0.8, 0.0]))
    assert plain["malignant"] == 0 and plain["malignant_threshold"] == 0.5 and plain["grade"] == "low"


def test_calibrated_probabilities_with_the_threshold_on_the_same_scale(tmp_path) -> None:
    write_calibration(_calibration(2.0, 0.5), tmp_path / "calibration.json")
    _decisions(0.3).save(tmp_path / "decisions.json")
    writer = MultiTaskPredictionWriter(
        TASKS, tmp_path / "out", decisions=tmp_path / "decisions.json", calibration=tmp_path / "calibration.json"
    )
    for p in (0.25, 0.35, 0.9):
        row = writer.write_sample(_sample("a", p, [0.0, 1.0, 2.0]))
        assert row["malignant_probability"] == pytest.approx(expit(logit(p) / 2.0), abs=1e-6)
        assert row["malignant_threshold"] == pytest.approx(expit(logit(0.3) / 2.0), abs=1e-6)
        assert row["malignant"] == int(p >= 0.3) == int(row["malignant_probability"] >= row["malignant_threshold"])
        sharpened = softmax(np.log(softmax([0.0, 1.0, 2.0])) / 0.5)
        assert [row[f"grade_p_{c}"] for c in ("low", "mid", "high")] == pytest.approx(sharpened, abs=1e-6)


def test_records_for_other_tasks_are_refused_naming_the_file(tmp_path) -> None:
    other = Decisions({"malignant": TaskDecision("malignant", "binary", "youden", ("malignant",), thresholds=(0.4,))})
    path = other.save(tmp_path / "decisions.json")
    with pytest.raises(DecisionsFileError, match="decisions.json"):
        MultiTaskPredictionWriter(TASKS, tmp_path / "out", decisions=path)


def test_entropy_and_the_spread_of_several_predictions(tmp_path) -> None:
    members = torch.tensor([[logit(0.2)], [logit(0.6)], [logit(0.4)]], dtype=torch.float32)  # (members, 1)
    grade_members = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]))
    pred = {
        "fold_members": {"malignant": members, "grade": grade_members},
        "tta_passes": {"malignant": members[:2]},
    }
    writer = MultiTaskPredictionWriter(TASKS, tmp_path)
    row = writer.write_sample(_sample("a", 0.4, [0.0, 0.0, 0.0], pred))
    assert row["malignant_fold_std"] == pytest.approx(np.std([0.2, 0.6, 0.4]), abs=1e-6)
    assert row["malignant_tta_std"] == pytest.approx(np.std([0.2, 0.6]), abs=1e-6)
    assert row["grade_fold_std"] == pytest.approx(np.std([0.7, 0.5]), abs=1e-6)  # of the decided class (uniform: low)
    h = -(0.4 * math.log(0.4) + 0.6 * math.log(0.6)) / math.log(2)
    assert row["malignant_entropy"] == pytest.approx(h, abs=1e-6)
    assert row["grade_entropy"] == pytest.approx(1.0, abs=1e-6)  # uniform over 3 classes
    assert "malignant_mc_dropout_std" not in row


def test_segmentation_mean_entropy_inside_the_structure_and_the_map(tmp_path) -> None:
    writer = MultiTaskPredictionWriter(TASKS, tmp_path, uncertainty_maps=True)
    row = writer.write_sample(_sample("a", 0.5, [0.0, 0.0, 0.0]))
    p = expit(6.0)  # softmax of (-3, 3) is sigmoid(6)
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)
    assert row["lesion_voxels"] == 3  # the voxel at 50 / 50 goes to the background (argmax takes the first)
    assert row["lesion_mean_entropy"] == pytest.approx(h, abs=1e-5)
    assert row["lesion_entropy_file"] == "lesion_entropy/a.png"
    entropy = np.asarray(Image.open(tmp_path / row["lesion_entropy_file"]), dtype=np.float64) / 255
    assert entropy[1, 1] == pytest.approx(1.0, abs=1 / 255) and entropy[0, 0] == pytest.approx(h, abs=1 / 255)
    empty = _sample("b", 0.5, [0.0, 0.0, 0.0])
    empty["pred_lesion"] = torch.stack([torch.ones(4, 4), -torch.ones(4, 4)])
    assert writer.write_sample(empty)["lesion_mean_entropy"] is None  # nothing found: no value, not a 0


def test_the_table_has_one_column_per_value(tmp_path) -> None:
    writer = MultiTaskPredictionWriter(TASKS, tmp_path, decisions=_decisions(0.3))
    writer.rows = [writer.write_sample(_sample(c, p, [0.0, 1.0, 0.0])) for c, p in (("a", 0.2), ("b", 0.8))]
    with writer.write_table().open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["malignant"] for r in rows] == ["0", "1"]
    assert {"malignant_probability", "malignant_threshold", "malignant_entropy", "grade_entropy"} <= set(rows[0])
