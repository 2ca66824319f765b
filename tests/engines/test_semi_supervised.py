"""Semi-supervised training: weak/strong views, pseudo-label masks, consistency loss, the iteration and its handler."""

from __future__ import annotations

import copy
import logging
import math
import warnings

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import set_determinism

from medmtl.data import Task
from medmtl.engines import (
    GradientSurgeryIteration,
    MultiTaskLossHandler,
    MultiTaskPrepareBatch,
    SemiSupervisedHandler,
    SemiSupervisedIteration,
    consistency_loss,
    pseudo_label_loss,
    pseudo_label_mask,
    sigmoid_rampup,
)
from medmtl.losses import MultiTaskLoss
from medmtl.networks import MultiTaskNet
from medmtl.transforms import build_weak_strong_transforms

TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="malignant", kind="binary"),
    Task(name="grade", kind="multiclass", classes=["low", "mid", "high"]),
]
BINARY = TASKS[1]
MULTICLASS = TASKS[2]
MULTILABEL = Task(name="findings", kind="multilabel", classes=["a", "b"])
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _next_up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.ones_like(x))


# -- pseudo-label mask ------------------------------------------------------------------------------
def test_pseudo_label_mask_binary_threshold_at_below_above() -> None:
    logits = torch.tensor([[math.log(0.8 / 0.2)], [math.log(0.6 / 0.4)], [-math.log(0.8 / 0.2)], [0.0]])
    targets, keep = pseudo_label_mask(logits, BINARY, threshold=0.7)
    assert targets.tolist() == [[1.0], [1.0], [0.0], [1.0]]
    assert keep.tolist() == [[True], [False], [True], [False]]  # 0.8 above, 0.6 below, 1 - 0.2 above, 0.5 below

    confidence = torch.sigmoid(logits[:1]).max()  # exactly at the threshold: kept; a hair above it: not
    assert pseudo_label_mask(logits[:1], BINARY, threshold=float(confidence))[1].item()
    assert not pseudo_label_mask(logits[:1], BINARY, threshold=float(_next_up(confidence)))[1].item()
    zero = torch.zeros(1, 1)  # sigmoid(0) is exactly 0.5
    assert pseudo_label_mask(zero, BINARY, threshold=0.5)[1].item()
    assert not pseudo_label_mask(zero, BINARY, threshold=float(_next_up(torch.tensor(0.5))))[1].item()
    assert pseudo_label_mask(torch.tensor([[-3.0]]), BINARY, threshold=0.0)[1].item()


def test_pseudo_label_mask_multiclass_and_multilabel() -> None:
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.15, 0.75]])
    targets, keep = pseudo_label_mask(probs.log(), MULTICLASS, threshold=0.7)
    assert targets.tolist() == [0, 0, 2] and targets.dtype == torch.long
    assert keep.tolist() == [True, False, True]
    tie = torch.tensor([[0.0, 0.0, -math.inf]])  # softmax exactly [0.5, 0.5, 0]
    assert pseudo_label_mask(tie, MULTICLASS, threshold=0.5)[1].item()
    assert not pseudo_label_mask(tie, MULTICLASS, threshold=float(_next_up(torch.tensor(0.5))))[1].item()

    logits = torch.tensor([[3.0, 0.1], [-3.0, -0.1]])  # each label kept on its own
    targets, keep = pseudo_label_mask(logits, MULTILABEL, threshold=0.7)
    assert targets.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert keep.tolist() == [[True, False], [True, False]]


def test_pseudo_label_mask_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="consistency_loss"):
        pseudo_label_mask(torch.zeros(1, 2, 4, 4), TASKS[0])
    with pytest.raises(ValueError, match=r"expected \(B, 3\)"):
        pseudo_label_mask(torch.zeros(2, 2), MULTICLASS)
    with pytest.raises(ValueError, match="threshold"):
        pseudo_label_mask(torch.zeros(2, 1), BINARY, threshold=1.5)


