"""AdaMerging (Yang et al., *AdaMerging: Adaptive Model Merging for Multi-Task Learning*, ICLR 2024), layer-wise.

    φ = φ0 + Σ_i λ_{i,l} τ_{i,l}

one coefficient per task i and adapter layer l, learned by minimising the Shannon entropy of each task's
predictions (its own head) on unlabeled inputs (fusekit.merging.statistics.learn_coefficients). The paper takes
those inputs from the test split; fusekit takes held-out training inputs, so the dev split stays unseen. Merged in
the adapters' own parameter space (LoRA's factors, L-LoRA's φ), where λ enters the forward directly.
"""

from __future__ import annotations

import torch

from fusekit.merging.methods.base import MergeMethod


class AdaMerging(MergeMethod):
    name = "adamerging"
    statistics = "coefficients"
    space = "factors"

    def __init__(self):
        self.stats: dict[str, list[torch.Tensor]] = {}  # tensor key → each task's learned λ for its layer

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        coefficients = self.stats.get(key) or [torch.tensor(1.0 / len(deltas))] * len(deltas)
        return sum(w * float(c) * d for w, c, d in zip(weights, coefficients, deltas))
