"""The random and stopping state of a run as ``save_dict`` entries, named by the bundle.

Why: :class:`~medmtl.engines.ResumableCheckpoint` saves exactly the objects its ``save_dict``
lists (as MONAI's ``CheckpointSaver`` and ignite's ``Checkpoint`` do); nothing is found by walking
objects or ignite's handler tables. Two parts of a run's state have no ``state_dict`` of their own:

- :class:`RandomStates`: MONAI's ``DataLoader`` (``num_workers=0``) seeds each random transform's
  own ``RandomState`` (``transform.R``) once, when it is built (``monai.data.utils.set_rnd``); those
  states advance with every augmented sample and are in no global RNG. Restoring only the global
  RNGs would replay the first epoch's augmentations instead of the next ones.
- :class:`ResumableEarlyStop`: MONAI's ``EarlyStopHandler`` keeps ignite's ``EarlyStopping``
  (patience counter, best score) without exposing its state.

In a bundle::

    "save_dict": {"network": "@network", ...,
                  "random_states": {"_target_": "medmtl.engines.RandomStates",
                                    "preprocessing": "@train::preprocessing"},
                  "early_stopping": "@validate::early_stop"}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.handlers import EarlyStopHandler
from monai.transforms import Compose, Randomizable

__all__ = ["RandomStates", "ResumableEarlyStop", "numpy_state", "numpy_state_tuple"]

logger = logging.getLogger(__name__)


def numpy_state(state: tuple) -> list[Any]:
    """A numpy ``RandomState.get_state()`` in plain types (``torch.load(weights_only=True)`` reads it)."""
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def numpy_state_tuple(state: Sequence[Any]) -> tuple:
    """The inverse of :func:`numpy_state`, for ``RandomState.set_state``."""
    name, keys, pos, has_gauss, cached = state
    return (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)


def _randomizables(transform: Any, found: list[Randomizable]) -> None:
    """The random transforms of ``transform`` in a fixed order: the ones ``set_random_state`` seeds.

    A ``Compose`` (``OneOf``, ``RandomOrder``...) is listed with its ``transforms``; a MONAI random
    dictionary transform with the random array transforms it wraps (``RandAffined.rand_affine``,
    itself holding ``rand_affine_grid``), which have their own ``R``.
    """
    if any(transform is f for f in found):
        return
    if isinstance(transform, Randomizable):
        found.append(transform)
        members = list(vars(transform).values())
    else:
        members = []
    if isinstance(transform, Compose):
        members = list(transform.transforms)
    for member in members:
        if isinstance(member, Randomizable):
            _randomizables(member, found)


class RandomStates:
    """The random streams of a training data pipeline: random transforms and data-loader generators.

    Args:
        preprocessing: the ``Compose`` (or several) whose random transforms feed the trainer, e.g.
            ``@train::preprocessing`` (and, for semi-supervised runs, the unlabelled chain). Every
            ``Randomizable`` in it keeps its position; an unseeded one draws from MONAI's
            class-level ``Randomizable.R``, which is then saved once.
        loader: a data loader whose ``generator`` or ``sampler.generator`` was set explicitly (by
            default PyTorch's samplers draw from the global torch RNG, which the checkpoint saves).

    Its ``state_dict`` holds plain lists and tensors only. A checkpoint written for other transforms
    (another count) is not applied, with a warning: the run continues with other augmentations.
    """

    resumes_without_state = True
    """A ``last.pt`` without this entry (an older medmtl) resumes; only the augmentations differ."""

    def __init__(self, preprocessing: Any | Sequence[Any] | None = None, loader: Any | None = None) -> None:
        chains = preprocessing if isinstance(preprocessing, list | tuple) else [preprocessing]
        self.transforms: list[Randomizable] = []
        for chain in chains:
            if chain is None:
                continue
            if not isinstance(chain, Randomizable):
                raise TypeError(
                    f"RandomStates preprocessing must be a MONAI Compose or random transform, got "
                    f"{type(chain).__name__}: pass the training transform chain (e.g. @train::preprocessing)"
                )
            _randomizables(chain, self.transforms)
        self.loader = loader

    def _generators(self) -> list[np.random.RandomState]:
        """Each transform's ``R`` once (unseeded transforms share the class-level one)."""
        generators: list[np.random.RandomState] = []
        for transform in self.transforms:
            if not any(transform.R is g for g in generators):
                generators.append(transform.R)
        return generators

    def _torch_generators(self) -> list[torch.Generator]:
        if self.loader is None:
            return []
        candidates = [
            getattr(self.loader, "generator", None),
            getattr(getattr(self.loader, "sampler", None), "generator", None),
        ]
        found: list[torch.Generator] = []
        for generator in candidates:
            if isinstance(generator, torch.Generator) and not any(generator is g for g in found):
                found.append(generator)
        return found

    def state_dict(self) -> dict[str, Any]:
        return {
            "transforms": [numpy_state(g.get_state()) for g in self._generators()],
            "generators": [g.get_state() for g in self._torch_generators()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        for part, generators, restore in (
            ("transforms", self._generators(), lambda g, s: g.set_state(numpy_state_tuple(s))),
            ("generators", self._torch_generators(), lambda g, s: g.set_state(s)),
        ):
            saved = list(state.get(part, []))
            if len(saved) != len(generators):
                logger.warning(
                    "the checkpoint holds %d random states of %s but this run has %d (the data pipeline changed?): "
                    "augmentations after the resume will differ from an uninterrupted run",
                    len(saved),
                    "random transforms" if part == "transforms" else "data-loader generators",
                    len(generators),
                )
                continue
            for generator, value in zip(generators, saved, strict=True):
                restore(generator, value)


class ResumableEarlyStop(EarlyStopHandler):
    """MONAI's ``EarlyStopHandler`` with a ``state_dict``: a resumed run keeps its patience count.

    Same arguments as ``EarlyStopHandler``; list it in the checkpoint's ``save_dict``. A state
    loaded before ``set_trainer`` (which creates ignite's ``EarlyStopping``) is applied there.
    """

    resumes_without_state = True
    """Without a saved state the patience count starts again: at worst the run trains longer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending: dict[str, Any] | None = None
        super().__init__(*args, **kwargs)
        # ``self._handler`` below is the base class's ignite EarlyStopping (MONAI exposes no accessor)

    def set_trainer(self, trainer: Any) -> None:
        super().set_trainer(trainer)
        if self._pending is not None:
            self._handler.load_state_dict(self._pending)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        if self._handler is None:
            return dict(self._pending or {})
        return dict(self._handler.state_dict())

    def load_state_dict(self, state: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Restore the counter and best score; a list is the format medmtl wrote before (one per stopper)."""
        if isinstance(state, list | tuple):
            state = state[0] if state else {}
        if not state:
            return
        if self._handler is None:
            self._pending = dict(state)
        else:
            self._handler.load_state_dict(state)
