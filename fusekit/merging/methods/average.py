"""Weighted averaging: φ = φ0 + Σ_i w_i τ_i / Σ_i w_i (uniform weights: the mean of the finetuned adapters)."""

from __future__ import annotations

import torch

from fusekit.merging.methods.base import MergeMethod


class Average(MergeMethod):
    name = "average"
    linear = True

    def coefficients(self, weights: list[float]) -> list[float]:
        total = sum(weights)
        return [w / total for w in weights]

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        return sum(c * d for c, d in zip(self.coefficients(weights), deltas))
