"""Metric arithmetic: hand-computed segmentation scores, classification scores against scikit-learn, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

from medmtl.data import Task
from medmtl.metrics import functional as F
from medmtl.metrics import higher_is_better, primary_metric
from medmtl.metrics.results import TaskResult


def _batch(label_map: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(1, C, H, W)`` logits whose argmax is ``label_map``."""
    t = torch.as_tensor(label_map).long()
    return torch.nn.functional.one_hot(t, num_classes).movedim(-1, 0)[None].float() * 4.0


def test_segmentation_known_values():
    gt = np.zeros((6, 6), dtype=np.int64)
    gt[0:2, 0:2] = 1  # 4 pixels
    pred = np.zeros((6, 6), dtype=np.int64)
    pred[0, 0:3] = 1  # 3 pixels, 2 of them inside the truth
    out = F.segmentation_case_metrics(_batch(pred, 2), torch.as_tensor(gt)[None, None], num_classes=2)
    assert float(out["dice"]) == pytest.approx(2 * 2 / (4 + 3))
    assert float(out["iou"]) == pytest.approx(2 / 5)
    assert float(out["precision"]) == pytest.approx(2 / 3)
    assert float(out["recall"]) == pytest.approx(2 / 4)
    same = F.segmentation_case_metrics(_batch(gt, 2), torch.as_tensor(gt)[None, None], num_classes=2)
    assert float(same["dice"]) == 1.0 and float(same["hd95"]) == 0.0


def test_segmentation_foreground_only_and_one_hot_label():
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[1:3, 1:3] = 1
    gt[5:7, 5:7] = 2
    pred = gt.copy()
    pred[5:7, 5:7] = 0  # class 2 missed entirely
    one_hot_label = torch.nn.functional.one_hot(torch.as_tensor(gt), 3).movedim(-1, 0)[None]
    out = F.segmentation_case_metrics(_batch(pred, 3), one_hot_label, num_classes=3, metrics=("dice", "recall"))
    assert out["dice"].shape == (1, 2)  # background left out
    np.testing.assert_allclose(out["dice"].numpy(), [[1.0, 0.0]])
    np.testing.assert_allclose(out["recall"].numpy(), [[1.0, 0.0]])


def test_hd95_uses_spacing():
    gt = np.zeros((12, 12), dtype=np.int64)
    gt[3:6, 3:6] = 1
    pred = np.zeros_like(gt)
    pred[3:6, 5:8] = 1  # shifted by 2 pixels along the last axis
    y = torch.as_tensor(gt)[None, None]
    unit = float(F.segmentation_case_metrics(_batch(pred, 2), y, 2, metrics=("dice", "hd95"))["hd95"])
    scaled = float(F.segmentation_case_metrics(_batch(pred, 2), y, 2, metrics=("dice", "hd95"), spacing=3.0)["hd95"])
    assert unit > 0
    assert scaled == pytest.approx(3.0 * unit)


def test_empty_ground_truth_is_nan_and_not_counted():
    gt_empty = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    pred = np.zeros((6, 6), dtype=np.int64)
    pred[0, 0] = 1
    out = F.segmentation_case_metrics(_batch(pred, 2), gt_empty, 2)
    assert math.isnan(float(out["dice"])) and math.isnan(float(out["iou"])) and math.isnan(float(out["recall"]))
    values = np.array([[0.5], [np.nan], [1.0]])
    mean, not_nans, per_class, per_class_nn = F.reduce_segmentation(values)
    assert mean == pytest.approx(0.75) and not_nans == 2
    assert per_class.tolist() == [pytest.approx(0.75)] and per_class_nn.tolist() == [2]
    all_nan = F.reduce_segmentation(np.array([[np.nan], [np.nan]]))
    assert math.isnan(all_nan[0]) and all_nan[1] == 0  # NaN, not MONAI's 0, when nothing counts
    assert math.isnan(F.reduce_segmentation(np.zeros((0, 2)))[0])


