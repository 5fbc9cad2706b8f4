"""RegMean (Jin et al., *Dataless Knowledge Fusion by Merging Weights of Language Models*, ICLR 2023).

Per linear layer, the merged weight is the one whose outputs come closest to every task model's outputs on that
task's own inputs — a least-squares problem with a closed form:

    W* = (Σ_i G̃_i)^-1 Σ_i G̃_i W_i,   G_i = X_iᵀ X_i,   G̃_i = α G_i + (1 − α) diag(G_i)

with X_i the layer's inputs on task i's examples (rows: tokens) and W_i in input × output orientation. The
shrinkage α of the off-diagonal terms is the paper's (α = 1: none). All task models share W0, so in ΔW space
(ΔW of shape output × input, as LoRA's B·A) ΔW* = ((Σ_i G̃_i)^-1 Σ_i G̃_i ΔW_iᵀ)ᵀ: the same formula on the
deltas. A weight w_i scales G_i. A tensor without statistics falls back to averaging. The Gram matrices come from
held-out training inputs of each run (fusekit.merging.statistics), labels unused.
"""

from __future__ import annotations

import torch

from fusekit.merging.methods.base import MergeMethod
from fusekit.merging.params import REGMEAN_ALPHA


class RegMean(MergeMethod):
    name = "regmean"
    parameters = (REGMEAN_ALPHA,)
    statistics = "gram"
    space = "delta-w"

    def __init__(self, regmean_alpha: float = REGMEAN_ALPHA.default):
        self.regmean_alpha = regmean_alpha
        self.stats: dict[str, list[torch.Tensor]] = {}  # layer → each task's G_i, set before merging

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        grams = self.stats.get(key)
        if grams is None:
            total = sum(weights)
            return sum(w / total * d for w, d in zip(weights, deltas))
        shrunk = [w * (self.regmean_alpha * g + (1 - self.regmean_alpha) * torch.diag(torch.diagonal(g)))
                  for w, g in zip(weights, grams)]
        total = sum(shrunk).double()
        right = sum(g.double() @ d.double().T for g, d in zip(shrunk, deltas))
        ridge = 1e-8 * total.diagonal().mean().clamp(min=1e-12) * torch.eye(len(total), dtype=total.dtype)
        return torch.linalg.solve(total + ridge, right).T.to(deltas[0].dtype)
