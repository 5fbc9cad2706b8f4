"""AdaMerging (Yang et al., *AdaMerging: Adaptive Model Merging for Multi-Task Learning*, ICLR 2024), layer-wise.

    φ = φ0 + Σ_i λ_{i,l} τ_{i,l}

one coefficient per task i and adapter layer l, learned by minimising the Shannon entropy of each task's
predictions (its own head) on unlabeled inputs (fusekit.merging.statistics.learn_coefficients).

`adamerging-normalized` keeps an imbalanced task from being starved: the paper's summed entropy is lowest where a
task answers its majority class confidently, whatever its adapter learned, so each task's entropy is divided by its
own adapter's entropy on the same inputs (every task counts as much as its adapter's own confidence), and a penalty
anchor · mean((λ − 0.3)²) keeps the coefficients near the task-arithmetic start. The paper takes
those inputs from the test split; fusekit takes held-out training inputs, so the dev split stays unseen. Merged in
the adapters' own parameter space (LoRA's factors, L-LoRA's φ), where λ enters the forward directly.
"""

from __future__ import annotations

import torch

from fusekit.merging.methods.base import MergeMethod

ANCHOR = 1.0  # of the normalized variant's penalty; set by reasoning on the scales (entropy ratios ~1 per task,
# coefficients ~0.1–0.5 off their start), not chosen on any score


class AdaMerging(MergeMethod):
    name = "adamerging"
    statistics = "coefficients"
    space = "factors"
    normalized, anchor = False, 0.0  # the paper's objective

    def __init__(self):
        self.stats: dict[str, list[torch.Tensor]] = {}  # tensor key → each task's learned λ for its layer

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        coefficients = self.stats.get(key) or [torch.tensor(1.0 / len(deltas))] * len(deltas)
        return sum(w * float(c) * d for w, c, d in zip(weights, coefficients, deltas))


class NormalizedAdaMerging(AdaMerging):
    name = "adamerging-normalized"
    normalized, anchor = True, ANCHOR
