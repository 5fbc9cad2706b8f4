"""The merge hyperparameters, each declared once with its default, its search grid and its help (as mergekit's
ConfigParameterDef). Each method lists the ones it takes in `parameters`; `fusekit merge`, the search, study
recipes and reports read them from there. Free of torch, so that the CLI builds its help without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusekit.config import Allowed, short
from fusekit.errors import FusekitError


@dataclass(frozen=True)
class Param:
    """A hyperparameter a merge method declares: its keyword, its default, the grid `fusekit merge --search`
    searches when it is not given, how tables, help and errors name it, and what values it accepts."""

    name: str  # constructor keyword of the method, key in manifests and search tables
    default: float
    grid: tuple[float, ...]
    label: str  # short name in report tables
    help: str
    flag: str  # the `fusekit merge` option
    allowed: Allowed = Allowed()

    def check(self, value: float) -> None:
        problem = self.allowed.problem(value)
        if problem:
            raise FusekitError(f"{self.flag} {short(value)}: expected {problem}")


LAMBDA = Param("lam", 0.3, (0.1, 0.3, 0.5, 0.7, 1.0), "λ", "scale λ of the merged task vector", "--lambda")
DENSITY = Param("density", 0.2, (0.2, 0.5), "density", "TIES: fraction of entries kept per tensor", "--density",
                Allowed(low=0, high=1, low_open=True))
DROP_RATE = Param("rate", 0.5, (0.5, 0.9), "p", "DARE: drop probability p", "--drop-rate",
                  Allowed(low=0, high=1, high_open=True))
REGMEAN_ALPHA = Param("regmean_alpha", 0.9, (0.5, 0.9), "α", "RegMean: scale of the Gram matrices' off-diagonal "
                      "terms (1: none shrunk)", "--regmean-alpha", Allowed(low=0, high=1))
PARAMETERS: tuple[Param, ...] = (LAMBDA, DENSITY, DROP_RATE, REGMEAN_ALPHA)  # every hyperparameter a method may take
