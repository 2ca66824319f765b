"""Fixtures for the network tests: small task sets, matching random targets, per-task losses, a training loop."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from medmtl.data.tasks import Task, TaskKind

SEG_BIN_MULTI = [
    {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
    {"name": "malignant", "kind": "binary"},
    {"name": "diagnosis", "kind": "multiclass", "classes": ["benign", "malignant", "normal"]},
]


@pytest.fixture
def tasks3() -> list[dict]:
    """Segmentation + binary + multiclass tasks, as a bundle config would give them (plain dicts)."""
    return [dict(t) for t in SEG_BIN_MULTI]


def make_targets(tasks: list[Task | dict], batch: int, spatial: tuple[int, ...], seed: int = 0) -> dict:
    """Random but fixed targets for each task: label maps, 0/1 floats, class indices, multi-hot."""
    g = torch.Generator().manual_seed(seed)
    targets = {}
    for t in tasks:
        t = t if isinstance(t, Task) else Task.model_validate(t)
        if t.kind == TaskKind.SEGMENTATION:
            targets[t.name] = torch.randint(0, t.num_outputs, (batch, *spatial), generator=g)
        elif t.kind == TaskKind.BINARY:
            targets[t.name] = torch.tensor([[float(i % 2)] for i in range(batch)])
        elif t.kind == TaskKind.MULTICLASS:
            targets[t.name] = torch.arange(batch) % t.num_outputs
        else:
            targets[t.name] = torch.randint(0, 2, (batch, t.num_outputs), generator=g).float()
    return targets


def task_losses(out: dict[str, torch.Tensor], targets: dict, tasks: list[Task | dict]) -> dict[str, torch.Tensor]:
    """Plain per-task losses: CE for segmentation/multiclass, BCE with logits for binary/multilabel."""
    losses = {}
    for t in tasks:
        t = t if isinstance(t, Task) else Task.model_validate(t)
        if t.kind in (TaskKind.SEGMENTATION, TaskKind.MULTICLASS):
            losses[t.name] = F.cross_entropy(out[t.name], targets[t.name])
        else:
            losses[t.name] = F.binary_cross_entropy_with_logits(out[t.name], targets[t.name])
    return losses


def train_steps(
    net: torch.nn.Module,
    x,
    targets: dict,
    tasks: list[Task | dict],
    steps: int = 8,
    lr: float = 1e-2,
    params=None,
) -> tuple[dict[str, float], dict[str, float]]:
    """A few Adam steps on one batch; returns the per-task losses before the first step and after the last."""
    net.train()
    optimizer = torch.optim.Adam(net.parameters() if params is None else params, lr=lr)
    first: dict[str, float] = {}
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        losses = task_losses(net(x), targets, tasks)
        sum(losses.values()).backward()
        optimizer.step()
        if step == 0:
            first = {k: float(v.detach()) for k, v in losses.items()}
    with torch.no_grad():
        last = {k: float(v) for k, v in task_losses(net(x), targets, tasks).items()}
    return first, last


@pytest.fixture
def trainer() -> Callable:
    """The :func:`train_steps` helper."""
    return train_steps


@pytest.fixture
def targets_for() -> Callable:
    """The :func:`make_targets` helper."""
    return make_targets


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
