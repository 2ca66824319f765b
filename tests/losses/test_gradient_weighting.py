"""Gradient-based weightings: PCGrad projection and backward, GradNorm balancing and resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medmtl.losses import GradNormWeighting, PCGradWeighting, build_weighting, project_conflicting


def test_project_conflicting_matches_formula_for_two_tasks():
    g1 = torch.tensor([1.0, 0.0, 2.0])
    g2 = torch.tensor([-1.0, 1.0, -1.0])
    assert torch.dot(g1, g2) < 0
    out = project_conflicting(torch.stack([g1, g2]))
    exp1 = g1 - torch.dot(g1, g2) / torch.dot(g2, g2) * g2
    exp2 = g2 - torch.dot(g2, g1) / torch.dot(g1, g1) * g1
    assert torch.allclose(out[0], exp1) and torch.allclose(out[1], exp2)
    assert torch.dot(out[0], out[1]) >= 0
    assert torch.dot(out[0], g2).abs() < 1e-6 and torch.dot(out[1], g1).abs() < 1e-6
    small = project_conflicting(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    assert torch.allclose(small, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))


def test_project_conflicting_leaves_agreeing_gradients_alone():
    g = torch.tensor([[1.0, 2.0], [0.5, 0.1], [3.0, -0.1]])
    assert torch.equal(project_conflicting(g), g)
    with pytest.raises(ValueError, match="tasks, params"):
        project_conflicting(torch.ones(3))


class _Toy(nn.Module):
    """Shared trunk + one linear head per task; head 'b' starts as the negative of head 'a' (conflict)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})
        with torch.no_grad():
            self.heads["b"].weight.copy_(-self.heads["a"].weight)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.trunk(x))
        return {k: head(h) for k, head in self.heads.items()}


def _toy_losses(net: _Toy, scale_b: float = 1.0) -> dict[str, torch.Tensor]:
    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    out = net(x)
    return {"a": (out["a"] - 1).pow(2).mean(), "b": scale_b * (out["b"] - 1).pow(2).mean()}


def test_pcgrad_backward_sets_projected_shared_and_plain_head_grads():
    net = _Toy()
    shared = list(net.trunk.parameters())
    losses = _toy_losses(net)
    grads = [torch.autograd.grad(losses[k], shared, retain_graph=True) for k in ("a", "b")]
    flat = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in grads])
    assert torch.dot(flat[0], flat[1]) < 0  # the toy really conflicts
    expected_shared = project_conflicting(flat).sum(0)
    head_a = torch.autograd.grad(losses["a"], list(net.heads["a"].parameters()), retain_graph=True)

    # pre-existing gradients accumulate, as with loss.backward()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    weighting = PCGradWeighting(["a", "b"])
    assert weighting.manipulates_gradients and not weighting.requires_shared_grads
    weighting.backward(losses, shared)
    got_shared = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(got_shared, expected_shared + 1, atol=1e-6)
    for p, g in zip(net.heads["a"].parameters(), head_a, strict=True):
        assert torch.allclose(p.grad, g + 1, atol=1e-6)
    assert int(weighting.step) == 1


def test_pcgrad_order_is_resumable():
    w = PCGradWeighting(["a", "b", "c"], seed=3)
    w.step.fill_(5)
    restored = PCGradWeighting(["a", "b", "c"], seed=3)
    restored.load_state_dict(copy.deepcopy(w.state_dict()))
    g = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    out1 = project_conflicting(g, torch.Generator().manual_seed(w.seed + int(w.step)))
    out2 = project_conflicting(g, torch.Generator().manual_seed(restored.seed + int(restored.step)))
    assert torch.equal(out1, out2)


def _grad_norms(net: _Toy, losses: dict[str, torch.Tensor], weights: dict[str, float]) -> dict[str, float]:
    shared = list(net.trunk.parameters())
    out = {}
    for k, loss in losses.items():
        gs = torch.autograd.grad(weights[k] * loss, shared, retain_graph=True)
        out[k] = float(torch.sqrt(sum(g.pow(2).sum() for g in gs)))
    return out


def test_gradnorm_balances_gradient_norms_on_toy_problem():
    net = _Toy()
    weighting = GradNormWeighting(["a", "b"], alpha=0.0, lr=0.05)
    assert weighting.requires_shared_grads
    initial = _grad_norms(net, _toy_losses(net, scale_b=10.0), weighting.current_weights())
    assert initial["b"] / initial["a"] > 5
    for _ in range(150):
        weighting.gradnorm_step(_toy_losses(net, scale_b=10.0), net.trunk.parameters())
    w = weighting.current_weights()
    assert sum(w.values()) == pytest.approx(2.0)
    assert w["b"] < 0.5 < 1.5 < w["a"]
    final = _grad_norms(net, _toy_losses(net, scale_b=10.0), w)
    assert 0.8 < final["b"] / final["a"] < 1.25
    assert weighting.last_grad_norms.keys() == {"a", "b"}


def test_gradnorm_with_training_moves_weights_toward_balance():
    net = _Toy()
    weighting = build_weighting("gradnorm", ["a", "b"], alpha=1.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    imbalance = []
    for _ in range(40):
        opt.zero_grad()
        losses = _toy_losses(net, scale_b=10.0)
        norms = weighting.gradnorm_step(losses, net.trunk.parameters())
        imbalance.append(norms["b"] / norms["a"])
        weighting(losses).backward()
        opt.step()
    assert imbalance[-1] < imbalance[0] / 2
    assert weighting.current_weights()["b"] < weighting.current_weights()["a"]


def test_gradnorm_state_round_trip_reproduces_next_weights():
    net = _Toy()
    reference = GradNormWeighting(["a", "b"])
    for _ in range(5):
        reference.gradnorm_step(_toy_losses(net, 3.0), net.trunk.parameters())
    resumed = GradNormWeighting(["a", "b"])
    resumed.load_state_dict(copy.deepcopy(reference.state_dict()))
    for k, v in reference.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    for _ in range(3):
        losses = _toy_losses(net, 3.0)
        reference.gradnorm_step(losses, net.trunk.parameters())
        resumed.gradnorm_step(losses, net.trunk.parameters())
    assert reference.current_weights() == resumed.current_weights()
    assert reference.current_weights() != GradNormWeighting(["a", "b"]).current_weights()


def test_gradnorm_checks_inputs():
    with pytest.raises(ValueError, match="alpha >= 0"):
        GradNormWeighting(["a"], alpha=-1)
    net = _Toy()
    frozen = [p.detach() for p in net.trunk.parameters()]
    with pytest.raises(ValueError, match="no shared parameter that requires grad"):
        GradNormWeighting(["a", "b"]).gradnorm_step(_toy_losses(net), frozen)
    with pytest.raises(ValueError, match="unknown tasks"):
        GradNormWeighting(["a"]).gradnorm_step(_toy_losses(net), net.trunk.parameters())
