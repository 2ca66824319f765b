"""EvalModePerRun: eval mode once per evaluation run, same outputs as MONAI's per-batch eval_mode."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import EnsembleEvaluator, SupervisedEvaluator
from monai.networks.utils import train_mode
from torch import nn

from medmtl.engines import EvalModePerRun


class CountingNet(nn.Module):
    """Dropout + batch norm (outputs depend on the mode); counts top-level ``train()`` walks and
    records, for every forward, whether it ran in eval mode without gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5))
        self.walks = 0
        self.forwards: list[tuple[bool, bool]] = []  # (every submodule in eval mode, gradients enabled)

    def train(self, mode: bool = True) -> CountingNet:
        self.walks += 1
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards.append((not any(m.training for m in self.modules()), torch.is_grad_enabled()))
        return self.body(x)


def make_evaluator(network: nn.Module, per_run: bool, batches: int = 4) -> SupervisedEvaluator:
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(1, 8, 8, generator=g), "label": torch.zeros(1)} for _ in range(batches * 2)]
    return SupervisedEvaluator(  # handlers given as the bundles give them: attached inside __init__
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2, shuffle=False),
        network=network,
        val_handlers=[EvalModePerRun()] if per_run else None,
        decollate=False,
    )


def collect_predictions(evaluator: SupervisedEvaluator) -> list[torch.Tensor]:
    preds: list[torch.Tensor] = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: preds.append(e.state.output["pred"].clone()))
    evaluator.run()
    return preds


def trained_net() -> CountingNet:
    torch.manual_seed(0)
    net = CountingNet()
    net.body[1].running_mean.fill_(0.3)  # non-default statistics, so train vs eval mode differ
    net.body[1].running_var.fill_(2.0)
    return net.train()


def test_same_predictions_as_monai_eval_mode_with_one_walk_each_way():
    monai_net, per_run_net = trained_net(), trained_net()
    per_run_net.load_state_dict(monai_net.state_dict())
    monai_net.walks = per_run_net.walks = 0

    expected = collect_predictions(make_evaluator(monai_net, per_run=False))
    got = collect_predictions(make_evaluator(per_run_net, per_run=True))

    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert per_run_net.forwards == [(True, False)] * 4  # eval mode everywhere, no gradients
    assert monai_net.walks == 2 * 4  # MONAI: eval() and train() around every batch
    assert per_run_net.walks == 2  # once into eval at the start, once back to training at the end
    assert per_run_net.training and all(m.training for m in per_run_net.modules())


def test_a_network_in_eval_mode_stays_in_eval_mode():
    net = trained_net().eval()
    net.walks = 0
    make_evaluator(net, per_run=True).run()
    assert not net.training and net.walks == 0
    assert net.forwards == [(True, False)] * 4


def test_a_network_switched_to_training_mid_run_is_put_back_in_eval_mode():
    net = trained_net()
    evaluator = make_evaluator(net, per_run=True)
    evaluator.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda: net.train())
    evaluator.run()
    assert net.forwards == [(True, False)] * 4
    assert net.training


def test_a_handler_raising_between_batches_ends_the_run_in_eval_mode():
    """Documented difference from MONAI's per-batch restore: the run stops with the network in eval
    mode (the trainer that ran the evaluator sets train mode again on its next iteration)."""
    net = trained_net()
    evaluator = make_evaluator(net, per_run=True)

    def fail(engine: Engine) -> None:
        raise RuntimeError("disk full")

    evaluator.add_event_handler(Events.ITERATION_COMPLETED(once=1), fail)
    with pytest.raises(RuntimeError, match="disk full"):
        evaluator.run()
    assert not net.training and net.forwards == [(True, False)]


def test_a_failing_forward_restores_training_like_monai():
    net = trained_net()
    evaluator = make_evaluator(net, per_run=True)

    def broken_forward(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA out of memory")

    net.forward = broken_forward  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluator.run()
    assert net.training and all(m.training for m in net.modules())


def test_ensemble_evaluator_networks_are_all_switched_once():
    nets = [trained_net(), trained_net()]
    for net in nets:
        net.walks = 0
    data = [{"image": torch.randn(1, 8, 8), "label": torch.zeros(1)} for _ in range(4)]
    EnsembleEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        networks=nets,
        pred_keys=["a", "b"],
        val_handlers=[EvalModePerRun()],
        decollate=False,
    ).run()
    for net in nets:
        assert net.forwards == [(True, False)] * 2 and net.walks == 2 and net.training


def test_refuses_an_evaluator_that_runs_in_train_mode():
    evaluator = make_evaluator(trained_net(), per_run=True)
    evaluator.mode = train_mode  # what SupervisedEvaluator(mode="train") sets
    with pytest.raises(ValueError, match="runs batches in train_mode: remove EvalModePerRun"):
        evaluator.run()


def test_refuses_an_engine_that_is_not_a_monai_evaluator():
    with pytest.raises(TypeError, match="needs a MONAI evaluator, got Engine"):
        EvalModePerRun().attach(Engine(lambda e, b: None))
