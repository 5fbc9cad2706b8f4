"""FAMO, Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023), Algorithm 1 and the authors' code.

Task logits ξ ∈ R^K (initially 0), z = softmax(ξ). With the task losses L_i (minus their lower bound, 0 here,
plus ε = 1e-8), the model follows the gradient of

    Σ_i z_i log L_i / c,    c = Σ_i z_i / L_i  (a constant: no gradient flows through it)

so task i weighs ω_i = z_i / (c · L_i) = (z_i / L_i) / Σ_j (z_j / L_j) — the weights `backward` returns (they sum
to 1): ∇ Σ ω_i L_i is FAMO's update direction, the gradient of the z-weighted log-losses, scaled by 1/c.

The logits learn from how much each task actually improved: after the optimizer step FAMO needs the losses of
the SAME batches at the new parameters, L_i(t+1), and with δ_i = log L_i(t) − log L_i(t+1) it sets
∇ξ = J_softmax(ξ)^T δ and takes one Adam step on ξ (learning rate `lr`, weight decay `gamma`: the paper's γ
regulariser). A task whose loss fell faster than the z-weighted average (δ_i above z·δ) gets a positive gradient,
so its logit, and its weight, go down: the improvement rates are balanced. These post-step losses are why the
trainer calls `after_step` (`needs_loss_after_step`), at the cost of one extra forward per task per step, without
gradients — no extra backward, unlike the gradient balancers' K backwards. The recomputation runs in training
mode, as in the authors' code (dropout draws fresh masks, so δ carries that noise too).
"""

from __future__ import annotations

import torch
from torch import nn

from fusekit.config import JointConfig
from fusekit.training.balancers.base import Balancer, RunFacts

EPSILON = 1e-8


def logit_gradient(logits: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """J_softmax(ξ)^T δ = z ⊙ (δ − z·δ): the gradient FAMO's Adam step on ξ descends."""
    logits = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(torch.softmax(logits, dim=0), logits, grad_outputs=delta)
    return grad


class FAMO(Balancer):
    name = "famo"
    needs_loss_after_step = True

    def __init__(self, num_tasks: int, lr: float = JointConfig.famo_lr, gamma: float = JointConfig.famo_gamma):
        super().__init__(num_tasks)
        self.lr, self.gamma = lr, gamma
        self.logits = nn.Parameter(torch.zeros(num_tasks))  # ξ; its own optimizer, not the model's
        self.optimizer = torch.optim.Adam([self.logits], lr=lr, weight_decay=gamma)
        self.previous: torch.Tensor | None = None  # L(t), kept for after_step

    @classmethod
    def for_run(cls, num_tasks: int, cfg: JointConfig, run: RunFacts) -> FAMO:
        return cls(num_tasks, cfg.famo_lr, cfg.famo_gamma)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        shifted = losses + EPSILON
        self.previous = shifted.detach().float().cpu()
        z = torch.softmax(self.logits.detach(), dim=0).to(losses.device)
        c = (z / shifted.detach()).sum()
        return (z * shifted.log()).sum() / c

    def after_step(self, new_losses: torch.Tensor) -> None:
        if self.previous is None:
            raise RuntimeError("FAMO.after_step called before the step's losses were combined")
        delta = self.previous.log() - (new_losses.detach().cpu().float() + EPSILON).log()
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = logit_gradient(self.logits, delta)
        self.optimizer.step()
        self.logits.grad = None
        self.previous = None
