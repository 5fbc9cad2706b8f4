"""The merge hyperparameters, each declared once with its default, its search grid and its help (as mergekit's
ConfigParameterDef). Each method lists the ones it takes in `parameters`; `fusekit merge`, the search, study
recipes and reports read them from there. Free of torch, so that the CLI builds its help without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    """A hyperparameter a merge method declares: its keyword, its default, the grid `fusekit merge --lambda auto`
    searches when it is not given, and how tables and help name it."""

    name: str  # constructor keyword of the method, key in manifests and search tables
    default: float
    grid: tuple[float, ...]
    label: str  # short name in report tables
    help: str


LAMBDA = Param("lam", 0.3, (0.1, 0.3, 0.5, 0.7, 1.0), "λ", "scale λ of the merged task vector")
DENSITY = Param("density", 0.2, (0.2, 0.5), "density", "TIES: fraction of entries kept per tensor")
DROP_RATE = Param("rate", 0.5, (0.5, 0.9), "p", "DARE: drop probability p")
PARAMETERS: tuple[Param, ...] = (LAMBDA, DENSITY, DROP_RATE)  # every hyperparameter a method may take
