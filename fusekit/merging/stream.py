"""Fusing task vectors into one adapter, streamed tensor by tensor (memory ≈ one adapter plus one layer).

Two spaces for LoRA vectors:

* `factors` — merge A and B separately, as the authors' code does: φ = φ0 + merge(τ_i). For LoRA this leaves
  cross terms: (Σ B_i)(Σ A_i) ≠ Σ B_i A_i. L-LoRA vectors always merge here: their model is affine in φ, so the
  linearized forward at the merged point is exactly the merge of the task models' tangent terms.
* `delta-w` — merge the exact per-layer products ΔW_i = s·(B_i·A_i − B0·A0) and write the result back as a
  LoRA adapter: linear methods exactly, factors concatenated (B = [c_1 B_1 … c_N B_N], A = [A_1; …; A_N], rank
  Σ r_i, plus r for −(Σ c_i)·B0 when B0 ≠ 0), or by a truncated SVD to `rank` (the truncation error is reported).
  The result is a LoRA vector with B0 = 0 and φ0 = (A, 0), a representation any peft LoRA loads.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from safetensors import safe_open

from fusekit.artifacts.layout import TASK_VECTOR
from fusekit.artifacts.run_folder import Run
from fusekit.artifacts.task_vector import TaskVector, check_compatible
from fusekit.errors import FusekitError
from fusekit.merging.config import SPACES
from fusekit.merging.methods import MergeMethod
from fusekit.models.base import fingerprint
from fusekit.progress import tracked


@dataclass
class MergeReport:
    """What a merge did beyond its inputs: the rank written and, for SVD truncation, the error it made."""

    rank: int
    truncation_error: float = 0.0  # ‖ΔW − ΔW_R‖_F / ‖ΔW‖_F over all layers
    worst_layer_error: float = 0.0


def check_mergeable(runs: list[Run]) -> None:
    """Same base model, adapter kind, rank, targets and φ0; one run per task (heads stay per task)."""
    if len(runs) < 1:
        raise FusekitError("no run to merge: expected one or more run folders")
    tasks = [run.head_task for run in runs]
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise FusekitError(f"two runs for task {duplicates[0]}: expected one run per task (heads stay per task)")
    first = runs[0].header()
    for run in runs[1:]:
        check_compatible(first, run.header())
        if run.config.model != runs[0].config.model:
            raise FusekitError(f"{run.folder} uses model {run.config.model!r}, {runs[0].folder} uses "
                               f"{runs[0].config.model!r} (expected one base model)")


def merge_vectors(runs: list[Run], method: MergeMethod, weights: list[float] | None = None, space: str = "delta-w",
          rank: int | None = None, progress: bool = False) -> tuple[TaskVector, MergeReport]:
    """Merge the runs' task vectors with `method`, reading one tensor of each file at a time (`progress`: a bar
    over the tensors or layers; off inside a search, which shows its own)."""
    if space not in SPACES:
        raise FusekitError(f"unknown --space {space!r}: expected one of {', '.join(SPACES)}")
    check_mergeable(runs)
    weights = weights or [1.0] * len(runs)
    if len(weights) != len(runs):
        raise FusekitError(f"--weights has {len(weights)} values for {len(runs)} runs (expected one per run)")
    first = runs[0].vector
    if first.meta["kind"] != "lora" and space == "delta-w":
        raise FusekitError(f"{first.meta['kind']} vectors merge in their own parameter space: use --space factors")
    words = {task: record for run in runs for task, record in run.header().meta.get("verbalizers", {}).items()}
    meta = {**first.meta, "tasks": [run.head_task for run in runs], **({"verbalizers": words} if words else {}),
            "merge": {"method": method.name, **method.params(), "space": space, "weights": weights}}
    with ExitStack() as stack:
        files = [stack.enter_context(safe_open(str(run.folder / TASK_VECTOR), "pt")) for run in runs]

        def deltas(key: str) -> list[torch.Tensor]:
            return [f.get_tensor(f"delta/{key}").float() if f"delta/{key}" in f.keys() else
                    torch.zeros_like(first.init[key]) for f in files]

        if space == "factors":
            keys = tracked(list(first.delta), f"merge {method.name}", len(first.delta), progress)
            delta = {key: method.merge(deltas(key), weights, key) for key in keys}
            return TaskVector(delta, first.init, meta), MergeReport(rank=int(first.meta["rank"]))
        return _merge_delta_w(first, deltas, method, weights, rank, meta, progress)


def _merge_delta_w(first: TaskVector, deltas, method: MergeMethod, weights: list[float], rank: int | None,
                   meta: dict, progress: bool) -> tuple[TaskVector, MergeReport]:
    scale = float(first.meta["alpha"]) / int(first.meta["rank"])
    layers = sorted({key.rsplit(".lora_", 1)[0] for key in first.init})
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    residual, total = 0.0, 0.0
    worst = 0.0
    for layer in tracked(layers, f"merge {method.name} ΔW", len(layers), progress):
        a_key, b_key = f"{layer}.lora_A.weight", f"{layer}.lora_B.weight"
        a0, b0 = first.init[a_key], first.init[b_key]
        a_list = [a0 + d for d in deltas(a_key)]
        b_list = [b0 + d for d in deltas(b_key)]
        if method.linear and rank is None:
            c = method.coefficients(weights)
            b_parts, a_parts = [ci * b for ci, b in zip(c, b_list)], list(a_list)
            if b0.abs().sum() > 0:  # the compensation −s·B0·A0 each task model carries
                b_parts.append(-sum(c) * b0)
                a_parts.append(a0)
            factors[layer] = (torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1))
            continue
        products = [scale * (b @ a - b0 @ a0) for a, b in zip(a_list, b_list)]
        merged = method.merge(products, weights, layer)
        r = rank or sum(a.shape[0] for a in a_list)
        u, s, vh = torch.linalg.svd(merged, full_matrices=False)
        root = (s[:r] / scale).sqrt()
        factors[layer] = (root[:, None] * vh[:r], u[:, :r] * root[None, :])
        layer_residual = float((s[r:] ** 2).sum())
        layer_total = float((s ** 2).sum())
        residual, total = residual + layer_residual, total + layer_total
        worst = max(worst, (layer_residual / layer_total) ** 0.5 if layer_total else 0.0)
    new_rank = next(iter(factors.values()))[0].shape[0]
    init = {f"{layer}.lora_A.weight": a for layer, (a, _) in factors.items()}
    init |= {f"{layer}.lora_B.weight": torch.zeros_like(b) for layer, (_, b) in factors.items()}
    delta = {f"{layer}.lora_B.weight": b for layer, (_, b) in factors.items()}
    meta = {**meta, "kind": "lora", "rank": new_rank, "alpha": scale * new_rank, "lora_init": "default",
            "linearize": None, "init_fingerprint": fingerprint(init)}
    error = (residual / total) ** 0.5 if total else 0.0
    return TaskVector(delta, init, meta), MergeReport(new_rank, error, worst)
