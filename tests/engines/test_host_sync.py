"""The training path keeps the GPU's queue full: flags on the host, no per-iteration reads.

On CPU these tests check the host-side pieces (flags stay on the host, the class-range check runs
before the move and names the cases); with CUDA, a whole training epoch runs under
``torch.cuda.set_sync_debug_mode("error")``, which raises at any op that blocks the host.
"""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer

from medmtl.data import Task
from medmtl.engines import MultiTaskLossHandler, MultiTaskPrepareBatch
from medmtl.losses import MultiTaskLoss
from medmtl.losses.task_losses import build_task_loss
from medmtl.networks import MultiTaskNet

TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="grade", kind="multiclass", classes=["low", "mid", "high"]),
]


def _samples(n: int = 8, grade_offset: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "case_id": f"case_{i}",
            "image": torch.randn(1, 32, 32, generator=g),
            "lesion": (torch.rand(1, 32, 32, generator=g) > 0.7).long(),
            "lesion_present": torch.tensor(i % 3 != 2),
            "grade": torch.tensor(i % 3 + (grade_offset if i == 5 else 0)),
            "grade_present": torch.tensor(i % 2 == 0 or i == 5),
        }
        for i in range(n)
    ]


def _batch(**kwargs) -> dict:
    return next(iter(DataLoader(Dataset(_samples(**kwargs)), batch_size=8)))


def test_present_flags_stay_on_the_host_while_targets_move() -> None:
    inputs, targets = MultiTaskPrepareBatch(TASKS)(_batch(), torch.device("meta"))
    assert inputs.device.type == "meta" and targets["grade"].device.type == "meta"
    assert targets["grade_present"].device.type == "cpu" and targets["grade_present"].dtype == torch.bool
    assert targets["grade_present"].tolist() == [i % 2 == 0 or i == 5 for i in range(8)]


def test_out_of_range_labels_are_named_before_the_move_to_the_device() -> None:
    with pytest.raises(ValueError, match=r"task 'grade'.*outside \[0, 2\] in \['case_5'\]"):
        MultiTaskPrepareBatch(TASKS)(_batch(grade_offset=3), torch.device("meta"))
    unlabelled_bad = _batch(grade_offset=3)
    unlabelled_bad["grade_present"][5] = False  # a placeholder outside the range is not an error
    MultiTaskPrepareBatch(TASKS)(unlabelled_bad, torch.device("meta"))


def test_masked_loss_with_host_flags_equals_the_loss_on_the_labelled_rows() -> None:
    loss = build_task_loss(TASKS[1], class_weights=[1.0, 2.0, 0.5])
    logits, target = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    flags = torch.tensor([True, False, True, True, False, False, True, False])
    expected = torch.nn.functional.cross_entropy(logits[flags], target[flags], weight=torch.tensor([1.0, 2.0, 0.5]))
    assert loss(logits, target, flags).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss(logits, target, flags.tolist()).item() == pytest.approx(expected.item(), rel=1e-6)


def test_multitask_loss_counts_labelled_samples_from_host_flags() -> None:
    loss = MultiTaskLoss(TASKS, weighting="uncertainty")
    _, targets = MultiTaskPrepareBatch(TASKS)(_batch(), torch.device("cpu"))
    preds = {"lesion": torch.randn(8, 2, 32, 32), "grade": torch.randn(8, 3)}
    loss(preds, targets)
    assert loss.last_num_labelled == {"lesion": 6, "grade": 5}
    assert loss.last_weights == {"lesion": 1.0, "grade": 1.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs exist on CUDA only")
@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_cuda_training_epoch_never_blocks_the_host(weighting: str) -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = MultiTaskNet("unet", TASKS, backbone_kwargs={"spatial_dims": 2, "features": (4, 4, 8, 8, 16, 4)}).to(device)
    loss = MultiTaskLoss(TASKS, weighting=weighting).to(device)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(_samples(16)), batch_size=4),
        network=net,
        optimizer=torch.optim.AdamW(loss.param_groups(net.parameters()), lr=1e-3),
        loss_function=loss,
        prepare_batch=MultiTaskPrepareBatch(TASKS),
        non_blocking=True,  # as the bundles
        decollate=False,  # MONAI's decollation reads per-sample GPU scalars; this test checks medmtl's parts
    )
    handler = MultiTaskLossHandler(loss, net)
    handler.attach(trainer)
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: torch.cuda.set_sync_debug_mode("error"))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: torch.cuda.set_sync_debug_mode("default"))
    try:
        trainer.run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.state.iteration == 4
    assert set(trainer.state.metrics) >= {"train_loss/lesion", "train_loss/grade"}