def test_segmentation_shape_errors_name_the_task():
    with pytest.raises(ValueError, match="lesion.*4 channels"):
        F.segmentation_case_metrics(torch.zeros(1, 4, 5, 5), torch.zeros(1, 1, 5, 5), 3, task="lesion")
    with pytest.raises(ValueError, match="spatial shape"):
        F.segmentation_case_metrics(torch.zeros(1, 3, 5, 5), torch.zeros(1, 1, 6, 6), 3, task="lesion")


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.4 * y, 1)  # rounding makes ties
    assert F.auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    fast = F.resampled_auroc(s, y, np.arange(60)[None])
    assert fast[0] == pytest.approx(roc_auc_score(y, s))
    idx = rng.integers(0, 60, size=(5, 60))
    for row, value in zip(idx, F.resampled_auroc(s, y, idx), strict=True):
        assert value == pytest.approx(roc_auc_score(y[row], s[row]))
    assert math.isnan(F.auroc(s, np.ones(60)))


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (50, 1)).astype(float)
    p = np.clip(0.3 * y + rng.random((50, 1)) * 0.7, 0, 1)
    out = F.label_metrics(p, y, threshold=0.5)
    hard = (p[:, 0] >= 0.5).astype(int)
    assert out["auroc"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    assert out["accuracy"] == pytest.approx(accuracy_score(y[:, 0], hard))
    assert out["f1"] == pytest.approx(f1_score(y[:, 0], hard))
    assert out["sensitivity"] == pytest.approx(recall_score(y[:, 0], hard))
    assert out["specificity"] == pytest.approx(recall_score(y[:, 0], hard, pos_label=0))
    assert out["kappa"] == pytest.approx(cohen_kappa_score(y[:, 0], hard))
    assert out["num_cases"] == 50
    assert "auroc_0" not in out  # no per-label duplicates for a single label


def test_multilabel_metrics_are_label_means():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (40, 3)).astype(float)
    p = np.clip(0.4 * y + rng.random((40, 3)) * 0.6, 0, 1)
    out = F.label_metrics(p, y, 0.5, ["a", "b c", "d"])
    aucs = [roc_auc_score(y[:, j], p[:, j]) for j in range(3)]
    assert out["auroc_b_c"] == pytest.approx(aucs[1])
    assert out["auroc"] == pytest.approx(np.mean(aucs))
    kappas = [cohen_kappa_score(y[:, j], (p[:, j] >= 0.5).astype(int)) for j in range(3)]
    assert out["kappa"] == pytest.approx(np.mean(kappas))


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 80)
    logits = np.eye(4)[y] * 1.2 + rng.normal(size=(80, 4))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    hard = p.argmax(axis=1)
    out = F.multiclass_metrics(p, y, ["a", "b", "c", "d"])
    assert out["accuracy"] == pytest.approx(accuracy_score(y, hard))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, hard))
    assert out["f1_macro"] == pytest.approx(f1_score(y, hard, average="macro"))
    assert out["kappa"] == pytest.approx(cohen_kappa_score(y, hard))
    assert out["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    cm = F.multiclass_confusion_matrix(y, hard, 4)
    assert cm.sum() == 80 and np.trace(cm) == (y == hard).sum()
    fast = F.resampled_balanced_accuracy(y, hard, 4, np.arange(80)[None])
    assert fast[0] == pytest.approx(balanced_accuracy_score(y, hard))
    idx = rng.integers(0, 80, size=(5, 80))
    for row, value in zip(idx, F.resampled_balanced_accuracy(y, hard, 4, idx), strict=True):
        assert value == pytest.approx(balanced_accuracy_score(y[row], hard[row]))


def test_multiclass_edge_cases_are_nan_not_errors():
    # class 2 never occurs and is never predicted; class 1 is predicted but never true
    p = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    y = np.array([0, 0, 0])
    out = F.multiclass_metrics(p, y, ["a", "b", "c"])
    assert out["balanced_accuracy"] == pytest.approx(2 / 3)  # recall of the true classes only
    assert out["f1_macro"] == pytest.approx(np.mean([2 * 2 / (3 + 2), 0.0]))  # classes in truth or prediction
    assert out["recall_a"] == pytest.approx(2 / 3) and math.isnan(out["recall_b"]) and math.isnan(out["f1_c"])
    assert out["f1_b"] == 0.0
    assert F.multiclass_confusion_matrix(y, p.argmax(1), 3).tolist() == [[2, 1, 0], [0, 0, 0], [0, 0, 0]]
    one_class = F.multiclass_metrics(np.array([[0.9, 0.1]] * 4), np.zeros(4, dtype=int))
    assert one_class["accuracy"] == 1.0 and math.isnan(one_class["kappa"])  # chance agreement is 1
    empty = F.multiclass_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int), ["a", "b", "c"])
    assert empty["num_cases"] == 0 and all(math.isnan(v) for k, v in empty.items() if k != "num_cases")
    assert F.multiclass_confusion_matrix(np.zeros(0), np.zeros(0), 3).tolist() == [[0] * 3] * 3
    binary_empty = F.label_metrics(np.zeros((0, 1)), np.zeros((0, 1)))
    assert math.isnan(binary_empty["kappa"]) and binary_empty["num_cases"] == 0


