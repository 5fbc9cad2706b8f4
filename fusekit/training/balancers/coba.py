"""CoBa, the Convergence Balancer (Gong et al., EMNLP 2024).

Weights follow the slopes of each task's normalised validation loss ℓ̃_i(t) = ℓ_i(t)/ℓ_i(0), measured after
every `interval` optimizer steps on the same fixed held-out sample as ℓ_i(0). The paper's code scores a fresh
validation mini-batch each time; on small models its sampling noise dwarfs the slopes (STS-B's MSE moved 1 → 12
from one step to the next) and the weights become noise, so fusekit scores the model, not the sample.
After `warmup` steps of uniform weights, with the last `window` points:

    α_i(t)  least-squares slope of ℓ̃_i;  α_max(t) slope of max_i ℓ̃_i
    RCS_i   = softmax_i(K · α_i / Σ_j |α_j|)                     relative convergence: slower tasks weigh more
    ACS_i   = softmax_i(−N · α_i(t) / Σ_s |α_i(s)|)              absolute convergence: diverging tasks weigh less
    DF(t)   = min(M · softmax_s(−τ · M · α_max(s) / Σ_s' |α_max(s')|)|_{s=t}, 1)   divergence factor
    ω       = DF · RCS_i + (1 − DF) · ACS_i                      the paper's weights (Σ ω = 1)
    loss    = Σ ω_i L_i / Σ ω_i

`slope_floor` bounds the scores where the paper's formula amplifies noise: once every slope is near zero (the
losses have flattened), both normalisers, RCS's Σ_j|α_j| and ACS's Σ_s|α_i(s)| (a plateau's window holds only
flat slopes), are tiny, and small differences between slopes become large differences in the weights (0.3–3.6 on
the 5-task study's CoBa run). With a floor f > 0 each normaliser is at least f times its largest value of any fit
so far, so that slopes a hundredth of the run's real convergence count as a hundredth, not as all of it, and the
weights return toward uniform on a plateau. 0 (the default) is the paper's formula.

`weighting: mftcoder` applies what MFTCoder's public code adds on top, a sharpening and a floor:
ω ← softmax_i(K · ω_i), then ω ← 0.9ω + 0.1/K if any ω_i < 1/(10K) (fusekit's default before it followed the
paper; 0.015–0.079 away from the paper's ω on a three-task history).

For ACS, s runs over the last N = `window` slopes (the paper's history; `acs_history: all` uses every slope
since the warm-up, fusekit's earlier variant, and N is then their number); for DF, over the M slopes of the max
curve since the warm-up. t is the latest. The loss is the paper's Σ ω_i L_i with Σ ω = 1; `loss_scale:
uniform` multiplies it by K, the scale of uniform weighting's Σ L_i, so that one learning rate means the same
step for both (fusekit's earlier variant; the README's CoBa runs used both earlier variants). The warm-up:
uniform weights while the optimizer step is ≤ `warmup`; points are recorded from the first validation, so the
first fit after the warm-up has a full window only when warmup ≥ window × interval (at the defaults, a 10%
warm-up and a window of a fifth of 100 validations, it has 11 of its 20 points). Other choices, where the public
code differs: the slope histories are Python lists indexed by position (the code sliced them with a step count);
no point is dropped before a fit, so x and y stay aligned (the code dropped zero entries from y alone); DF is
clamped to at most 1, as the formula says. The x of a fit is the optimizer step of each point.
"""

from __future__ import annotations

import math

import torch

from fusekit.config import JointConfig
from fusekit.progress import console
from fusekit.training.balancers.base import Balancer, RunFacts

OBSERVATIONS = 100  # validations per run when the interval is not given: the cost is ~100 × K × sample forwards
WARMUP_SHARE = 0.1  # of the run's steps, uniform weights while the first slopes would rest on too few points
WINDOW_SHARE = 0.2  # of the observations, the points of each slope fit


