"""``class_weights: auto`` and ``pos_weight: auto`` are counted on the training split only."""

from __future__ import annotations

import pytest
import torch

from medmtl.data.spec import DatasetSpec
from medmtl.losses import MultiTaskLoss


def _spec(tmp_path, class_weights) -> DatasetSpec:
    rows = ["case_id,grade,split"]
    grades = ["low"] * 6 + ["mid"] * 3 + ["high"] * 1 + ["high"] * 4  # last four are test cases
    for i, grade in enumerate(grades):
        (tmp_path / f"c{i}.png").write_bytes(b"")
        rows.append(f"c{i},{grade},{'train' if i < 10 else 'test'}")
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
    loss = MultiTaskLoss(table.spec.task_list, class_weights=table.class_weights("train"))
    torch.testing.assert_close(loss.task_losses["grade"].loss.weight, torch.tensor(weights, dtype=torch.float32))


def test_given_class_weights_are_kept_and_auto_needs_counts(tmp_path) -> None:
    table = _spec(tmp_path, [1.0, 2.0, 3.0]).build_cases()
    assert table.class_weights() == {"grade": [1.0, 2.0, 3.0]}
    auto = _spec(tmp_path, "auto")
    with pytest.raises(ValueError, match="class_weights 'auto'.*case_table.class_weights"):
        MultiTaskLoss(auto.task_list)