def test_primary_metrics_by_kind(kit):
    assert primary_metric(kit.SEG) == ("dice", True)
    assert primary_metric(kit.BIN) == ("auroc", True)
    assert primary_metric(kit.MLB) == ("auroc", True)
    assert primary_metric(kit.MCL) == ("balanced_accuracy", True)
    assert not higher_is_better("hd95") and not higher_is_better("lesion/hd95_edema")
    assert higher_is_better("dice_lesion")


def _binary_result(n: int, seed: int) -> TaskResult:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 1)).astype(float)
    p = np.clip(0.35 * y + rng.random((n, 1)) * 0.65, 0, 1)
    return TaskResult(Task(name="b", kind="binary"), [str(i) for i in range(n)], probabilities=p, labels=y)


def test_bootstrap_contains_estimate_narrows_and_is_seeded():
    small = _binary_result(40, 0)
    low, high = small.bootstrap_ci()
    estimate = small.metrics()["auroc"]
    assert low <= estimate <= high and low < high
    assert small.bootstrap_ci(seed=0) == (low, high)
    assert small.bootstrap_ci(seed=1) != (low, high)
    big = _binary_result(640, 0)
    big_low, big_high = big.bootstrap_ci()
    assert big_low <= big.metrics()["auroc"] <= big_high
    assert big_high - big_low < 0.6 * (high - low)


def test_bootstrap_for_segmentation_and_multiclass(kit):
    rng = np.random.default_rng(5)
    dice = rng.uniform(0.5, 0.9, (30, 2))
    dice[3, 0] = np.nan
    seg = TaskResult(kit.SEG, [str(i) for i in range(30)], case_metrics={"dice": dice})
    low, high = seg.bootstrap_ci(n_resamples=500)
    assert low <= seg.metrics()["dice"] <= high
    y = rng.integers(0, 3, 60)
    p = np.eye(3)[y] * 0.5 + rng.random((60, 3))
    mc = TaskResult(kit.MCL, [str(i) for i in range(60)], probabilities=p / p.sum(1, keepdims=True), labels=y)
    low, high = mc.bootstrap_ci()
    assert low <= mc.metrics()["balanced_accuracy"] <= high


def test_bootstrap_input_checks():
    with pytest.raises(ValueError, match="confidence"):
        F.bootstrap_ci(lambda idx: idx.mean(axis=1), 5, confidence=95)
    assert all(math.isnan(v) for v in F.bootstrap_ci(lambda idx: idx.mean(axis=1), 0))


def test_meta_tensor_spacing_is_read(kit):
    from medmtl.metrics import TaskMetric

    gt = torch.zeros(1, 12, 12, dtype=torch.long)
    gt[0, 3:6, 3:6] = 1
    pred = torch.zeros(12, 12, dtype=torch.long)
    pred[3:6, 5:8] = 1
    task = Task(name="organ", kind="segmentation", classes=["bg", "organ"])
    plain, meta = TaskMetric(task), TaskMetric(task)
    plain.update([kit.seg_logits(pred, 2)], [gt])
    meta.update([kit.seg_logits(pred, 2)], [MetaTensor(gt, affine=torch.diag(torch.tensor([2.0, 2.0, 1.0])))])
    assert meta.aggregate()["hd95"] == pytest.approx(2 * plain.aggregate()["hd95"])


def test_segmentation_3d_known_dice():
    gt = np.zeros((6, 6, 6), dtype=np.int64)
    gt[1:3, 1:3, 1:3] = 1  # 8 voxels
    pred = np.zeros_like(gt)
    pred[1:3, 1:3, 1:2] = 1  # 4 voxels, all inside
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred), 2).movedim(-1, 0)[None].float()
    out = F.segmentation_case_metrics(logits, torch.as_tensor(gt)[None, None], 2)
    assert float(out["dice"]) == pytest.approx(2 * 4 / 12)
    assert float(out["precision"]) == 1.0 and float(out["recall"]) == pytest.approx(0.5)