def slope(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of y (… × n) against x (n), along the last dimension."""
    xc = x - x.mean()
    return ((y - y.mean(dim=-1, keepdim=True)) * xc).sum(dim=-1) / xc.pow(2).sum().clamp(min=1e-12)


WEIGHTINGS = ("paper", "mftcoder")


def coba_weights(alpha: torch.Tensor, alpha_history: torch.Tensor, alpha_max_history: torch.Tensor,
                 tau: float = 5.0, weighting: str = "paper", rcs_floor: float = 0.0,
                 acs_floor: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ω (Σ ω = 1) from the current slopes α (K), the task slopes ACS looks back over (N × K) and the max curve's
    slopes since the warm-up (M). RCS's normaliser Σ_j|α_j| is floored at `rcs_floor`, ACS's Σ_s|α_i(s)| at
    `acs_floor` (K; None and 0: the paper)."""
    k, n, m = alpha.numel(), alpha_history.shape[0], alpha_max_history.shape[0]
    rcs = torch.softmax(k * alpha / alpha.abs().sum().clamp(min=max(rcs_floor, 1e-12)), dim=0)
    acs_scale = alpha_history.abs().sum(dim=0)
    if acs_floor is not None:
        acs_scale = torch.maximum(acs_scale, acs_floor)
    acs = torch.softmax(-n * alpha / acs_scale.clamp(min=1e-12), dim=0)
    scores = torch.softmax(-tau * m * alpha_max_history / alpha_max_history.abs().sum().clamp(min=1e-12), dim=0)
    df = torch.clamp(m * scores[-1], max=1.0)
    weights = df * rcs + (1 - df) * acs
    if weighting == "mftcoder":
        weights = torch.softmax(k * weights, dim=0)
        if weights.min() < 1.0 / (10 * k):
            weights = 0.9 * weights + 0.1 / k
    return weights, {"rcs": rcs, "acs": acs, "df": df}


def coba_schedule(total_steps: int, interval: int | None = None, warmup: int | None = None,
                  window: int | None = None) -> tuple[int, int, int]:
    """(interval, warm-up steps, window points), each given one kept, the others scaled to the run's length.

    The paper's 200-point window after 100 warm-up steps fits runs of thousands of steps; a 300-step run needs
    the same proportions, not the same numbers.
    """
    interval = interval or max(1, round(total_steps / OBSERVATIONS))
    warmup = round(WARMUP_SHARE * total_steps) if warmup is None else warmup
    window = window or max(5, round(WINDOW_SHARE * total_steps / interval))
    return interval, warmup, window


class CoBa(Balancer):
    name = "coba"

    def __init__(self, num_tasks: int, interval: int = 1, warmup: int = 100, window: int = 200, tau: float = 5.0,
                 acs_history: str = "window", loss_scale: str = "paper", weighting: str = "paper",
                 slope_floor: float = 0.0):
        super().__init__(num_tasks)
        self.validation_interval, self.warmup, self.window, self.tau = interval, warmup, window, tau
        self.acs_history, self.loss_scale, self.weighting = acs_history, loss_scale, weighting
        self.slope_floor = slope_floor
        self.largest_rcs_scale = torch.zeros(())  # the largest Σ_j |α_j| of any fit so far
        self.largest_acs_scale = torch.zeros(num_tasks)  # per task, the largest Σ_s |α_i(s)| of any fit so far
        self.initial: torch.Tensor | None = None
        self.steps: list[int] = []
        self.points: list[torch.Tensor] = []  # ℓ̃(t), one K-vector per observation
        self.alpha_history: list[torch.Tensor] = []
        self.alpha_max_history: list[torch.Tensor] = []
        self.weights = torch.ones(num_tasks)

    @classmethod
    def for_run(cls, num_tasks: int, cfg: JointConfig, run: RunFacts) -> CoBa:
        """CoBa with `coba_schedule`'s settings; warns when the run is too short for its slopes to say much, and
        when scoring the held-out sample would cost more than the training itself."""
        total_steps = run.total_steps
        interval, warmup, window = coba_schedule(total_steps, cfg.coba_interval, cfg.coba_warmup, cfg.coba_window)
        # a forward without gradients costs about a third of a training step's forward and backward per example
        cost = cfg.validation_examples / (3 * cfg.batch_size * interval)
        if cost > 1:
            console.print(f"warning: CoBa scores {cfg.validation_examples} held-out examples per task every "
                          f"{interval} step{'s' if interval > 1 else ''}: about {cost:.1f}× the compute of the "
                          f"training itself (coba_interval {math.ceil(2 * cost * interval)} keeps it under half)")
        fits = max(0, (total_steps - warmup) // interval)
        if fits < 2 * window:
            console.print(f"warning: CoBa fits {fits} slopes of {window} points after a {warmup}-step warm-up "
                          f"in a {total_steps}-step run: too short for its weights to follow convergence "
                          "(they stay near uniform or follow noise)")
        return cls(num_tasks, interval, warmup, window, acs_history=cfg.coba_acs_history,
                   loss_scale=cfg.coba_loss_scale, weighting=cfg.coba_weighting, slope_floor=cfg.coba_slope_floor)

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
        history = self.alpha_history[-self.window:] if self.acs_history == "window" else self.alpha_history
        history = torch.stack(history)
        self.largest_rcs_scale = torch.maximum(self.largest_rcs_scale, alpha.abs().sum())
        self.largest_acs_scale = torch.maximum(self.largest_acs_scale, history.abs().sum(dim=0))
        self.weights, _ = coba_weights(alpha, history, torch.stack(self.alpha_max_history), self.tau, self.weighting,
                                       self.slope_floor * float(self.largest_rcs_scale),
                                       self.slope_floor * self.largest_acs_scale)
        self.weights = self.weights * self.num_tasks  # Σ ω = K, so that uniform is ω = 1

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """Σ ω_i L_i with Σ ω = 1 (the paper); `loss_scale: uniform` multiplies it by K, the scale of uniform
        weighting's Σ L_i, so that one learning rate means the same step under both."""
        w = self.weights.to(losses.device)
        paper = (w * losses).sum() / w.sum()
        return paper * self.num_tasks if self.loss_scale == "uniform" else paper
