"""TIES-merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint mean, then scale by λ.

1. Trim: keep the `density` fraction of entries of each τ_i with the largest magnitude, zero the rest.
2. Elect: per entry, the sign of Σ_i w_i τ̂_i (the sign carrying the larger total mass).
3. Disjoint mean: average only the τ̂_i whose sign agrees with the elected one (zeros do not count).
Trimming is per tensor (as mergekit does), which lets the merge stream layer by layer.
"""

from __future__ import annotations

import math

import torch

from fusekit.merging.methods.base import MergeMethod
from fusekit.merging.params import DENSITY, LAMBDA


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ⌈density·n⌉ largest-magnitude entries: rounded up, so that any density > 0 keeps at least
    one entry of a tensor (peft's magnitude_prune keeps ⌊density·n⌋, one fewer where density·n is fractional)."""
    keep = math.ceil(density * delta.numel())
    if keep >= delta.numel():
        return delta
    if keep == 0:
        return torch.zeros_like(delta)
    threshold = delta.abs().flatten().kthvalue(delta.numel() - keep + 1).values
    return delta * (delta.abs() >= threshold)


class Ties(MergeMethod):
    name = "ties"
    parameters = (LAMBDA, DENSITY)

    def __init__(self, lam: float = LAMBDA.default, density: float = DENSITY.default):
        self.lam = lam
        self.density = density

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        trimmed = torch.stack([w * trim(d, self.density) for w, d in zip(weights, deltas)])
        elected = torch.sign(trimmed.sum(dim=0))
        agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
        total = (trimmed * agree).sum(dim=0)
        count = agree.sum(dim=0).clamp(min=1)
        return self.lam * total / count
