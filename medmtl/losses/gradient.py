"""Gradient-based weighting: GradNorm and PCGrad.

These strategies need the gradients of each task's loss on the *shared* parameters, which a loss
function alone cannot see. They keep the :class:`~medmtl.losses.weighting.Weighting` interface
and declare what else they need through capability flags, so the trainer's iteration never
branches on strategy names:

- ``requires_shared_grads = True`` (GradNorm): after the forward pass and before
  ``loss.backward()``, call ``weighting.gradnorm_step(losses, shared_params)``. It only reads
  gradients (``torch.autograd.grad(..., retain_graph=True)``), updates the task weights used from
  the next iteration on, and leaves ``.grad`` untouched. With MONAI's stock ``SupervisedTrainer``
  this fits a handler on ``IterationEvents.LOSS_COMPLETED``.
- ``manipulates_gradients = True`` (PCGrad): call ``weighting.backward(losses, shared_params)``
  *instead of* ``loss.backward()``; it sets ``.grad`` on every parameter (projected on the shared
  ones, plain on the task heads). This needs a custom ``iteration_update``.

``MultiTaskLoss.backward`` wraps both, so an iteration can call it for every strategy. Both
strategies average what they compute across DDP ranks, so all ranks keep identical weights and
gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import torch

from medmtl.losses.weighting import (
    FixedWeighting,
    Weighting,
    _all_reduce_mean,
    _flat_params,
    register_weighting,
)

__all__ = ["GradNormWeighting", "PCGradWeighting", "project_conflicting"]


def _task_grads(losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> list[list[torch.Tensor | None]]:
    """Gradient of each loss on ``params`` (``None`` where a parameter is not used), graph kept."""
    out = []
    for loss in losses:
        if not loss.requires_grad:
            out.append([None] * len(params))
            continue
        out.append(list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)))
    return out


@register_weighting("gradnorm")
class GradNormWeighting(Weighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

    Learnable weights ``w_t`` scale the task losses, ``L = sum_t w_t L_t``. Each iteration
    :meth:`gradnorm_step` measures ``G_t = ||grad_W (w_t L_t)||`` on the shared parameters ``W``,
    the relative inverse training rate ``r_t = (L_t / L_t(0)) / mean_j (L_j / L_j(0))``, and moves
    the weights down the gradient of ``L_grad = sum_t |G_t - mean(G) * r_t ** alpha|`` (the target
    held constant), then renormalises them to sum to the number of tasks. ``L_t(0)`` is the first
    loss seen for each task.

    The update is an Adam step on the weights (moments in buffers), so its size does not depend on
    the scale of the gradient norms, which varies by orders of magnitude between networks. The
    weights, initial losses and moments are buffers: ``state_dict`` round-trips exactly and a
    resumed run makes the same next update. The weights are not ``nn.Parameter``s, so the network
    optimizer never touches them and the main loss gives them no gradient.

    Args:
        task_names: all task names.
        alpha: asymmetry (paper: 1.5; 0 equalises gradient norms).
        lr: step size of the weight update.
        betas: Adam moment coefficients.
        eps: Adam epsilon.
        min_weight: floor applied before renormalising, so no task is switched off for good.

    Raises:
        ValueError: for a negative ``alpha``, or non-positive ``lr`` / ``min_weight``.

    Example::

        loss = MultiTaskLoss(tasks, weighting="gradnorm", weighting_kwargs={"alpha": 1.5})
        total = loss(preds, targets)
        loss.weighting.gradnorm_step(loss.last_losses, network.shared_parameters())
        total.backward()
    """

    requires_shared_grads = True

    def __init__(
        self,
        task_names: Sequence[str],
        alpha: float = 1.5,
        lr: float = 0.025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        min_weight: float = 1e-3,
    ) -> None:
        super().__init__(task_names)
        if alpha < 0 or not lr > 0 or not min_weight > 0:
            raise ValueError(
                f"GradNormWeighting: need alpha >= 0, lr > 0, min_weight > 0; got alpha={alpha}, lr={lr}, "
                f"min_weight={min_weight}"
            )
        self.alpha, self.lr, self.eps, self.min_weight = float(alpha), float(lr), float(eps), float(min_weight)
        self.betas = (float(betas[0]), float(betas[1]))
        t = len(self.task_names)
        self.register_buffer("weights", torch.ones(t))
        self.register_buffer("initial_losses", torch.zeros(t))
        self.register_buffer("has_initial", torch.zeros(t, dtype=torch.bool))
        self.register_buffer("exp_avg", torch.zeros(t))
        self.register_buffer("exp_avg_sq", torch.zeros(t))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.last_grad_norms: dict[str, float] = {}

    def weight_vector(self) -> torch.Tensor:
        return self.weights

    def gradnorm_step(
        self, losses: Mapping[str, torch.Tensor], shared_params: Iterable[torch.Tensor]
    ) -> dict[str, float]:
        """Update the task weights from the gradients of the current losses on ``shared_params``.

        Call after the forward pass and before ``loss.backward()`` (the graph is kept; ``.grad``
        is not modified). Under DDP every rank must call it; the weight gradient is averaged.

        Args:
            losses: ``{task: scalar loss}`` still attached to the graph (``MultiTaskLoss.last_losses``).
            shared_params: the shared parameters ``W`` (the paper uses the last shared layer; the
                whole shared encoder works at a higher cost).

        Returns:
            ``{task: G_t}``, the weighted gradient norms before the update (also in ``last_grad_norms``).

        Raises:
            ValueError: for unknown tasks or when no shared parameter requires grad.
        """
        names = self._check_losses(losses)
        params = _flat_params(shared_params, "GradNormWeighting.gradnorm_step")
        if not names and idist.get_world_size() == 1:
            return {}  # nothing labelled; under DDP the (zero) gradient is still averaged below
        dev = self.weights.device
        grad = torch.zeros_like(self.weights)
        self.last_grad_norms = {}
        if names:
            norms = []
            for grads in _task_grads([losses[n] for n in names], params):
                sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
                norms.append(torch.stack(sq).sum().sqrt().to(dev) if sq else torch.zeros((), device=dev))
            with torch.no_grad():
                idx = torch.tensor([self.index(n) for n in names], device=dev, dtype=torch.long)
                values = torch.stack([losses[n].detach().float().reshape(()).to(dev) for n in names])
                self.initial_losses[idx] = torch.where(self.has_initial[idx], self.initial_losses[idx], values)
                self.has_initial[idx] = True
                ratio = values / self.initial_losses[idx].clamp_min(1e-12)
                r = ratio / ratio.mean().clamp_min(1e-12)
                g = torch.stack(norms)
                big_g = self.weights[idx] * g
                target = big_g.mean() * r.pow(self.alpha)
                grad[idx] = torch.sign(big_g - target) * g
            self.last_grad_norms = dict(zip(names, big_g.cpu().tolist(), strict=True))
        with torch.no_grad():
            _all_reduce_mean(grad)
            self._adam(grad)
        return dict(self.last_grad_norms)

    def _adam(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.step += 1
        t = int(self.step)
        self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.exp_avg / (1 - b1**t)
        v_hat = self.exp_avg_sq / (1 - b2**t)
        w = (self.weights - self.lr * m_hat / (v_hat.sqrt() + self.eps)).clamp_min(self.min_weight)
        self.weights.copy_(w * (len(self.task_names) / w.sum()))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, lr={self.lr}"


def project_conflicting(
    grads: torch.Tensor, generator: torch.Generator | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """PCGrad projection of per-task gradients (Yu et al. 2020, Algorithm 1).

    For each task i, and each other task j in a random order: if ``g_i . g_j < 0``, replace
    ``g_i`` by ``g_i - (g_i . g_j) / ||g_j||^2 g_j``, where ``g_i`` is the partly projected
    gradient and ``g_j`` the original one.

    Args:
        grads: ``(T, P)`` flattened gradient of each task on the shared parameters.
        generator: CPU generator for the visiting order (``None``: the global RNG).
        eps: guard against a zero ``||g_j||``.

    Returns:
        ``(T, P)`` projected gradients (the shared update is their sum).

    Raises:
        ValueError: when ``grads`` is not 2-D.

    Example::

        g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
        project_conflicting(g)  # tensor([[0.5, 0.5], [0.0, 1.0]])
    """
    if grads.ndim != 2:
        raise ValueError(f"project_conflicting: grads must be (tasks, params), got shape {tuple(grads.shape)}")
    t = grads.shape[0]
    out = grads.clone()
    sq_norms = grads.pow(2).sum(dim=1).clamp_min(eps)
    for i in range(t):
        for j in torch.randperm(t, generator=generator).tolist():
            if j == i:
                continue
            dot = torch.dot(out[i], grads[j])
            out[i] = out[i] - dot.clamp(max=0) / sq_norms[j] * grads[j]
    return out


@register_weighting("pcgrad")
class PCGradWeighting(FixedWeighting):
    """PCGrad, projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020).

    The loss value is the fixed weighted sum (as :class:`FixedWeighting`). :meth:`backward`
    replaces ``loss.backward()``: the task heads get the usual gradient of the sum, the shared
    parameters get ``sum_t PC(g_t)`` from :func:`project_conflicting`. The visiting order is drawn
    from ``seed + step`` (``step`` is a buffer), so a resumed run uses the same orders.

    Args:
        task_names: all task names.
        weights: fixed task weights applied before projection (default 1).
        seed: seed of the random visiting order.

    Example::

        total = loss(preds, targets)              # MultiTaskLoss with weighting="pcgrad"
        loss.backward(total, network.shared_parameters())   # instead of total.backward()
        optimizer.step()
    """

    manipulates_gradients = True

    def __init__(
        self, task_names: Sequence[str], weights: float | Mapping[str, float] | None = None, seed: int = 0
    ) -> None:
        super().__init__(task_names, weights)
        self.seed = int(seed)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_params: Iterable[torch.Tensor],
        extra: torch.Tensor | None = None,
    ) -> None:
        """Accumulate projected gradients into ``.grad`` (call instead of ``loss.backward()``).

        Gradients accumulate like ``backward()`` (zero them as usual). Under DDP, run it on every
        rank: the backward of the sum is reduced by DDP, and the projection's correction is
        averaged here, so the result is the mean of the ranks' projected gradients.

        Args:
            losses: ``{task: scalar loss}`` attached to the graph (``MultiTaskLoss.last_losses``).
                Scale them first for AMP / gradient accumulation (``scaler.scale(l)``, ``l / steps``).
            shared_params: parameters shared by the tasks (e.g. ``network.shared_parameters()``).
            extra: an additional scalar to backpropagate unprojected (e.g. the graph-connected
                zero of tasks absent from the batch, so DDP sees every head used).

        Raises:
            ValueError: for unknown tasks or when no shared parameter requires grad.
        """
        names = self._check_losses(losses)
        params = _flat_params(shared_params, "PCGradWeighting.backward")
        w = self.weights.detach().clone()
        weighted = [w[self.index(n)].to(losses[n].device) * losses[n].reshape(()) for n in names]
        correction = None
        if len(weighted) < 2 and idist.get_world_size() > 1:  # every rank joins the all-reduce below
            correction = torch.zeros(sum(p.numel() for p in params), device=params[0].device)
        elif len(weighted) > 1:
            per_task = _task_grads(weighted, params)
            flat = torch.stack(
                [
                    torch.cat(
                        [
                            (g if g is not None else torch.zeros_like(p)).reshape(-1)
                            for g, p in zip(gs, params, strict=True)
                        ]
                    )
                    for gs in per_task
                ]
            )
            gen = torch.Generator().manual_seed(self.seed + int(self.step))
            correction = project_conflicting(flat, generator=gen).sum(0) - flat.sum(0)
        total: Any = sum(weighted) if weighted else None
        if extra is not None:
            total = extra if total is None else total + extra
        if total is not None and isinstance(total, torch.Tensor) and total.requires_grad:
            total.backward()
        if correction is not None:
            _all_reduce_mean(correction)
            offset = 0
            for p in params:
                n = p.numel()
                piece = correction[offset : offset + n].view_as(p).to(p.dtype)
                offset += n
                if p.grad is None:
                    p.grad = piece.clone()
                else:
                    p.grad.add_(piece)
        self.step += 1

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"
