"""EMAWeights: the average's arithmetic, the swap around epochs, the optimizer untouched, exact resume."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medmtl.engines import CheckpointError, EMAWeights, ResumableCheckpoint


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(3)]


def _trainer(network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Engine:
    def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        network.train()
        optimizer.zero_grad()
        x, y = batch
        loss = torch.nn.functional.mse_loss(network(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return Engine(step)


def test_average_follows_the_formula_with_and_without_warmup() -> None:
    layer = torch.nn.Linear(1, 1, bias=False)
    ema = EMAWeights(layer, decay=0.5, warmup=False)
    for value, expected in ((2.0, 2.0), (4.0, 3.0), (0.0, 1.5)):  # first call copies, then 0.5 old + 0.5 new
        layer.weight.data.fill_(value)
        ema.update()
        assert ema._average[0].item() == pytest.approx(expected)
    warm = EMAWeights(layer, decay=0.99, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): early steps weigh the new weights
    warm.steps = 10_000
    assert warm.current_decay() == pytest.approx(0.99)


def test_network_holds_the_average_between_epochs_and_trains_on_raw_weights() -> None:
    network = _network()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    params_before = [id(p) for p in network.parameters()]
    ema = EMAWeights(network, decay=0.9)
    trainer = _trainer(network, optimizer)
    ema.attach(trainer)
    seen: dict[str, list[torch.Tensor]] = {"start": [], "end": []}
    trainer.add_event_handler(  # after EMAWeights' own EPOCH_STARTED: the raw weights are back
        Events.EPOCH_STARTED, lambda e: seen["start"].append(network[0].weight.detach().clone())
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen["end"].append(network[0].weight.detach().clone()))
    raw_after_epoch: list[torch.Tensor] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: raw_after_epoch.append(ema._raw[0].clone()))
    trainer.run(_batches(), max_epochs=3)

    assert ema.holds_average and ema.steps == 9
    for average, tensor in zip(ema._average, [p for p in network.parameters()], strict=False):
        torch.testing.assert_close(tensor.detach(), average)  # the finished network is the average
    torch.testing.assert_close(network[1].running_mean, ema._average[-2])  # float buffers are averaged
    for epoch in (1, 2):  # epoch e+1 starts from the raw weights of the end of epoch e, not the average
        torch.testing.assert_close(seen["start"][epoch], raw_after_epoch[epoch - 1])
        assert not torch.equal(seen["start"][epoch], seen["end"][epoch - 1])
    assert [id(p) for p in network.parameters()] == params_before  # the optimizer still owns them
    assert optimizer.param_groups[0]["params"][0] is next(network.parameters())


def test_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path) -> None:
    def run(max_epochs: int, folder) -> tuple[torch.nn.Module, EMAWeights]:
        network = _network()
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
        ema = EMAWeights(network, decay=0.8)
        trainer = _trainer(network, optimizer)
        ema.attach(trainer)
        save = {"network": network, "optimizer": optimizer, "weight_average": ema}
        ResumableCheckpoint(folder, save).attach(trainer)
        trainer.run(_batches(), max_epochs=max_epochs)
        return network, ema

    straight, straight_ema = run(3, tmp_path / "straight")
    run(1, tmp_path / "killed")  # stops after epoch 1: last.pt holds the averaged network + the raw weights
    resumed, resumed_ema = run(3, tmp_path / "killed")
    assert resumed_ema.steps == straight_ema.steps == 9
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_checkpoint_written_without_the_average_resumes_with_an_empty_one(tmp_path, caplog) -> None:
    network = _network()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    trainer = _trainer(network, optimizer)
    ResumableCheckpoint(tmp_path, {"network": network, "optimizer": optimizer}).attach(trainer)
    trainer.run(_batches(), max_epochs=1)  # an older run: no weight_average in last.pt
    trained = [t.clone() for t in network.state_dict().values()]

    network = _network()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    ema = EMAWeights(network, decay=0.8)
    trainer = _trainer(network, optimizer)
    ema.attach(trainer)
    ResumableCheckpoint(tmp_path, {"network": network, "optimizer": optimizer, "weight_average": ema}).attach(trainer)
    loaded: list[torch.Tensor] = []
    trainer.add_event_handler(
        Events.EPOCH_STARTED(once=2), lambda e: loaded.extend(t.clone() for t in network.state_dict().values())
    )
    with caplog.at_level("WARNING"):
        trainer.run(_batches(), max_epochs=2)
    assert "has no 'weight_average'" in caplog.text and "EMAWeights starts empty" in caplog.text
    for a, b in zip(trained, loaded, strict=True):  # resumed from the old weights, not from scratch
        torch.testing.assert_close(a, b)
    assert ema.steps == len(_batches())  # one epoch of averaging since the resume
    with pytest.raises(CheckpointError, match="has no 'optimizer2'"):  # other missing entries still fail
        ResumableCheckpoint(tmp_path, {"network": network, "optimizer2": optimizer}).load_last(trainer)


def test_off_when_decay_is_none_and_rejects_bad_decay() -> None:
    network = _network()
    ema = EMAWeights(network, decay=None)
    trainer = _trainer(network, torch.optim.SGD(network.parameters(), lr=0.1))
    ema.attach(trainer)
    assert not trainer.has_event_handler(ema.update, Events.ITERATION_COMPLETED)
    assert ema.state_dict() == {}
    ema.load_state_dict({})  # a checkpoint written with the handler off
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        EMAWeights(network, decay=1.0)


def test_state_for_another_network_is_refused() -> None:
    ema = EMAWeights(_network(), decay=0.9)
    ema.update()
    other = EMAWeights(torch.nn.Linear(3, 1), decay=0.9)
    with pytest.raises(ValueError, match="written for another network"):
        other.load_state_dict(ema.state_dict())
