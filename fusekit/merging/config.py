"""One merge's settings, typed and checked once: what `fusekit merge` (its flags are generated from these
fields), `fusekit.merge` and study recipes hand whole to `fusekit.merging.merge.run_merge`.

Free of torch, so that the CLI builds its help without loading it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fusekit.config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    PRECISION_HELP,
    PRECISIONS,
    SEED,
    Allowed,
    registry,
    setting,
    short,
)
from fusekit.errors import FusekitError
from fusekit.merging.params import DENSITY, DROP_RATE, LAMBDA, REGMEAN_ALPHA, Param

SPACES = ("delta-w", "factors")
SHARED_MODULES = ("refuse", "average", "first")


def _value(param: Param) -> str:
    return f"{param.help} (default {param.default:g}; with --search, fixed rather than searched)"


@dataclass
class MergeConfig:
    """How to fuse task vectors: the method, its hyperparameters (given, or searched on held-out training
    examples, never on the reported split), the space, and the data a data-aware method reads."""

    method: str = setting("task-arithmetic", "task-arithmetic, average, ties, dare (+ task arithmetic), dare-ties, "
                                             "tsv-m, knots-ties (ΔW space); with data: regmean (ΔW space), fisher, "
                                             "adamerging, adamerging-normalized (factor space)",
                          Allowed(choices=registry("fusekit.merging.methods", "METHODS")))
    lam: float | None = setting(None, _value(LAMBDA), LAMBDA.allowed)
    density: float | None = setting(None, _value(DENSITY), DENSITY.allowed)
    rate: float | None = setting(None, _value(DROP_RATE), DROP_RATE.allowed)
    regmean_alpha: float | None = setting(None, _value(REGMEAN_ALPHA), REGMEAN_ALPHA.allowed)
    search: bool = setting(False, "choose the method's hyperparameters not given above on held-out training "
                                  "examples, each over its grid below or its default grid")
    lambdas: list[float] | None = setting(None, "λ grid of the search, e.g. 0.1,0.3,0.5 (implies --search)",
                                          LAMBDA.allowed)
    densities: list[float] | None = setting(None, "TIES density grid of the search (implies --search)",
                                            DENSITY.allowed)
    rates: list[float] | None = setting(None, "DARE drop-rate grid of the search (implies --search)",
                                        DROP_RATE.allowed)
    select_on_seen: bool = setting(False, "let a search or data-aware merge select on training examples a run "
                                          "trained on, when it trained on all of them (refused otherwise)")
    per_task: bool = setting(False, "then one coefficient per task: coordinate ascent over the λ grid, each task in "
                                    "turn with the others held, on the same held-out examples (implies --search)")
    calibrate: bool = setting(False, "then fit one offset per answer of each task on the same held-out examples, "
                                     "which fusekit eval adds to the task's scores (merged text adapters keep their "
                                     "ranking of examples but move their answer threshold)")
    criterion: str = setting("normalized", "what the search maximises: normalized (mean of merged / own), "
                                           "above-chance (mean share of each adapter's skill above the majority "
                                           "class), raw (mean score) or worst (the lowest normalized task)",
                             Allowed(choices=registry("fusekit.merging.criteria", "CRITERIA")))
    weights: list[float] | None = setting(None, "per-run weights, comma-separated (default uniform)", NON_NEGATIVE)
    space: str | None = setting(None, "LoRA: delta-w (exact B·A products) or factors (A and B apart); default: the "
                                      "method's own space, else factors for L-LoRA and delta-w for LoRA",
                                Allowed(choices=SPACES))
    rank: int | None = setting(None, "delta-w: truncate the merged ΔW to this rank by SVD", AT_LEAST_ONE)
    val_examples: int = setting(200, "held-out training examples per task for the search and data-aware methods",
                                AT_LEAST_ONE)
    seed: int = setting(0, "DARE drops and held-out sampling", SEED)
    device: str = setting("auto", "auto (a GPU when present), cpu, cuda or cuda:N")
    precision: str | None = setting(None, f"{PRECISION_HELP}: of the search's and the calibration's forwards "
                                          "(default: the one the first run trained in; a data-aware method's "
                                          "statistics are taken in fp32)", Allowed(choices=PRECISIONS))
    shared_modules: str = setting("refuse", "PEFT inputs with modules_to_save: refuse, average or first",
                                  Allowed(choices=SHARED_MODULES))

    def __post_init__(self) -> None:
        if self.weights is not None and (not all(math.isfinite(w) for w in self.weights) or sum(self.weights) <= 0):
            raise FusekitError(f"weights {short(self.weights)}: expected finite numbers ≥ 0, not all 0")

    @property
    def searching(self) -> bool:
        return self.search or self.per_task or any((self.lambdas, self.densities, self.rates))

    def recorded(self) -> dict[str, object]:
        """The settings that decide what a merge writes (not where it runs): what its manifest keeps, so that a
        study reuses a finished merge only while its recipe still asks for the same one."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "device"}

    def given(self) -> dict[str, float]:
        """The hyperparameters set to one value, by their method keyword."""
        values = {"lam": self.lam, "density": self.density, "rate": self.rate, "regmean_alpha": self.regmean_alpha}
        return {name: value for name, value in values.items() if value is not None}

    def grids(self) -> dict[str, list[float]]:
        return {name: grid for name, grid in (("lam", self.lambdas), ("density", self.densities),
                                              ("rate", self.rates)) if grid}

    def candidates(self, parameters: tuple[Param, ...]) -> dict[str, list[float]]:
        """The values to try of each of the method's `parameters`: its grid, else the value given, else (when
        searching) its default grid, else its default."""
        grids, given = self.grids(), self.given()
        return {p.name: grids.get(p.name) or ([given[p.name]] if p.name in given else
                                               list(p.grid) if self.searching else [p.default])
                for p in parameters}
