"""The loss-balancer interface for joint multi-task training.

Each step the trainer computes one loss per task, L_1..L_K, and calls `backward(losses, shared)`, which leaves
gradients on the model and returns the task weights ω actually applied (logged per step). Loss-weighting
balancers only define `combine`; gradient balancers (PCGrad, gradient normalization, GradNorm) override
`backward` to act on the per-task gradients of the shared adapter weights.
"""

from __future__ import annotations

import torch
from torch import nn


class Balancer:
    name = ""

    def __init__(self, num_tasks: int):
        self.num_tasks = num_tasks

    def parameters(self) -> list[nn.Parameter]:
        """Learnable balancer weights, optimised with the model (uncertainty weighting, GradNorm)."""
        return []

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """The scalar objective built from the task losses (default: their sum)."""
        return losses.sum()

    def backward(self, losses: torch.Tensor, shared: list[nn.Parameter]) -> torch.Tensor:
        """Backpropagate; ω_i = ∂objective/∂L_i (for a weighted sum, the weights themselves)."""
        objective = self.combine(losses)
        (weights,) = torch.autograd.grad(objective, losses, retain_graph=True)
        objective.backward()
        return weights.detach()

    # Hooks for balancers that watch validation losses (CoBa) — the trainer asks before calling.
    validation_interval: int = 0

    def observe(self, step: int, validation_losses: torch.Tensor) -> None:
        """Validation losses of each task after optimizer step `step`."""

    def start(self, validation_losses: torch.Tensor) -> None:
        """Full validation losses before training."""
