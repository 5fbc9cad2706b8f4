"""TSV-M, Task Singular Vectors merging (Gargiulo et al., *Task Singular Vectors: Reducing Task Interference in
Model Merging*, CVPR 2025), in ΔW space.

Per weight matrix, each task's change ΔW_i = U_i Σ_i V_iᵀ keeps its top k singular triplets, k = ⌊min(m, n) / T⌋
for T tasks (the paper's equal share of the spectrum; fewer where ΔW_i has fewer nonzero singular values, as a
LoRA product of rank r has: the rest are arbitrary null-space directions); the kept vectors are concatenated,
U = [U_1 … U_T], Σ = diag(Σ_1 … Σ_T), V = [V_1 … V_T], and decorrelated across tasks by replacing U and V with the
nearest matrices of orthonormal columns (U = P S Qᵀ → P Qᵀ, Procrustes): task interference lives in the overlap
of their singular subspaces, and orthogonalising removes it while keeping each task's singular values. Then

    ΔW = λ · U⊥ Σ V⊥ᵀ,     weights w_i scale ΔW_i first.

A tensor that is not a matrix is merged by task arithmetic, as the paper's code does for biases.
"""

from __future__ import annotations

import torch

from fusekit.merging.methods.base import MergeMethod
from fusekit.merging.params import LAMBDA

NONZERO = 1e-6  # a singular value below this share of the largest is zero (a LoRA product's null space)


def nearest_orthonormal(matrix: torch.Tensor) -> torch.Tensor:
    """P Qᵀ from matrix = P S Qᵀ: the matrix of orthonormal columns closest to `matrix` in Frobenius norm."""
    p, _, qh = torch.linalg.svd(matrix, full_matrices=False)
    return p @ qh


class TaskSingularVectors(MergeMethod):
    name = "tsv-m"
    parameters = (LAMBDA,)
    space = "delta-w"

    def __init__(self, lam: float = LAMBDA.default):
        self.lam = lam

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        if deltas[0].dim() != 2:
            return self.lam * sum(w * d for w, d in zip(weights, deltas))
        share = max(1, min(deltas[0].shape) // len(deltas))
        us, ss, vs = [], [], []
        for w, d in zip(weights, deltas):
            u, s, vh = torch.linalg.svd((w * d).double(), full_matrices=False)
            keep = min(share, int((s > NONZERO * s[0]).sum())) if s[0] > 0 else 0
            us.append(u[:, :keep])
            ss.append(s[:keep])
            vs.append(vh[:keep].T)
        if not sum(len(s) for s in ss):
            return torch.zeros_like(deltas[0])
        u, s, v = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vs, dim=1)
        merged = nearest_orthonormal(u) @ torch.diag(s) @ nearest_orthonormal(v).T
        return (self.lam * merged).to(deltas[0].dtype)
