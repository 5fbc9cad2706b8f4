"""Task arithmetic (Ilharco et al., ICLR 2023): φ = φ0 + λ Σ_i w_i τ_i (w_i = 1 unless given)."""

from __future__ import annotations

import torch

from fusekit.merging.methods.base import MergeMethod
from fusekit.merging.params import LAMBDA


class TaskArithmetic(MergeMethod):
    name = "task-arithmetic"
    linear = True
    parameters = (LAMBDA,)

    def __init__(self, lam: float = LAMBDA.default):
        self.lam = lam

    def coefficients(self, weights: list[float]) -> list[float]:
        return [self.lam * w for w in weights]

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        return sum(c * d for c, d in zip(self.coefficients(weights), deltas))
