"""What this machine can give and what a benchmark's work needs, so that every table says how far from the
machine's limit a loop runs: the matmul peak and the memory bandwidth, measured in the same run as the work, and
the FLOPs of a forward counted from a model's shapes and the tokens it actually reads (padding excluded).
"""

from __future__ import annotations

import time

import torch
from torch import nn


def _best_seconds(work, device: torch.device, repeats: int = 5) -> float:
    def timed() -> float:
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()  # warm-up: first-touch page faults and lazy kernel selection are not the machine's limit
    return min(timed() for _ in range(repeats))


def matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """FLOP/s of a 2048² matmul in `dtype` on `device` (a CPU at this process's torch threads), best of 5."""
    device = torch.device(device)
    a, b = (torch.randn(2048, 2048, dtype=dtype, device=device) for _ in range(2))
    return 2 * 2048**3 / _best_seconds(lambda: a @ b, device)


def copy_bandwidth() -> float:
    """Bytes/s moved (read + written) by copying 256 MiB of float32, best of 5: what memory-bound work such as
    adding task vectors can reach."""
    source = torch.ones(64 * 2**20)
    target = torch.empty_like(source)
    return 2 * source.numel() * source.element_size() / _best_seconds(lambda: target.copy_(source),
                                                                      torch.device("cpu"))


def body_parameters(model: nn.Module) -> int:
    """Parameters of the matrices every token goes through: all but the embedding tables and the output projection
    (a lookup costs no FLOPs; the vocabulary projection is counted where its rows are read, see `forward_flops`)."""
    skipped = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        skipped |= {id(p) for p in output.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skipped)


def forward_flops(model: nn.Module, tokens: int, projected_rows: int = 0) -> float:
    """FLOPs one forward needs over `tokens` real tokens, with the vocabulary projection computed for
    `projected_rows` positions (a text answer: one per example)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    projection = output.weight.numel() if output is not None and projected_rows else 0
    return 2.0 * body_parameters(model) * tokens + 2.0 * projection * projected_rows
