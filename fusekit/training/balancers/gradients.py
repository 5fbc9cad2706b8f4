"""Gradient balancers: they combine the per-task gradients g_i of the shared adapter weights.

They cost what a loss-weighting balancer costs (the trainer runs one backward per task either way), plus the sum of
the g_i over data-parallel processes before they are combined; each task's head gradient is scaled by its ω_i.
"""

from __future__ import annotations

import torch

from fusekit.config import JointConfig
from fusekit.training.balancers.base import Balancer, RunFacts


class GradientBalancer(Balancer):
    combines_shared_gradients = True

    def combine_gradients(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(combined gradient, task weights ω for the heads' objective Σ ω_i L_i and for the log)."""
        raise NotImplementedError

    def balance(self, losses: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.combine_gradients(self.across_processes(grads), losses.detach())


class GradNormalize(GradientBalancer):
    """Σ_i g_i / ‖g_i‖: every task contributes a unit-length gradient to the shared weights."""

    name = "grad-normalize"

    def combine_gradients(self, grads, losses):
        norms = grads.norm(dim=1).clamp(min=1e-12)
        return (grads / norms[:, None]).sum(dim=0), 1.0 / norms


def pcgrad(grads: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Yu et al. (NeurIPS 2020): for each task i, in `orders[i]`, remove from g_i its component along any g_j it
    conflicts with (g_i·g_j < 0): g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j; return the sum of the projected g_i."""
    projected = grads.clone()
    for i, order in enumerate(orders):
        for j in order:
            if j == i:
                continue
            dot = projected[i] @ grads[j]
            if dot < 0:
                projected[i] -= dot / grads[j].norm().pow(2).clamp(min=1e-12) * grads[j]
    return projected.sum(dim=0)


class PCGrad(GradientBalancer):
    """Projecting conflicting gradients, each task's others taken in a fresh random order every step."""

    name = "pcgrad"

    def __init__(self, num_tasks: int, seed: int = 0):
        super().__init__(num_tasks)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def for_run(cls, num_tasks: int, cfg: JointConfig, run: RunFacts) -> PCGrad:
        return cls(num_tasks, cfg.seed)

    def combine_gradients(self, grads, losses):
        orders = [torch.randperm(self.num_tasks, generator=self.generator).tolist() for _ in range(self.num_tasks)]
        return pcgrad(grads, orders), torch.ones(self.num_tasks)


class GradNorm(GradientBalancer):
    """Chen et al. (ICML 2018): learn weights w_i so that the gradient norms G_i = w_i·‖g_i‖ match
    Ḡ · r_i^α, r_i the task's relative inverse training rate (L_i/L_i(0) over its mean).

    The norms are taken on all shared adapter weights (the paper uses the last shared layer). The weights
    follow their own SGD step on Σ |G_i − target_i| (target held constant) and are renormalised to Σ w = K.
    """

    name = "gradnorm"

    def __init__(self, num_tasks: int, alpha: float = JointConfig.gradnorm_alpha, lr: float = 0.025):
        super().__init__(num_tasks)
        self.alpha, self.lr = alpha, lr
        self.w = torch.ones(num_tasks)
        self.initial: torch.Tensor | None = None

    @classmethod
    def for_run(cls, num_tasks: int, cfg: JointConfig, run: RunFacts) -> GradNorm:
        return cls(num_tasks, cfg.gradnorm_alpha)

    def combine_gradients(self, grads, losses):
        losses = losses.cpu()
        if self.initial is None:
            self.initial = losses.clamp(min=1e-8)
        norms = grads.norm(dim=1).cpu()
        ratio = losses / self.initial
        rate = ratio / ratio.mean()
        g = self.w * norms
        target = g.mean() * rate.pow(self.alpha)
        weights = self.w.clone()
        self.w = (self.w - self.lr * torch.sign(g - target) * norms).clamp(min=1e-3)
        self.w = self.w * self.num_tasks / self.w.sum()
        return (weights.to(grads.device)[:, None] * grads).sum(dim=0), weights
