"""Masked per-task losses: known values, masking, shape errors."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss, DiceFocalLoss

from medmtl.data import Task
from medmtl.losses import MaskedBCELoss, MaskedCELoss, MaskedSegmentationLoss, build_task_loss

SEG = Task(name="lesion", kind="segmentation", classes=["background", "lesion", "edema"])
BIN = Task(name="malignant", kind="binary")
MLB = Task(name="findings", kind="multilabel", classes=["abnormal", "acl", "meniscus"])
MCL = Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"])


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bce_with_pos_weight_matches_hand_computation():
    logits = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 0.8, 0.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    pw = [2.0, 3.0, 0.5]
    loss = MaskedBCELoss(MLB, pos_weight=pw)
    terms = []
    for i in range(2):
        for k in range(3):
            p = _sigmoid(float(logits[i, k]))
            y = float(target[i, k])
            terms.append(-(pw[k] * y * math.log(p) + (1 - y) * math.log(1 - p)))
    assert float(loss(logits, target)) == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    assert torch.equal(loss.state_dict()["loss.pos_weight"], torch.tensor(pw))


def test_binary_accepts_flat_target_and_scalar_pos_weight():
    logits = torch.tensor([[1.0], [-2.0]])
    loss = MaskedBCELoss(BIN, pos_weight=4.0)
    expected = (-4.0 * math.log(_sigmoid(1.0)) - math.log(1 - _sigmoid(-2.0))) / 2
    assert float(loss(logits, torch.tensor([1.0, 0.0]))) == pytest.approx(expected, rel=1e-6)
    assert float(loss(logits, torch.tensor([[1.0], [0.0]]))) == pytest.approx(expected, rel=1e-6)


def test_pos_weight_from_task_and_auto_needs_counts():
    assert torch.equal(
        MaskedBCELoss(Task(name="m", kind="binary", pos_weight=2.5)).loss.pos_weight, torch.tensor([2.5])
    )
    with pytest.raises(ValueError, match="pos_weight 'auto'.*pos_weights"):
        MaskedBCELoss(Task(name="m", kind="binary", pos_weight="auto"))
    with pytest.raises(ValueError, match="pos_weight has 2 values, expected 3"):
        MaskedBCELoss(MLB, pos_weight=[1.0, 2.0])


def test_ce_with_class_weights_matches_hand_computation():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.5], [2.0, -1.0, 0.0]])
    target = torch.tensor([0, 2, 1])
    w = [1.0, 2.0, 4.0]
    loss = MaskedCELoss(MCL, class_weights=w)
    num = den = 0.0
    for i in range(3):
        row = logits[i].tolist()
        lse = math.log(sum(math.exp(v) for v in row))
        y = int(target[i])
        num += w[y] * (lse - row[y])
        den += w[y]
    assert float(loss(logits, target)) == pytest.approx(num / den, rel=1e-6)
    assert float(loss(logits, target.unsqueeze(1).float())) == pytest.approx(num / den, rel=1e-6)


def test_ce_class_weights_default_to_task():
    task = Task(name="d", kind="multiclass", classes=["a", "b"], class_weights=[1.0, 3.0])
    assert torch.equal(MaskedCELoss(task).loss.weight, torch.tensor([1.0, 3.0]))


@pytest.mark.parametrize("spatial", [(5, 7), (3, 5, 4)])
def test_dicece_equals_monai_directly(spatial):
    torch.manual_seed(0)
    pred = torch.randn(2, 3, *spatial)
    target = torch.randint(0, 3, (2, 1, *spatial))
    ours = MaskedSegmentationLoss(SEG)(pred, target)
    theirs = DiceCELoss(softmax=True, to_onehot_y=True)(pred, target)
    assert torch.allclose(ours, theirs)


def test_dicefocal_and_class_weights_equal_monai():
    torch.manual_seed(1)
    pred = torch.randn(2, 3, 6, 6)
    target = torch.randint(0, 3, (2, 1, 6, 6))
    w = [0.5, 1.0, 2.0]
    ours = build_task_loss(SEG, seg_loss="dicefocal", class_weights=w, seg_kwargs={"gamma": 1.5})(pred, target)
    theirs = DiceFocalLoss(softmax=True, to_onehot_y=True, weight=torch.tensor(w), gamma=1.5)(pred, target)
    assert torch.allclose(ours, theirs)
    with pytest.raises(ValueError, match="did you mean"):
        build_task_loss(SEG, seg_loss="dicefocall")


CASES = [
    (
        SEG,
        lambda b: torch.randn(b, 3, 4, 5),
        lambda b: torch.randint(0, 3, (b, 1, 4, 5)),
        lambda b: torch.full((b, 1, 4, 5), -1),
    ),
    (BIN, lambda b: torch.randn(b, 1), lambda b: torch.rand(b, 1).round(), lambda b: torch.full((b, 1), float("nan"))),
    (MLB, lambda b: torch.randn(b, 3), lambda b: torch.rand(b, 3).round(), lambda b: torch.full((b, 3), float("nan"))),
    (MCL, lambda b: torch.randn(b, 3), lambda b: torch.randint(0, 3, (b,)), lambda b: torch.full((b,), -1)),
]


@pytest.mark.parametrize(
    ("task", "make_pred", "make_target", "make_placeholder"), CASES, ids=lambda x: getattr(x, "name", "")
)
def test_unlabelled_samples_change_nothing_and_get_no_gradient(task, make_pred, make_target, make_placeholder):
    torch.manual_seed(2)
    loss = build_task_loss(task, pos_weight=2.0 if task.kind.value in ("binary", "multilabel") else None)
    pred = make_pred(4).requires_grad_()
    target = make_target(4)
    placeholder = make_placeholder(4)
    present = torch.tensor([True, False, True, False])
    target = torch.where(present.view(-1, *([1] * (target.ndim - 1))), target, placeholder.to(target.dtype))

    masked = loss(pred, target, present)
    subset = loss(pred.detach()[present], target[present])
    assert torch.isfinite(masked)
    assert masked.item() == pytest.approx(float(subset), rel=1e-6)
    masked.backward()
    assert torch.all(pred.grad[~present] == 0)
    assert torch.all(pred.grad[present].abs().sum(dim=tuple(range(1, pred.ndim))) > 0)
    # float flags work the same
    assert loss(pred, target, present.float()).item() == pytest.approx(float(subset), rel=1e-6)


@pytest.mark.parametrize(
    ("task", "make_pred", "make_target", "make_placeholder"), CASES, ids=lambda x: getattr(x, "name", "")
)
def test_no_labelled_sample_gives_connected_zero(task, make_pred, make_target, make_placeholder):
    loss = build_task_loss(task, pos_weight=1.0 if task.kind.value in ("binary", "multilabel") else None)
    pred = make_pred(3).requires_grad_()
    value = loss(pred, make_placeholder(3), torch.zeros(3))
    assert value.item() == 0.0
    assert value.requires_grad
    value.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_shape_errors_name_task_and_shapes():
    with pytest.raises(ValueError, match=r"task 'lesion'.*prediction has shape \(2, 2, 4, 4\), expected \(B, 3"):
        MaskedSegmentationLoss(SEG)(torch.randn(2, 2, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"task 'lesion'.*target has shape \(2, 4, 4\), expected \(2, 1, 4, 4\)"):
        MaskedSegmentationLoss(SEG)(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"task 'findings'.*target has shape \(2, 2\), expected \(2, 3\)"):
        MaskedBCELoss(MLB)(torch.randn(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"task 'diagnosis'.*target has shape \(2, 3\), expected \(2,\)"):
        MaskedCELoss(MCL)(torch.randn(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"task 'diagnosis'.*presence flags have shape \(3,\).*2 samples"):
        MaskedCELoss(MCL)(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(3))


def test_label_values_are_checked_on_labelled_samples_only():
    loss = MaskedCELoss(MCL)
    pred = torch.randn(2, 3)
    assert torch.isfinite(loss(pred, torch.tensor([1, -1]), torch.tensor([1, 0])))
    with pytest.raises(ValueError, match=r"task 'diagnosis'.*\[-1, 1\].*3 classes"):
        loss(pred, torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="non-integer"):
        loss(pred, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"task 'lesion'.*\[0, 3\]"):
        MaskedSegmentationLoss(SEG)(torch.randn(1, 3, 2, 2), torch.tensor([[[[0, 3], [1, 2]]]]))


def test_kind_mismatches_are_rejected():
    with pytest.raises(ValueError, match="pos_weight is for binary/multilabel"):
        build_task_loss(MCL, pos_weight=2.0)
    with pytest.raises(ValueError, match="class_weights is for multiclass/segmentation"):
        build_task_loss(BIN, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="needs a multiclass task"):
        MaskedCELoss(BIN)
