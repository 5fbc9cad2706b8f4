"""The merge-method interface: combine the same tensor of N task vectors into one merged delta."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from fusekit.merging.params import Param


class MergeMethod(ABC):
    """One way to fuse task vectors, applied tensor by tensor so that merging can stream layer by layer.

    `merge` gets τ_1..τ_N of one weight (same shape) and one weight per task, and returns the merged delta
    that is added to φ0 (or to W0 in ΔW space). Hyperparameters are constructor arguments, declared in
    `parameters` with their defaults.
    """

    name: str = ""
    parameters: ClassVar[tuple[Param, ...]] = ()
    linear: bool = False  # the result is Σ c_i τ_i: exact in LoRA-factor form (rank Σ r_i) in ΔW space
    # data-aware methods: which per-task statistics they merge with ("gram": each layer's input Gram matrix;
    # "fisher": each parameter's diagonal Fisher; "coefficients": learned λ), handed over in `stats` before merging,
    # and the one space they merge in
    statistics: ClassVar[str | None] = None
    space: ClassVar[str | None] = None
    stats: dict[str, list[torch.Tensor]]

    @abstractmethod
    def merge(self, deltas: list[torch.Tensor], weights: list[float], key: str = "") -> torch.Tensor:
        """The merged delta of one tensor; `key` names the tensor (seeds per-tensor randomness)."""

    def coefficients(self, weights: list[float]) -> list[float]:
        """For linear methods: c_i in Σ c_i τ_i."""
        raise NotImplementedError(f"{self.name} is not a linear combination")

    def params(self) -> dict[str, float]:
        """Hyperparameters, for manifests and tables."""
        return {k: v for k, v in vars(self).items() if isinstance(v, (int, float, str))}
