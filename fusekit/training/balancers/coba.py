"""CoBa, the Convergence Balancer (Gong et al., EMNLP 2024).

Weights follow the slopes of each task's normalised validation loss ℓ̃_i(t) = ℓ_i(t)/ℓ_i(0), one validation
mini-batch per task after every `interval` optimizer steps (ℓ_i(0): the full held-out loss before training).
After `warmup` steps of uniform weights, with the last `window` points:

    α_i(t)  least-squares slope of ℓ̃_i;  α_max(t) slope of max_i ℓ̃_i
    RCS_i   = softmax_i(K · α_i / Σ_j |α_j|)                     relative convergence: slower tasks weigh more
    ACS_i   = softmax_i(−M · α_i(t) / Σ_s |α_i(s)|)              absolute convergence: diverging tasks weigh less
    DF(t)   = min(M · softmax_s(−τ · M · α_max(s) / Σ_s' |α_max(s')|)|_{s=t}, 1)   divergence factor
    ω       = softmax_i(K · (DF · RCS_i + (1 − DF) · ACS_i)),  floored: ω ← 0.9ω + 0.1/K if any ω_i < 1/(10K)
    loss    = Σ ω_i L_i / Σ ω_i

M is the number of slopes since the warm-up (s runs over them, t the latest). Choices, where the public code
differs: the slope histories are Python lists indexed by position (the code sliced them with a step count);
no point is dropped before a fit, so x and y stay aligned (the code dropped zero entries from y alone); DF is
clamped to at most 1, as the formula says. The x of a fit is the optimizer step of each point.
"""

from __future__ import annotations

import torch

from fusekit.config import JointConfig
from fusekit.training.balancers.base import Balancer


def slope(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of y (… × n) against x (n), along the last dimension."""
    xc = x - x.mean()
    return ((y - y.mean(dim=-1, keepdim=True)) * xc).sum(dim=-1) / xc.pow(2).sum().clamp(min=1e-12)


def coba_weights(alpha: torch.Tensor, alpha_history: torch.Tensor, alpha_max_history: torch.Tensor,
                 tau: float = 5.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ω from the current slopes α (K), each task's slope history (M × K) and the max curve's (M)."""
    k, m = alpha.numel(), alpha_history.shape[0]
    rcs = torch.softmax(k * alpha / alpha.abs().sum().clamp(min=1e-12), dim=0)
    acs = torch.softmax(-m * alpha / alpha_history.abs().sum(dim=0).clamp(min=1e-12), dim=0)
    scores = torch.softmax(-tau * m * alpha_max_history / alpha_max_history.abs().sum().clamp(min=1e-12), dim=0)
    df = torch.clamp(m * scores[-1], max=1.0)
    weights = torch.softmax(k * (df * rcs + (1 - df) * acs), dim=0)
    if weights.min() < 1.0 / (10 * k):
        weights = 0.9 * weights + 0.1 / k
    return weights, {"rcs": rcs, "acs": acs, "df": df}


class CoBa(Balancer):
    name = "coba"

    def __init__(self, num_tasks: int, interval: int = JointConfig.coba_interval, warmup: int = JointConfig.coba_warmup,
                 window: int = JointConfig.coba_window, tau: float = 5.0):
        super().__init__(num_tasks)
        self.validation_interval, self.warmup, self.window, self.tau = interval, warmup, window, tau
        self.initial: torch.Tensor | None = None
        self.steps: list[int] = []
        self.points: list[torch.Tensor] = []  # ℓ̃(t), one K-vector per observation
        self.alpha_history: list[torch.Tensor] = []
        self.alpha_max_history: list[torch.Tensor] = []
        self.weights = torch.ones(num_tasks)

    def start(self, validation_losses: torch.Tensor) -> None:
        self.initial = validation_losses.detach().cpu().clamp(min=1e-8)

    def observe(self, step: int, validation_losses: torch.Tensor) -> None:
        if self.initial is None:
            self.start(validation_losses)
        self.steps.append(step)
        self.points.append(validation_losses.detach().cpu() / self.initial)
        if step <= self.warmup or len(self.points) < 2:
            return
        x = torch.tensor(self.steps[-self.window:], dtype=torch.float32)
        y = torch.stack(self.points[-self.window:]).T  # K × n
        alpha = slope(x, y)
        self.alpha_history.append(alpha)
        self.alpha_max_history.append(slope(x, y.max(dim=0).values))
        self.weights, _ = coba_weights(alpha, torch.stack(self.alpha_history), torch.stack(self.alpha_max_history),
                                       self.tau)
        self.weights = self.weights * self.num_tasks  # Σ ω = K, so that uniform is ω = 1

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        w = self.weights.to(losses.device)
        return self.num_tasks * (w * losses).sum() / w.sum()
