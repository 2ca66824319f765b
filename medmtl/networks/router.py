"""Routing to experts: one network per group (e.g. per body part), chosen per sample by a prediction.

Why a network and not a training helper: the router is an ``nn.Module`` that returns
``{task: logits}`` like every medmtl network, so engines, losses, metrics and inference use it
unchanged; its experts are typically fine-tuned with :mod:`medmtl.engines.finetune`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from medmtl.networks.backbone_holders import HoldsBackbones, prefixed_backbones
from medmtl.networks.backbones import Backbone

__all__ = ["ExpertRouter", "router_state_dict"]


class ExpertRouter(nn.Module, HoldsBackbones):
    """Per-sample routing to one expert network per group, chosen by an auxiliary task's prediction.

    E.g. radiographs of seven body parts: a router network predicts ``body_part`` (and possibly
    more), and an expert trained on one body part predicts ``abnormal`` for the images routed to
    it. Each sample goes to the expert of the router's ``argmax`` class (for a binary router task:
    logit > 0 picks expert 1); experts only run on their sub-batches.

    Output: the router's predictions, with each expert task's logits assembled from the experts
    (an expert prediction replaces a router prediction of the same task name, except the router
    task's own: the reported group is always the one that chose the expert). Every expert must
    predict the same tasks with the same output sizes. The input is a tensor or a dict of tensors
    (several views), batch first.

    Args:
        router: a network returning ``{task: logits}`` that includes ``router_task``.
        experts: one network per class of ``router_task``: a sequence in class order, or a mapping
            from class name to network (class names from ``classes`` or from the router's tasks).
        router_task: name of the router's task that picks the expert.
        classes: class names of ``router_task`` in logit order, when ``experts`` is a mapping and
            the router has no ``tasks``.

    Raises:
        ValueError: when the experts do not cover the classes one-to-one.

    Example::

        router = MultiTaskClassifier([{"name": "body_part", "kind": "multiclass", "classes": parts}])
        experts = {part: MultiTaskClassifier([{"name": "abnormal", "kind": "binary"}]) for part in parts}
        net = ExpertRouter(router, experts, "body_part")
        out = net(images)  # {"body_part": (B, 7), "abnormal": (B, 1)}

    See Also:
        :meth:`replicate` and :func:`router_state_dict`: a router and experts of one architecture
        (a multi-task model fine-tuned per group), loaded from their checkpoints (``medmtl experts``).
    """

    def __init__(
        self,
        router: nn.Module,
        experts: Sequence[nn.Module] | Mapping[str, nn.Module],
        router_task: str,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.router = router
        self.router_task = router_task
        task = next((t for t in getattr(router, "tasks", ()) if getattr(t, "name", None) == router_task), None)
        if classes is None and task is not None:
            classes = list(task.class_names)
        self.classes = None if classes is None else [str(c) for c in classes]
        if isinstance(experts, Mapping):
            if self.classes is None:
                raise ValueError(
                    f"ExpertRouter: experts keyed by name {sorted(experts)} need the class order of '{router_task}': "
                    "pass classes=[...] or a router with .tasks"
                )
            if sorted(experts) != sorted(self.classes):
                raise ValueError(
                    f"ExpertRouter: experts {sorted(experts)} must match the classes of '{router_task}' "
                    f"{self.classes} one-to-one"
                )
            ordered = [experts[c] for c in self.classes]
        else:
            ordered = list(experts)
            if self.classes is not None and len(ordered) != len(self.classes):
                raise ValueError(
                    f"ExpertRouter: {len(ordered)} experts for the {len(self.classes)} classes {self.classes} of "
                    f"'{router_task}'"
                )
        if len(ordered) < 2:
            raise ValueError(f"ExpertRouter: needs at least 2 experts, got {len(ordered)}")
        self.experts = nn.ModuleList(ordered)

    @classmethod
    def replicate(cls, network: nn.Module, router_task: str, classes: Sequence[str] | None = None) -> ExpertRouter:
        """``network`` as the router and one copy of it per class of ``router_task`` as the experts.

        The weights are loaded afterwards (a bundle's checkpoint loader, from :func:`router_state_dict`).

        Raises:
            ValueError: when the classes are not known (``network`` has no ``tasks`` naming
                ``router_task`` and ``classes`` is not given).
        """
        if classes is None:
            task = next((t for t in getattr(network, "tasks", ()) if getattr(t, "name", None) == router_task), None)
            if task is None:
                raise ValueError(
                    f"ExpertRouter.replicate: the network has no task '{router_task}' to route by; pass classes=[...]"
                )
            classes = list(task.class_names)
        return cls(network, [copy.deepcopy(network) for _ in classes], router_task, classes)

    def backbones(self) -> dict[str, Backbone]:
        """The router's backbones under ``router.``, each expert's under ``experts.<i>.``."""
        held = prefixed_backbones("router", self.router)
        for i, expert in enumerate(self.experts):
            held.update(prefixed_backbones(f"experts.{i}", expert))
        return held

    def route(self, router_logits: torch.Tensor) -> torch.Tensor:
        """Expert index per sample ``(B,)`` from the router task's logits ``(B, K)``."""
        if router_logits.dim() != 2:
            raise ValueError(
                f"ExpertRouter: '{self.router_task}' logits have shape {tuple(router_logits.shape)}, expected (B, K)"
            )
        outputs = router_logits.shape[1]
        if outputs == 1:
            if len(self.experts) != 2:
                raise ValueError(
                    f"ExpertRouter: a one-logit '{self.router_task}' routes to 2 experts, not {len(self.experts)}"
                )
            return (router_logits[:, 0] > 0).long()
        if outputs != len(self.experts):
            raise ValueError(
                f"ExpertRouter: '{self.router_task}' has {outputs} outputs for {len(self.experts)} experts"
            )
        return router_logits.argmax(dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Route every sample and predict.

        Args:
            x: the input batch, ``(B, C, *spatial)``.

        Returns:
            ``{task: logits}``: the router's tasks plus the experts' tasks, batch order preserved.
        """
        routed = self.router(x)
        if self.router_task not in routed:
            raise KeyError(f"ExpertRouter: the router returned no '{self.router_task}' (got {sorted(routed)})")
        index = self.route(routed[self.router_task])
        out: dict[str, torch.Tensor] = dict(routed)
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        names: set[str] | None = None
        for e, expert in enumerate(self.experts):
            rows = torch.nonzero(index == e, as_tuple=False).reshape(-1)
            if rows.numel() == 0:
                continue
            pred = expert(_rows_of(x, rows))
            if names is not None and set(pred) != names:
                raise ValueError(f"ExpertRouter: experts predict different tasks: {sorted(names)} vs {sorted(pred)}")
            names = set(pred)
            for task, logits in pred.items():
                if task != self.router_task:
                    parts.setdefault(task, []).append((rows, logits))
        for task, pieces in parts.items():
            first = pieces[0][1]
            full = first.new_zeros((index.shape[0], *first.shape[1:]))
            for rows, logits in pieces:
                if logits.shape[1:] != first.shape[1:]:
                    raise ValueError(
                        f"ExpertRouter: experts give '{task}' logits of shapes {tuple(first.shape[1:])} and "
                        f"{tuple(logits.shape[1:])} per sample"
                    )
                full = full.index_copy(0, rows, logits)
            out[task] = full
        return out

    def extra_repr(self) -> str:
        return f"router_task={self.router_task!r}, classes={self.classes}, experts={len(self.experts)}"


def _rows_of(x: torch.Tensor | Mapping[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor | dict:
    """The samples ``rows`` of a batch: a tensor, or each tensor of a dict of views (other values kept)."""
    if isinstance(x, Mapping):
        return {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    return x[rows]


def router_state_dict(
    router_checkpoint: str | os.PathLike,
    expert_checkpoints: Sequence[str | os.PathLike],
    key: str = "network",
) -> dict[str, torch.Tensor]:
    """The state dict of :meth:`ExpertRouter.replicate` from the router's and the experts' checkpoints.

    Files are read with ``weights_only=True`` (nothing in them is executed); experts in class order.

    Raises:
        FileNotFoundError / KeyError: naming the checkpoint that is missing or lacks ``key``.
    """
    merged: dict[str, torch.Tensor] = {}
    named = [("router", router_checkpoint), *((f"experts.{i}", p) for i, p in enumerate(expert_checkpoints))]
    for prefix, path in named:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found; train that model first (medmtl experts resumes)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get(key) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise KeyError(f"{path} holds no '{key}' state dict; give the last.pt or best.pt of a medmtl run")
        merged.update({f"{prefix}.{name}": value for name, value in state.items()})
    return merged
