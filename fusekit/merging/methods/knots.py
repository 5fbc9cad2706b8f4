"""KnOTS (Stoica et al., *Model merging with SVD to tie the KnOTS*, ICLR 2025), in ΔW space: align the tasks'
LoRA updates in one shared basis, then merge there.

Per weight matrix, the tasks' changes side by side are decomposed once, [ΔW_1 … ΔW_T] = U Σ [V_1ᵀ … V_Tᵀ] (thin
SVD, keeping the nonzero singular values: at most Σ r_i for LoRA products). Every task now writes its change as
ΔW_i = U Σ V_iᵀ in the same basis U Σ, and only the V_i differ: they are merged entry by entry with TIES (the
paper's best, `knots-ties`: trim to `density`, elect signs, disjoint mean, λ), and

    ΔW = U Σ V*ᵀ,   V* = TIES(V_1, …, V_T),   weights w_i scale ΔW_i first.

LoRA updates of different tasks rarely share singular directions; merged as raw matrices, their entries mix
unrelated subspaces, while in the shared basis entry i of every V_j measures the same direction.
"""

from __future__ import annotations

import torch

from fusekit.merging.methods.base import MergeMethod
from fusekit.merging.methods.ties import Ties
from fusekit.merging.params import DENSITY, LAMBDA

NONZERO = 1e-6  # a singular value below this share of the largest is zero


class KnotsTies(MergeMethod):
    name = "knots-ties"
    parameters = (LAMBDA, DENSITY)
    space = "delta-w"

    def __init__(self, lam: float = LAMBDA.default, density: float = DENSITY.default):
        self.lam, self.density = lam, density

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        ties = Ties(self.lam, self.density)
        if deltas[0].dim() != 2:
            return ties.merge(deltas, weights, key)
        columns = deltas[0].shape[1]
        u, s, vh = torch.linalg.svd(torch.cat([w * d.double() for w, d in zip(weights, deltas)], dim=1),
                                    full_matrices=False)
        keep = int((s > NONZERO * s[0]).sum()) if s[0] > 0 else 0
        if keep == 0:
            return torch.zeros_like(deltas[0])
        u, s, vh = u[:, :keep], s[:keep], vh[:keep]
        blocks = [vh[:, i * columns:(i + 1) * columns].T for i in range(len(deltas))]  # V_i: n × keep
        merged = ties.merge(blocks, [1.0] * len(blocks), key)
        return (u @ torch.diag(s) @ merged.T).to(deltas[0].dtype)
