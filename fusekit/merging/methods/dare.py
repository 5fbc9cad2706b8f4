"""DARE (Yu et al., ICML 2024): drop each entry of τ_i with probability p, rescale survivors by 1/(1 − p),
then merge with another method (task arithmetic or TIES). The rescaling keeps E[τ̃_i] = τ_i.

Randomness is seeded per tensor from (seed, tensor name, task index), so a merge is reproducible whatever
order the tensors stream in.
"""

from __future__ import annotations

import zlib

import torch

from fusekit.merging.methods.base import MergeMethod
from fusekit.merging.params import DROP_RATE


def drop_and_rescale(delta: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    if rate == 0:
        return delta
    keep = torch.rand(delta.shape, generator=generator) >= rate
    return delta * keep / (1.0 - rate)


class Dare(MergeMethod):
    name = "dare"
    parameters = (DROP_RATE,)  # besides those of the inner method

    def __init__(self, inner: MergeMethod, rate: float = DROP_RATE.default, seed: int = 0):
        self.inner = inner
        self.rate = rate
        self.seed = seed

    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        dropped = []
        for index, delta in enumerate(deltas):
            generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{key}:{index}".encode()))
            dropped.append(drop_and_rescale(delta, self.rate, generator))
        return self.inner.merge(dropped, weights, key)

    def params(self) -> dict[str, float]:
        return {**self.inner.params(), "rate": self.rate, "seed": self.seed, "inner": self.inner.name}
