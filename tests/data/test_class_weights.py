"""``class_weights: auto`` and ``pos_weight: auto`` are counted on the training split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from medmtl.data.spec import DatasetSpec
from medmtl.losses import MultiTaskLoss


def _spec(tmp_path, class_weights, train_grades=("low",) * 6 + ("mid",) * 3 + ("high",)) -> DatasetSpec:
    rows = ["case_id,grade,split"]
    grades = [*train_grades, *["high"] * 4]  # last four are test cases
    for i, grade in enumerate(grades):
        (tmp_path / f"c{i}.png").write_bytes(b"")
        rows.append(f"c{i},{grade},{'train' if i < len(train_grades) else 'test'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "root": str(tmp_path),
            "cases": {"csv": "labels.csv"},
            "case_id": "{case_id}",
            "inputs": {"image": "{case_id}.png"},
            "tasks": [
                {
                    "name": "grade",
                    "kind": "multiclass",
                    "classes": ["low", "mid", "high"],
                    "class_weights": class_weights,
                    "label": {"field": "grade"},
                }
            ],
            "splits": {"method": "field", "field": "split"},
        }
    )


def test_auto_class_weights_are_balanced_on_training_counts(tmp_path) -> None:
    table = _spec(tmp_path, "auto").build_cases()
    assert table.split_counts() == {"train": 10, "test": 4}
    weights = table.class_weights("train")["grade"]
    assert weights == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    y = np.array([0] * 6 + [1] * 3 + [2])
    assert weights == compute_class_weight("balanced", classes=np.arange(3), y=y).tolist()  # scikit-learn's, exactly
    loss = MultiTaskLoss(table.spec.task_list, class_weights=table.class_weights("train"))
    torch.testing.assert_close(loss.task_losses["grade"].loss.weight, torch.tensor(weights, dtype=torch.float32))


def test_given_class_weights_are_kept_and_auto_needs_counts(tmp_path) -> None:
    table = _spec(tmp_path, [1.0, 2.0, 3.0]).build_cases()
    assert table.class_weights() == {"grade": [1.0, 2.0, 3.0]}
    auto = _spec(tmp_path, "auto")
    with pytest.raises(ValueError, match="class_weights 'auto'.*case_table.class_weights"):
        MultiTaskLoss(auto.task_list)


def test_auto_class_weight_of_a_class_absent_from_training_is_one(tmp_path) -> None:
    table = _spec(tmp_path, "auto", train_grades=("low",) * 6 + ("high",) * 2).build_cases()
    weights = table.class_weights("train")["grade"]
    assert weights == pytest.approx([8 / (3 * 6), 1.0, 8 / (3 * 2)])  # K counts every class, seen or not