def test_pseudo_label_loss_uses_kept_entries_only() -> None:
    strong = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], requires_grad=True)
    targets = torch.tensor([2, 1])
    none = pseudo_label_loss(strong, targets, torch.tensor([False, False]), MULTICLASS)
    assert none.item() == 0.0 and none.requires_grad
    first = pseudo_label_loss(strong, targets, torch.tensor([True, False]), MULTICLASS)
    expected = torch.nn.functional.cross_entropy(strong[:1], targets[:1]) / 2  # FixMatch: mean over all entries
    assert torch.allclose(first, expected)
    first.backward()
    assert strong.grad[1].abs().sum() == 0 and strong.grad[0].abs().sum() > 0


# -- consistency loss -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["kl", "mse"])
@pytest.mark.parametrize("channels", [1, 2])
def test_consistency_loss_zero_iff_views_agree(kind: str, channels: int) -> None:
    g = torch.Generator().manual_seed(0)
    weak = torch.randn(2, channels, 5, 5, generator=g, requires_grad=True)
    same = consistency_loss(weak, weak.detach().clone(), kind)
    assert same.item() == 0.0
    strong = (weak.detach() + torch.randn(2, channels, 5, 5, generator=g)).requires_grad_()
    value = consistency_loss(weak, strong, kind)
    assert value.item() > 0.0
    value.backward()
    assert weak.grad is None  # the weak view is the target
    assert strong.grad is not None and strong.grad.abs().sum() > 0


def test_consistency_loss_checks() -> None:
    with pytest.raises(ValueError, match="same"):
        consistency_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError):
        consistency_loss(torch.zeros(1, 2), torch.zeros(1, 2), kind="l1")


def test_sigmoid_rampup() -> None:
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == sigmoid_rampup(30, 10) == sigmoid_rampup(3, 0) == 1.0


# -- weak / strong views ----------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
def test_weak_strong_views(dims: int) -> None:
    image = torch.rand((1,) + (12,) * dims)
    pairs = build_weak_strong_transforms("image", spatial_dims=dims, strong_prob=1.0)
    pairs.set_random_state(0)
    out = pairs({"image": image, "case_id": "a"})
    assert set(out) == {"image_weak", "image_strong", "case_id"}
    assert out["image_weak"].shape == out["image_strong"].shape == image.shape
    assert not torch.equal(out["image_weak"], out["image_strong"])

    aligned = build_weak_strong_transforms(
        "image", spatial_dims=dims, strong_prob=0.0, affine_prob=1.0, keep_source=True
    )
    aligned.set_random_state(1)
    out = aligned({"image": image})
    assert torch.equal(out["image_weak"], out["image_strong"])  # strong adds no geometry of its own
    assert torch.equal(out["image"], out["image_weak"])
    assert not torch.equal(out["image_weak"], image)  # the weak affine moved it


def test_weak_strong_views_are_reproducible_and_checked() -> None:
    image = torch.rand(1, 12, 12)
    first = build_weak_strong_transforms(spatial_dims=2).set_random_state(3)({"image": image})
    second = build_weak_strong_transforms(spatial_dims=2).set_random_state(3)({"image": image})
    assert torch.equal(first["image_strong"], second["image_strong"])
    with pytest.raises(ValueError, match="flip_axes"):
        build_weak_strong_transforms(spatial_dims=2, flip_axes=[2])
    with pytest.raises(ValueError, match="strong_prob"):
        build_weak_strong_transforms(strong_prob=2.0)
    with pytest.raises(ValueError, match="suffix"):
        build_weak_strong_transforms(weak_suffix="_v", strong_suffix="_v")


