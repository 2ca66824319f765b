"""TaskMetric / collect_results: absent cases are ignored, inputs in every layout, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medmtl.metrics import TaskMetric, collect_results


def _garbage(sample: dict, tasks) -> dict:
    """The sample with every task marked absent and nonsense in its predictions and labels."""
    out = dict(sample, case_id=f"{sample['case_id']}_absent")
    for t in tasks:
        pred = out[f"pred_{t.name}"]
        out[f"pred_{t.name}"] = torch.randn_like(pred) * 100
        out[f"label_{t.name}"] = torch.full_like(torch.as_tensor(out[f"label_{t.name}"]), -7)
        out[f"{t.name}_present"] = False
    return out


def test_absent_cases_do_not_change_metrics(tasks, samples):
    before = collect_results(tasks, samples).metrics()
    noisy = list(samples)
    for i in range(0, len(samples), 3):
        noisy.insert(i, _garbage(samples[i], tasks))
    after = collect_results(tasks, noisy).metrics()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert (math.isnan(value) and math.isnan(after[key])) or after[key] == pytest.approx(value), key


def test_missing_label_key_counts_as_absent(tasks, samples):
    full = collect_results(tasks, samples)
    stripped = [
        {k: v for k, v in s.items() if k != "label_malignant"} if s["malignant_present"] else s for s in samples
    ]
    res = collect_results(tasks, stripped)
    assert res["malignant"].num_cases == 0
    assert res["diagnosis"].metrics() == full["diagnosis"].metrics()


def test_counts_and_case_ids_follow_present_flags(tasks, samples):
    res = collect_results(tasks, samples)
    for t in tasks:
        expected = [s["case_id"] for s in samples if s[f"{t.name}_present"]]
        assert res[t.name].case_ids == expected
        assert res[t.name].metrics()["num_cases"] == len(expected)


def test_batched_and_list_inputs_agree(kit):
    rng = np.random.default_rng(0)
    logits = torch.as_tensor(rng.normal(size=(10, 3)), dtype=torch.float32)
    labels = torch.as_tensor(rng.integers(0, 2, (10, 3)), dtype=torch.float32)
    present = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 1])
    batched, listed = TaskMetric(kit.MLB), TaskMetric(kit.MLB)
    batched.update(logits, labels, present)
    listed.update(list(logits[:4]), list(labels[:4]), list(present[:4]))
    listed.update(list(logits[4:]), list(labels[4:]), list(present[4:]))
    assert batched.aggregate() == listed.aggregate()
    assert batched.aggregate()["num_cases"] == 8


def test_multiclass_accepts_index_or_one_hot(kit):
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    by_index, by_one_hot = TaskMetric(kit.MCL), TaskMetric(kit.MCL)
    by_index.update(list(logits), [torch.tensor(0), torch.tensor(1), torch.tensor(1)])
    by_one_hot.update(logits, torch.eye(3)[[0, 1, 1]])
    a, b = by_index.aggregate(), by_one_hot.aggregate()
    assert a.keys() == b.keys()
    assert all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)
    assert math.isnan(a["recall_malignant"])  # no case of that class
    assert by_index.aggregate()["accuracy"] == pytest.approx(2 / 3)


def test_details_align_with_every_sample(kit, samples):
    metric = TaskMetric(kit.SEG)
    metric.update(
        [s["pred_lesion"] for s in samples],
        [s["label_lesion"] for s in samples],
        [s["lesion_present"] for s in samples],
        [s["case_id"] for s in samples],
    )
    details = metric.details()
    assert details["dice"].shape == (len(samples), 2)
    absent = ~torch.tensor([s["lesion_present"] for s in samples])
    assert torch.isnan(details["dice"][absent]).all()
    assert metric.case_ids() == [s["case_id"] for s in samples]
    metric.reset()
    assert metric.details() == {} and metric.result().num_cases == 0
    assert math.isnan(metric.aggregate()["dice"])


def test_empty_ground_truth_excluded_with_not_nans(kit):
    task = kit.SEG
    full = torch.zeros(1, 8, 8, dtype=torch.long)
    full[0, 1:4, 1:4] = 1
    full[0, 5:7, 5:7] = 2
    empty = torch.zeros(1, 8, 8, dtype=torch.long)
    pred = full[0].clone()
    pred[1, 1] = 0
    metric = TaskMetric(task, seg_metrics=("dice", "recall"))
    metric.update([kit.seg_logits(pred, 3), kit.seg_logits(pred, 3)], [full, empty], case_ids=["a", "b"])
    out = metric.aggregate()
    assert out["dice_not_nans"] == 1 and out["num_cases"] == 2
    assert out["dice_lesion"] == pytest.approx(2 * 8 / (9 + 8))
    assert out["dice_edema"] == 1.0
    assert out["dice"] == pytest.approx((2 * 8 / 17 + 1.0) / 2)
    assert np.isnan(metric.result().case_metrics["dice"][1]).all()


def test_bad_inputs_raise_clear_errors(kit):
    with pytest.raises(ValueError, match="malignant.*expected 1 logits"):
        TaskMetric(kit.BIN).update(torch.zeros(2, 2), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="must be 1 values of 0 or 1"):
        TaskMetric(kit.BIN).update(torch.zeros(1, 1), torch.tensor([[0.3]]))
    with pytest.raises(ValueError, match=r"class index in \[0, 3\)"):
        TaskMetric(kit.MCL).update(torch.zeros(1, 3), torch.tensor([5]))
    with pytest.raises(ValueError, match="one of each per sample"):
        TaskMetric(kit.BIN).update(torch.zeros(3, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="must hold 'dice'"):
        TaskMetric(kit.SEG, seg_metrics=("iou",))
    with pytest.raises(KeyError, match="pred_lesion"):
        collect_results([kit.SEG], [{"case_id": "x"}])
