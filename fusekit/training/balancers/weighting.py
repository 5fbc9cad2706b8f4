"""Loss-weighting balancers: each is the objective it builds from the task losses L_1..L_K."""

from __future__ import annotations

import torch
from torch import nn

from fusekit.config import JointConfig
from fusekit.training.balancers.base import Balancer, RunFacts


class Uniform(Balancer):
    """Σ L_i: every task weighs 1."""

    name = "uniform"


class InitNorm(Balancer):
    """Σ L_i / L_i(init): losses relative to their value at the first step (scale-free across tasks)."""

    name = "init-norm"

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.initial: torch.Tensor | None = None

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        if self.initial is None:
            self.initial = losses.detach().clamp(min=1e-8)
        return (losses / self.initial).sum()


class PriorNorm(Balancer):
    """Σ L_i / L_i(prior): L_i(prior) is the loss of predicting the label prior — its entropy for
    classification (cross-entropy), the label variance for regression (mean squared error)."""

    name = "prior-norm"

    def __init__(self, num_tasks: int, priors: list[float]):
        super().__init__(num_tasks)
        self.priors = torch.tensor(priors).clamp(min=1e-8)

    @classmethod
    def for_run(cls, num_tasks: int, cfg: JointConfig, run: RunFacts) -> PriorNorm:
        return cls(num_tasks, run.priors)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses / self.priors.to(losses.device)).sum()


class RealTime(Balancer):
    """Σ L_i / stop_grad(L_i): every task's loss normalised by its current value; the gradient equals that
    of Σ log L_i (the geometric mean's)."""

    name = "realtime"

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses / losses.detach().clamp(min=1e-8)).sum()


class PowerMean(Balancer):
    """(1/K Σ L_i^γ)^{1/γ}; γ = 0 is the geometric mean, γ = 1 the mean, γ → ∞ the maximum."""

    name = "power-mean"

    def __init__(self, num_tasks: int, gamma: float = JointConfig.gamma):
        super().__init__(num_tasks)
        self.gamma = gamma

    @classmethod
    def for_run(cls, num_tasks: int, cfg: JointConfig, run: RunFacts) -> PowerMean:
        return cls(num_tasks, cfg.gamma)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        losses = losses.clamp(min=1e-8)
        if self.gamma == 0:
            return losses.log().mean().exp()
        top = losses.max().detach()  # factored out so that large γ does not overflow
        return top * (losses / top).pow(self.gamma).mean().pow(1.0 / self.gamma)


class Uncertainty(Balancer):
    """Kendall et al. (CVPR 2018): Σ L_i·exp(−s_i) + s_i with learnable s_i = log σ_i²; at the optimum
    σ_i² = L_i."""

    name = "uncertainty"

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        s = self.log_vars.to(losses.device)
        return (losses * torch.exp(-s) + s).sum()
