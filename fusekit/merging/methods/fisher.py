"""Fisher merging (Matena & Raffel, *Merging Models with Fisher-Weighted Averaging*, NeurIPS 2022).

Each parameter is averaged with weights given by how much each task's likelihood depends on it, the diagonal of
the task model's empirical Fisher F_i:

    φ* = φ0 + Σ_i w_i F_i τ_i / Σ_i w_i F_i,   F_i ← max(F_i, ε)

The floor ε keeps a parameter no task's data touches at the plain average instead of an undefined 0/0. The paper
floors at an absolute 1e-6; LoRA factors' Fishers are often smaller than that everywhere, which would flatten
the whole merge into averaging, so fusekit's floor is relative: FLOOR times the largest mean Fisher of the tensor
among the tasks. The Fishers are taken in the adapters' own parameter space (LoRA's factors A and B, L-LoRA's φ),
on held-out training examples of each run (fusekit.merging.statistics); a tensor without them is averaged.
"""

from __future__ import annotations

import torch

from fusekit.merging.methods.base import MergeMethod

FLOOR = 1e-6  # relative to the tensor's largest per-task mean Fisher


class FisherMerge(MergeMethod):
    name = "fisher"
    statistics = "fisher"
    space = "factors"

    def __init__(self):
        self.stats: dict[str, list[torch.Tensor]] = {}  # tensor key → each task's diagonal Fisher

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        fishers = self.stats.get(key) or [torch.ones_like(d) for d in deltas]
        floor = FLOOR * max(float(f.mean()) for f in fishers) or 1e-30
        scaled = [w * f.clamp(min=floor) for w, f in zip(weights, fishers)]
        return sum(s * d for s, d in zip(scaled, deltas)) / sum(scaled)
