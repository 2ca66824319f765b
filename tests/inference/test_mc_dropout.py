"""Monte Carlo dropout: dropout on during the passes only, probabilities averaged, every sample kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmtl.data.tasks import Task, TaskKind
from medmtl.inference import MirrorTTAInferer, MonteCarloDropoutInferer

TASKS = [
    Task(name="malignant", kind=TaskKind.BINARY),
    Task(name="grade", kind=TaskKind.MULTICLASS, classes=("a", "b", "c")),
]


class _Net(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.head(self.drop(self.norm(x.flatten(1))))
        return {"malignant": z[:, :1], "grade": z[:, 1:]}


def test_samples_vary_and_average_to_the_output() -> None:
    net = _Net(0.5).eval()
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = MonteCarloDropoutInferer(TASKS, samples=6)(x, net)
        again = MonteCarloDropoutInferer(TASKS, samples=6)(x, net)
    samples = out["mc_dropout_samples"]
    assert samples["malignant"].shape == (3, 6, 1) and samples["grade"].shape == (3, 6, 3)
    assert samples["malignant"].std(dim=1).min() > 0  # dropout was on
    torch.testing.assert_close(torch.sigmoid(out["malignant"]), torch.sigmoid(samples["malignant"]).mean(1))
    torch.testing.assert_close(torch.softmax(out["grade"], 1), torch.softmax(samples["grade"], -1).mean(1))
    torch.testing.assert_close(out["malignant"], again["malignant"])  # seeded: an evaluation repeats
    assert not net.drop.training and not net.norm.training  # eval mode restored; batch norm never left it
    with torch.no_grad():
        torch.testing.assert_close(net(x)["malignant"], net(x)["malignant"])


def test_composes_inside_mirroring_tta() -> None:
    net = _Net(0.3).eval()
    x = torch.rand(2, 1, 2, 4)
    flat = _Flat(net)
    out = MirrorTTAInferer(MonteCarloDropoutInferer(TASKS, samples=3), mirror_axes=[0], keep_passes=True)(x, flat)
    assert out["mc_dropout_samples"]["grade"].shape == (2, 3, 3) and out["tta_passes"]["grade"].shape == (2, 2, 3)


class _Flat(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(x.flatten(1))


def test_a_network_without_dropout_is_refused() -> None:
    with pytest.raises(ValueError, match="no dropout layer"):
        MonteCarloDropoutInferer(TASKS, samples=4)(torch.rand(2, 8), _Net(0.0).eval())
    with pytest.raises(ValueError, match="at least 2"):
        MonteCarloDropoutInferer(TASKS, samples=1)
