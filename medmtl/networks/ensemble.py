"""The folds of a cross-validation as one network: per-task probabilities averaged (nnU-Net's fold ensemble).

Why one module: evaluation, inference and TTA then run the ensemble like any network (one loading
and preprocessing of each case, K forward passes), and every writer, metric and threshold keeps
working on ``{task: logits}``. The output is the logits of the averaged probabilities
(``log p`` for softmax tasks, ``logit p`` for sigmoid tasks), so ``softmax`` / ``sigmoid``
downstream gives back exactly the average.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from medmtl.data.task_keys import FOLD_MEMBERS_KEY
from medmtl.data.tasks import Task, TaskKind
from medmtl.networks.backbone_holders import HoldsBackbones, prefixed_backbones
from medmtl.networks.backbones import Backbone

__all__ = ["FoldEnsemble", "average_probabilities", "ensemble_state_dict", "stack_members"]

_EPS = 1e-7


def average_probabilities(
    outputs: Sequence[Mapping[str, torch.Tensor]], tasks: Sequence[Task]
) -> dict[str, torch.Tensor]:
    """The logits of the mean probabilities of several ``{task: logits}`` predictions of the same cases.

    Softmax tasks (segmentation, multiclass) give ``log p``, sigmoid tasks ``logit p``, so the
    downstream activation gives back exactly the mean probability. Outputs that are not tasks
    (e.g. a saliency map) are averaged as they are.
    """
    softmax = {t.name for t in tasks if t.kind in (TaskKind.SEGMENTATION, TaskKind.MULTICLASS)}
    sigmoid = {t.name for t in tasks if t.kind in (TaskKind.BINARY, TaskKind.MULTILABEL)}
    total: dict[str, torch.Tensor] = {}
    for output in outputs:
        for name, value in output.items():
            if not isinstance(value, torch.Tensor):
                continue
            if name in softmax:
                value = torch.softmax(value.float(), dim=1)
            elif name in sigmoid:
                value = torch.sigmoid(value.float())
            total[name] = total[name] + value if name in total else value
    out = {}
    for name, summed in total.items():
        mean = summed / len(outputs)
        if name in softmax or name in sigmoid:
            p = mean.clamp(_EPS, 1 - _EPS)
            mean = torch.log(p) if name in softmax else torch.logit(p)
        out[name] = mean
    return out


def stack_members(outputs: Sequence[Mapping[str, torch.Tensor]], tasks: Sequence[Task]) -> dict[str, torch.Tensor]:
    """``{task: (B, members, C) logits}`` of the image-level tasks: the members' own predictions, for their spread."""
    image_level = [t.name for t in tasks if not t.is_dense]
    return {name: torch.stack([o[name].float() for o in outputs], dim=1) for name in image_level if name in outputs[0]}


class FoldEnsemble(nn.Module, HoldsBackbones):
    """Average the probabilities of ``members`` per task.

    Args:
        members: networks returning ``{task: logits}`` (the folds, same architecture).
        tasks: the tasks (kind decides softmax or sigmoid).
        return_members: also return ``{"fold_members": {task: (B, folds, C) logits}}`` for the
            image-level tasks: each fold's own answer, from which inference reports the folds'
            disagreement per case.

    Example::

        ensemble = FoldEnsemble([copy.deepcopy(net) for _ in range(5)], tasks)
        ensemble.load_state_dict(ensemble_state_dict(["fold_0/models/last.pt", ...]))
    """

    def __init__(self, members: Sequence[nn.Module], tasks: Sequence[Task], return_members: bool = False) -> None:
        super().__init__()
        if not members:
            raise ValueError("FoldEnsemble needs at least one member network")
        self.members = nn.ModuleList(members)
        self.tasks = list(tasks)
        self.return_members = return_members

    @classmethod
    def replicate(
        cls, network: nn.Module, tasks: Sequence[Task], members: int, return_members: bool = False
    ) -> FoldEnsemble:
        """``members`` copies of ``network`` (weights loaded afterwards, e.g. by the bundle's checkpoint loader)."""
        return cls([copy.deepcopy(network) for _ in range(int(members))], tasks, return_members)

    def backbones(self) -> dict[str, Backbone]:
        """Every member's backbones, under ``members.<i>.``."""
        return {k: b for i, m in enumerate(self.members) for k, b in prefixed_backbones(f"members.{i}", m).items()}

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = [member(x) for member in self.members]
        out: dict = average_probabilities(outputs, self.tasks)
        if self.return_members:
            out[FOLD_MEMBERS_KEY] = stack_members(outputs, self.tasks)
        return out


def ensemble_state_dict(checkpoints: Sequence[str | os.PathLike], key: str = "network") -> dict[str, torch.Tensor]:
    """The state dict of a :class:`FoldEnsemble` from the members' checkpoints (``weights_only``, nothing executed).

    Raises:
        FileNotFoundError / KeyError: naming the checkpoint that is missing or lacks ``key``.
    """
    merged: dict[str, torch.Tensor] = {}
    for index, path in enumerate(checkpoints):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"fold checkpoint {path} not found; train that fold first (medmtl cv resumes)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get(key) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise KeyError(f"{path} holds no '{key}' state dict; give the last.pt or best.pt of a medmtl run")
        merged.update({f"members.{index}.{name}": value for name, value in state.items()})
    return merged
