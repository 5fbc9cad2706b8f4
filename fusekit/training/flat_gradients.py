"""The gradients of a list of parameters as one flat vector, and back: one all-reduce for many small gradients
(data parallelism), one row per task for a joint step's balancer."""

from __future__ import annotations

import torch
from torch import nn


def take_gradients(params: list[nn.Parameter]) -> torch.Tensor:
    """The gradients of `params` as one new flat vector (zeros where none flowed), cleared for the next backward."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    for p in params:
        p.grad = None
    return flat


def set_gradients(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    """Give `params` the gradients held in `flat` (the inverse of `take_gradients`): views of it, not copies."""
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
