"""Label budgets: stratified, seeded, nested subsets; the rest stripped of every label."""

from __future__ import annotations

import pytest

from medmtl.data.label_budget import split_label_budget

TASKS = [
    {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
    {"name": "grade", "kind": "multiclass", "classes": ["a", "b", "c"]},
]


def _cases() -> list[dict]:
    cases = []
    for i in range(40):
        grade = 0 if i < 30 else (1 if i < 37 else 2)  # imbalanced: 30 / 7 / 3
        cases.append(
            {
                "case_id": f"c{i:02d}",
                "image": f"{i}.png",
                "grade": grade,
                "grade_present": 1,
                "lesion": f"{i}_mask.png",
                "lesion_present": 1,
            }
        )
    cases.append({"case_id": "u0", "image": "u0.png", "grade_present": 0, "lesion_present": 0})
    return cases


def test_fraction_is_kept_per_stratum_and_rest_is_stripped() -> None:
    labelled, unlabelled = split_label_budget(_cases(), TASKS, 0.25, seed=0, stratify="grade")
    grades = sorted(c["grade"] for c in labelled)
    assert grades.count(0) == 8 and grades.count(1) == 2 and grades.count(2) == 1  # round(0.25 n), >= 1
    assert len(labelled) + len(unlabelled) == 41
    for case in unlabelled:
        assert "grade" not in case and "lesion" not in case
        assert case["grade_present"] == 0 and case["lesion_present"] == 0
        assert case["image"]  # inputs stay
    assert "u0" in {c["case_id"] for c in unlabelled}


def test_subsets_are_seeded_and_nested() -> None:
    small = {c["case_id"] for c in split_label_budget(_cases(), TASKS, 0.1, seed=3, stratify="grade")[0]}
    large = {c["case_id"] for c in split_label_budget(_cases(), TASKS, 0.5, seed=3, stratify="grade")[0]}
    again = {
        c["case_id"] for c in split_label_budget(list(reversed(_cases())), TASKS, 0.1, seed=3, stratify="grade")[0]
    }
    other = {c["case_id"] for c in split_label_budget(_cases(), TASKS, 0.1, seed=4, stratify="grade")[0]}
    assert small <= large and small == again and small != other


def test_full_fraction_keeps_every_labelled_case() -> None:
    labelled, unlabelled = split_label_budget(_cases(), TASKS, 1.0)
    assert len(labelled) == 40 and [c["case_id"] for c in unlabelled] == ["u0"]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="label fraction"):
        split_label_budget(_cases(), TASKS, fraction)