# -- the iteration on a MONAI SupervisedTrainer -----------------------------------------------------
def _labelled(n: int, seed: int = 0, present: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        side = 3 + (i % 3) * 3
        mask = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
        mask[:, 2 : 2 + side, 2 : 2 + side] = 1
        samples.append(
            {
                "image": mask.float() + 0.2 * torch.randn(1, SIZE, SIZE, generator=g),
                "lesion": mask,
                "lesion_present": torch.tensor(present and i % 4 != 3),
                "malignant": torch.tensor([float(side > 5)]),
                "malignant_present": torch.tensor(present),
                "grade": torch.tensor(i % 3),
                "grade_present": torch.tensor(present),
            }
        )
    return samples


def _unlabelled(n: int, seed: int = 1) -> Dataset:
    """Unlabelled images through the weak/strong chain; they also carry wrong 'labels' flagged present,
    which the supervised loss would pick up if an unlabelled batch ever reached it."""
    g = torch.Generator().manual_seed(seed)
    data = [
        {
            "image": torch.rand(1, SIZE, SIZE, generator=g),
            "lesion": torch.ones(1, SIZE, SIZE, dtype=torch.long),
            "lesion_present": torch.tensor(True),
            "malignant": torch.tensor([1.0]),
            "malignant_present": torch.tensor(True),
            "grade": torch.tensor(2),
            "grade_present": torch.tensor(True),
        }
        for _ in range(n)
    ]
    pairs = build_weak_strong_transforms("image", spatial_dims=2, keep_source=True)
    pairs.set_random_state(0)
    return Dataset(data, pairs)


def _net() -> MultiTaskNet:
    torch.manual_seed(0)
    return MultiTaskNet("unet", TASKS, backbone_kwargs={"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)})


class SpyLoss(MultiTaskLoss):
    """Records the batch size of every prediction and target the supervised loss sees."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int]] = []

    def forward(self, preds, targets, present=None):
        self.seen.append((preds["grade"].shape[0], targets["grade"].shape[0]))
        return super().forward(preds, targets, present)


def _trainer(
    net: MultiTaskNet,
    loss: MultiTaskLoss,
    iteration: SemiSupervisedIteration,
    labelled: list[dict],
    batch_size: int,
    epochs: int = 1,
    lr: float = 1e-2,
    amp: bool = False,
) -> SupervisedTrainer:
    loader = DataLoader(Dataset(labelled), batch_size=batch_size, shuffle=False, num_workers=0)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(loss.param_groups(net.parameters()), lr=lr),
        loss_function=loss,
        prepare_batch=MultiTaskPrepareBatch(TASKS),
        iteration_update=iteration,
        amp=amp,
    )
    MultiTaskLossHandler(loss, net).attach(trainer)
    SemiSupervisedHandler().attach(trainer)
    return trainer


def _unlabelled_loader(n: int = 6, batch_size: int = 3) -> DataLoader:
    return DataLoader(_unlabelled(n), batch_size=batch_size, shuffle=True, num_workers=0)


@pytest.mark.parametrize("joint_forward", [True, False])
def test_unlabelled_batches_never_reach_the_supervised_loss(joint_forward: bool) -> None:
    set_determinism(0)
    net, loss = _net(), SpyLoss(TASKS)
    cls_only = DataLoader(Dataset(_labelled(3, seed=5)), batch_size=1)  # an extra labelled source
    unlabelled = _unlabelled_loader(10, batch_size=5)
    iteration = SemiSupervisedIteration(
        unlabelled, input_keys="image", labelled_loaders=[cls_only], joint_forward=joint_forward
    )
    trainer = _trainer(net, loss, iteration, _labelled(4), batch_size=2, epochs=2)
    trainer.run()
    assert len(loss.seen) == 4  # one supervised call per step, 2 steps x 2 epochs
    assert set(loss.seen) == {(3, 3)}  # 2 labelled + 1 from the extra source; never the 5 unlabelled
    set_determinism(None)


def test_supervised_gradient_is_unchanged_by_unlabelled_data() -> None:
    """With zero unsupervised weights the step's gradients are exactly the supervised loss's on the
    labelled batch; with a labelled batch lacking every label, the supervised part is exactly 0."""
    set_determinism(0)
    labelled = _labelled(4)
    net, loss = _net(), MultiTaskLoss(TASKS)
    reference = copy.deepcopy(net)
    grads: dict[str, torch.Tensor] = {}

    def keep_grads(engine) -> None:
        grads.update({n: p.grad.detach().clone() for n, p in engine.network.named_parameters() if p.grad is not None})

    iteration = SemiSupervisedIteration(_unlabelled_loader(), unsupervised_weight=0.0, consistency_weight=0.0)
    trainer = _trainer(net, loss, iteration, labelled, batch_size=4)
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, keep_grads)
    trainer.run()

    batch = next(iter(DataLoader(Dataset(labelled), batch_size=4)))
    inputs, targets = MultiTaskPrepareBatch(TASKS)(batch, torch.device("cpu"))
    MultiTaskLoss(TASKS)(reference(inputs), targets).backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys()
    for name, grad in expected.items():
        assert torch.allclose(grads[name], grad, atol=1e-6), name

    no_labels = _trainer(
        _net(), MultiTaskLoss(TASKS), SemiSupervisedIteration(_unlabelled_loader()), _labelled(4, present=False), 4
    )
    no_labels.run()
    assert no_labels.state.metrics["train_loss_supervised"] == 0.0
    assert no_labels.state.metrics["train_loss_consistency"] > 0.0
    set_determinism(None)


@pytest.mark.parametrize("weighting", ["fixed", "pcgrad"])
def test_empty_unlabelled_stream_trains_supervised_only(weighting: str, caplog) -> None:
    """No unlabelled case at all (label_fraction 1.0): one warning, then exactly the supervised steps."""
    labelled = _labelled(4)
    set_determinism(0)
    semi_net = _net()
    iteration = SemiSupervisedIteration(DataLoader(Dataset([]), batch_size=2), tasks=TASKS)
    with caplog.at_level(logging.WARNING, logger="medmtl.engines.semi_supervised"):
        semi = _trainer(semi_net, MultiTaskLoss(TASKS, weighting=weighting), iteration, labelled, 2, epochs=2)
        semi.run()
    warned = [r for r in caplog.records if "unlabelled stream is empty" in r.getMessage()]
    assert len(warned) == 1  # once, not every step
    assert semi.state.metrics["train_loss_pseudo_label"] == 0.0
    assert semi.state.metrics["train_loss_consistency"] == 0.0

    set_determinism(0)
    plain_net = _net()
    plain = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=DataLoader(Dataset(labelled), batch_size=2, shuffle=False, num_workers=0),
        network=plain_net,
        optimizer=torch.optim.Adam(MultiTaskLoss(TASKS).param_groups(plain_net.parameters()), lr=1e-2),
        loss_function=MultiTaskLoss(TASKS, weighting=weighting),
        prepare_batch=MultiTaskPrepareBatch(TASKS),
        iteration_update=GradientSurgeryIteration() if weighting == "pcgrad" else None,
    )
    plain.run()
    for (name, a), b in zip(semi_net.state_dict().items(), plain_net.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    set_determinism(None)


def test_training_steps_reduce_loss_and_log_fractions() -> None:
    set_determinism(0)
    net, loss = _net(), MultiTaskLoss(TASKS)
    iteration = SemiSupervisedIteration(
        _unlabelled_loader(8, 4), tasks=TASKS, threshold=0.6, consistency="mse", rampup_epochs=4
    )
    trainer = _trainer(net, loss, iteration, _labelled(8), batch_size=4, epochs=8)
    history: list[dict[str, float]] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: history.append(dict(e.state.metrics)))
    trainer.run()

    first, last = history[0], history[-1]
    assert last["train_loss_supervised"] < first["train_loss_supervised"]
    assert last["train_loss_epoch"] < first["train_loss_epoch"]
    for task in ("malignant", "grade"):
        assert 0.0 <= last[f"train_pseudo_label_fraction/{task}"] <= 1.0
    assert "train_pseudo_label_fraction/lesion" not in last  # segmentation: consistency, no pseudo-labels
    assert first["train_unsupervised_ramp"] < 0.1 < last["train_unsupervised_ramp"] == 1.0
    assert math.isfinite(last["train_loss_pseudo_label"]) and last["train_loss_consistency"] >= 0.0
    set_determinism(None)


def test_fraction_kept_follows_the_threshold() -> None:
    set_determinism(0)
    iteration = SemiSupervisedIteration(_unlabelled_loader(), threshold={"malignant": 0.0, "grade": 1.0})
    trainer = _trainer(_net(), MultiTaskLoss(TASKS), iteration, _labelled(4), batch_size=2)
    trainer.run()
    assert trainer.state.metrics["train_pseudo_label_fraction/malignant"] == 1.0
    assert trainer.state.metrics["train_pseudo_label_fraction/grade"] == 0.0
    set_determinism(None)


@pytest.mark.parametrize("weighting", ["pcgrad", "uncertainty"])
def test_amp_flag_on_cpu_and_weightings(weighting: str) -> None:
    set_determinism(0)
    loss = MultiTaskLoss(TASKS, weighting=weighting)
    iteration = SemiSupervisedIteration(_unlabelled_loader(), tasks=TASKS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI builds a (disabled) CUDA GradScaler on CPU
        trainer = _trainer(_net(), loss, iteration, _labelled(4), batch_size=2, amp=True)
        trainer.run()
    assert math.isfinite(trainer.state.metrics["train_loss_epoch"])
    set_determinism(None)


def test_missing_views_and_bad_arguments() -> None:
    plain = DataLoader(Dataset(_labelled(2)), batch_size=2)
    trainer = _trainer(_net(), MultiTaskLoss(TASKS), SemiSupervisedIteration(plain), _labelled(2), batch_size=2)
    with pytest.raises(KeyError, match="build_weak_strong_transforms"):
        trainer.run()
    with pytest.raises(ValueError, match="unsupervised_weight"):
        SemiSupervisedIteration(plain, unsupervised_weight=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        SemiSupervisedIteration(plain, threshold={"grade": 2.0})
    empty_source = SemiSupervisedIteration(_unlabelled_loader(), tasks=TASKS, labelled_loaders=[[]])
    trainer = _trainer(_net(), MultiTaskLoss(TASKS), empty_source, _labelled(2), batch_size=2)
    with pytest.raises(ValueError, match="labelled loader 0 yields no batch"):
        trainer.run()


def test_joint_forward_needs_equal_sizes_and_bundle_config_builds() -> None:
    other = Dataset([{"image_weak": torch.rand(1, 48, 48), "image_strong": torch.rand(1, 48, 48)}] * 2)
    iteration = SemiSupervisedIteration(DataLoader(other, batch_size=2), tasks=TASKS)
    trainer = _trainer(_net(), MultiTaskLoss(TASKS), iteration, _labelled(2), batch_size=2)
    with pytest.raises(ValueError, match="joint_forward=False"):
        trainer.run()

    parser = ConfigParser(
        {
            "tasks": [{"name": "malignant", "kind": "binary"}],
            "unlabelled": "$[]",
            "semi": {
                "_target_": "medmtl.engines.SemiSupervisedIteration",
                "unlabelled_loader": "@unlabelled",
                "tasks": "@tasks",
                "threshold": 0.8,
                "consistency": "mse",
                "rampup_epochs": 5,
            },
            "handler": {"_target_": "medmtl.engines.SemiSupervisedHandler", "prefix": "train_"},
            "pairs": {"_target_": "medmtl.transforms.build_weak_strong_transforms", "spatial_dims": 3},
        }
    )
    semi = parser.get_parsed_content("semi")
    assert isinstance(semi, SemiSupervisedIteration) and semi.threshold == 0.8 and semi.rampup_epochs == 5
    assert isinstance(parser.get_parsed_content("handler"), SemiSupervisedHandler)
    assert callable(parser.get_parsed_content("pairs"))
