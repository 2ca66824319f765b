"""State a resume needs that has no ``state_dict`` of its own, listed in the checkpoint's ``save_dict``.

:class:`RandomStates` (random transforms, data-loader generators) and :class:`ResumableEarlyStop`
(patience counter): a run stopped after some epochs and resumed through :class:`ResumableCheckpoint`
ends exactly like a run that was never stopped, and only because these entries are listed (the
trainers here are plain ignite engines: nothing is found by looking at the engine).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, OneOf, RandAffined, RandFlipd, RandGaussianNoised

from medmtl.engines import RandomStates, ResumableCheckpoint, ResumableEarlyStop


def _chain() -> Compose:
    """Random transforms with nested generators (``RandAffined`` wraps ``RandAffine`` wraps ``RandAffineGrid``)."""
    return Compose(
        [
            RandFlipd("image", prob=0.5, spatial_axis=0),
            Compose([RandAffined("image", prob=0.9, rotate_range=0.5, scale_range=0.2, padding_mode="zeros")]),
            OneOf([RandGaussianNoised("image", prob=1.0, std=0.1), RandFlipd("image", prob=1.0, spatial_axis=1)]),
        ]
    )


def _samples(n: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, 8, 8, generator=g), "label": torch.rand(1, generator=g)} for _ in range(n)]


def _draws(chain: Compose, n: int = 4) -> list[torch.Tensor]:
    return [torch.as_tensor(chain(dict(s))["image"]) for s in _samples(n)]


def test_random_states_continue_every_random_stream_of_the_chain(tmp_path) -> None:
    chain = _chain().set_random_state(seed=3)
    _draws(chain)  # the first "epoch"
    path = tmp_path / "states.pt"
    torch.save(RandomStates(chain).state_dict(), path)
    expected = _draws(chain)  # what the uninterrupted run sees next

    restarted = _chain().set_random_state(seed=3)  # a new process builds and seeds the same chain
    RandomStates(restarted).load_state_dict(torch.load(path, weights_only=True))
    for a, b in zip(expected, _draws(restarted), strict=True):
        torch.testing.assert_close(a, b)
    # 2 Composes, 2 RandFlipd, RandAffined + RandAffine + RandAffineGrid, OneOf, RandGaussianNoised + its array twin
    assert len(RandomStates(chain).state_dict()["transforms"]) == 10


def test_random_states_of_another_chain_are_not_applied(caplog) -> None:
    saved = RandomStates(_chain().set_random_state(seed=1)).state_dict()
    other = Compose([RandFlipd("image", prob=0.5)]).set_random_state(seed=2)
    before = other.transforms[0].R.get_state()[1].copy()
    with caplog.at_level("WARNING"):
        RandomStates(other).load_state_dict(saved)
    assert "holds 10 random states of random transforms but this run has 2" in caplog.text
    assert (other.transforms[0].R.get_state()[1] == before).all()
    with pytest.raises(TypeError, match="must be a MONAI Compose"):
        RandomStates(lambda x: x)


def test_random_states_continue_an_explicit_loader_generator() -> None:
    def loader() -> DataLoader:
        return DataLoader(
            Dataset(list(range(8))), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)
        )

    first = loader()
    next(iter(first))
    state = RandomStates(loader=first).state_dict()
    expected = next(iter(first))
    second = loader()
    RandomStates(loader=second).load_state_dict(state)
    assert torch.equal(next(iter(second)), expected)
    assert not torch.equal(next(iter(loader())), expected)  # without the state: the first epoch's order


def _train(folder: Path, epochs: int, list_random_states: bool = True) -> torch.nn.Module:
    """A plain ignite loop over a MONAI loader with random transforms; ``last.pt`` after every epoch."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    chain = _chain()
    data = DataLoader(Dataset(_samples(), transform=chain), batch_size=3, shuffle=True)  # seeds the transforms

    def step(engine: Engine, batch: dict) -> float:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(network(batch["image"]), batch["label"])
        loss.backward()
        optimizer.step()
        return loss.item()

    trainer = Engine(step)
    save = {"network": network, "optimizer": optimizer}
    if list_random_states:
        save["random_states"] = RandomStates(chain)
    ResumableCheckpoint(folder, save).attach(trainer)
    trainer.run(data, max_epochs=epochs)
    return network


def test_listed_random_states_make_a_resumed_run_match_an_uninterrupted_one(tmp_path) -> None:
    straight = _train(tmp_path / "straight", 3)
    _train(tmp_path / "resumed", 1)
    resumed = _train(tmp_path / "resumed", 3)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    _train(tmp_path / "unlisted", 1, list_random_states=False)
    unlisted = _train(tmp_path / "unlisted", 3, list_random_states=False)
    assert not torch.equal(straight[1].weight, unlisted[1].weight)  # the first epoch's augmentations again


SCORES = [0.5, 0.4, 0.6, 0.55, 0.5, 0.45, 0.4, 0.3]  # patience 2: stops after epoch 5


def _stopping_run(folder: Path, epochs: int, list_early_stop: bool = True) -> int:
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: None)
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(score=SCORES[trainer.state.epoch - 1])
    )
    stop = ResumableEarlyStop(patience=2, score_function=lambda e: e.state.metrics["score"])
    stop.attach(evaluator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    save = {"network": torch.nn.Linear(1, 1), "early_stopping": stop if list_early_stop else None}
    ResumableCheckpoint(folder, save).attach(trainer)
    stop.set_trainer(trainer)  # as a bundle's "run" does, before the trainer starts
    trainer.run([0], max_epochs=epochs)
    return trainer.state.epoch


def test_early_stopping_counter_survives_a_resume(tmp_path) -> None:
    assert _stopping_run(tmp_path / "straight", 8) == 5
    assert _stopping_run(tmp_path / "resumed", 4) == 4  # stopped after epoch 4, one epoch without improvement
    assert _stopping_run(tmp_path / "resumed", 8) == 5
    _stopping_run(tmp_path / "unlisted", 4, list_early_stop=False)
    assert _stopping_run(tmp_path / "unlisted", 8, list_early_stop=False) == 7  # the count started again


def test_early_stop_state_loaded_before_set_trainer_and_in_the_old_list_format() -> None:
    trainer = Engine(lambda engine, batch: None)
    ignite_state = dict(EarlyStopping(patience=3, score_function=lambda e: 0.0, trainer=trainer).state_dict())
    legacy = [{**ignite_state, "counter": 2, "best_score": 0.7}]  # what medmtl wrote before: one per stopper
    stop = ResumableEarlyStop(patience=3, score_function=lambda e: 0.0)
    stop.load_state_dict(legacy)
    assert stop.state_dict() == legacy[0]
    stop.set_trainer(trainer)
    assert stop.state_dict() == legacy[0]
    stop.load_state_dict({**ignite_state, "counter": 1, "best_score": 0.9})
    assert stop.state_dict()["counter"] == 1 and stop.state_dict()["best_score"] == 0.9
