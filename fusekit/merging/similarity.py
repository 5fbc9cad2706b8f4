"""Cosine similarity of task vectors: how much two tasks' adapters point the same way.

LoRA vectors are compared in ΔW space — the products s·(B·A − B0·A0), the change each adapter makes to the
weights, which does not depend on how the factors happen to be split — and L-LoRA vectors in their own parameter
space φ, where their model is linear (the space their merges happen in). One layer at a time, so memory stays at
one layer's products.
"""

from __future__ import annotations

import numpy as np
import torch

from fusekit.artifacts.run_folder import Run
from fusekit.merging.stream import check_mergeable


def similarity_matrix(runs: list[Run]) -> np.ndarray:
    """K × K cosine similarities of the runs' task vectors (1 on the diagonal)."""
    check_mergeable(runs)
    vectors = [run.vector for run in runs]
    first = vectors[0]
    gram = torch.zeros(len(runs), len(runs), dtype=torch.float64)
    if first.meta["kind"] == "lora":
        scale = float(first.meta["alpha"]) / int(first.meta["rank"])
        for layer in sorted({key.rsplit(".lora_", 1)[0] for key in first.init}):
            a_key, b_key = f"{layer}.lora_A.weight", f"{layer}.lora_B.weight"
            a0, b0 = first.init[a_key].double(), first.init[b_key].double()
            parts = [scale * ((b0 + v.delta.get(b_key, torch.zeros_like(b0)).double())
                              @ (a0 + v.delta.get(a_key, torch.zeros_like(a0)).double()) - b0 @ a0).flatten()
                     for v in vectors]
            stacked = torch.stack(parts)
            gram += stacked @ stacked.T
    else:
        for key in first.delta:
            stacked = torch.stack([v.delta[key].double().flatten() for v in vectors])
            gram += stacked @ stacked.T
    norms = gram.diagonal().sqrt().clamp(min=1e-30)
    return (gram / norms[:, None] / norms[None, :]).numpy()
