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
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medmtl.data.tasks import Task, TaskKind

__all__ = ["FoldEnsemble", "ensemble_state_dict"]

_EPS = 1e-7


class FoldEnsemble(nn.Module):
    """Average the probabilities of ``members`` per task.

    Args:
        members: networks returning ``{task: logits}`` (the folds, same architecture).
        tasks: the tasks (kind decides softmax or sigmoid).

    Example::

        ensemble = FoldEnsemble([copy.deepcopy(net) for _ in range(5)], tasks)
        ensemble.load_state_dict(ensemble_state_dict(["fold_0/models/last.pt", ...]))
    """

    def __init__(self, members: Sequence[nn.Module], tasks: Sequence[Task]) -> None:
        super().__init__()
        if not members:
            raise ValueError("FoldEnsemble needs at least one member network")
        self.members = nn.ModuleList(members)
        self.softmax_tasks = [t.name for t in tasks if t.kind in (TaskKind.SEGMENTATION, TaskKind.MULTICLASS)]
        self.sigmoid_tasks = [t.name for t in tasks if t.kind in (TaskKind.BINARY, TaskKind.MULTILABEL)]

    @classmethod
    def replicate(cls, network: nn.Module, tasks: Sequence[Task], members: int) -> FoldEnsemble:
        """``members`` copies of ``network`` (weights loaded afterwards, e.g. by the bundle's checkpoint loader)."""
        return cls([copy.deepcopy(network) for _ in range(int(members))], tasks)

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        total: dict[str, torch.Tensor] = {}
        for member in self.members:
            for name, logits in member(x).items():
                p = (
                    torch.softmax(logits.float(), dim=1)
                    if name in self.softmax_tasks
                    else torch.sigmoid(logits.float())
                )
                total[name] = total[name] + p if name in total else p
        out = {}
        for name, summed in total.items():
            p = (summed / len(self.members)).clamp(_EPS, 1 - _EPS)
            out[name] = torch.log(p) if name in self.softmax_tasks else torch.logit(p)
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
