"""Merge methods, registered in one place: a new method is a class in its own file plus one line here.

Each method declares the hyperparameters it takes (`Param`s of fusekit.merging.params: name, default, search
grid, help); `fusekit merge`, the hyperparameter search and study recipes read them from here.
"""

from __future__ import annotations

from collections.abc import Callable

from fusekit.errors import FusekitError
from fusekit.merging.methods.adamerging import AdaMerging, NormalizedAdaMerging
from fusekit.merging.methods.average import Average
from fusekit.merging.methods.base import MergeMethod
from fusekit.merging.methods.dare import Dare
from fusekit.merging.methods.fisher import FisherMerge
from fusekit.merging.methods.knots import KnotsTies
from fusekit.merging.methods.regmean import RegMean
from fusekit.merging.methods.task_arithmetic import TaskArithmetic
from fusekit.merging.methods.ties import Ties
from fusekit.merging.methods.tsv import TaskSingularVectors
from fusekit.merging.params import DROP_RATE, PARAMETERS, Param

# name → (builder from the seed and the method's hyperparameters, those hyperparameters in table order)
METHODS: dict[str, tuple[Callable[..., MergeMethod], tuple[Param, ...]]] = {
    "task-arithmetic": (lambda seed, lam: TaskArithmetic(lam), TaskArithmetic.parameters),
    "average": (lambda seed: Average(), Average.parameters),
    "ties": (lambda seed, lam, density: Ties(lam, density), Ties.parameters),
    "dare": (lambda seed, lam, rate: Dare(TaskArithmetic(lam), rate, seed), (*TaskArithmetic.parameters, DROP_RATE)),
    "dare-ties": (lambda seed, lam, density, rate: Dare(Ties(lam, density), rate, seed),
                  (*Ties.parameters, DROP_RATE)),
    "regmean": (lambda seed, regmean_alpha: RegMean(regmean_alpha), RegMean.parameters),
    "fisher": (lambda seed: FisherMerge(), FisherMerge.parameters),
    "adamerging": (lambda seed: AdaMerging(), AdaMerging.parameters),
    "adamerging-normalized": (lambda seed: NormalizedAdaMerging(), NormalizedAdaMerging.parameters),
    "tsv-m": (lambda seed, lam: TaskSingularVectors(lam), TaskSingularVectors.parameters),
    "knots-ties": (lambda seed, lam, density: KnotsTies(lam, density), KnotsTies.parameters),
}


def method_parameters(name: str) -> tuple[Param, ...]:
    """The hyperparameters of method `name`, in the order tables and searches list them."""
    _check(name)
    return METHODS[name][1]


def make_method(name: str, seed: int = 0, **values: float) -> MergeMethod:
    """Method `name` with the given hyperparameters (λ `lam`, TIES `density`, DARE `rate`); the others at their
    declared defaults. Values of hyperparameters the method does not have are ignored."""
    _check(name)
    unknown = sorted(set(values) - {p.name for p in PARAMETERS})
    if unknown:
        raise TypeError(f"make_method() got unexpected hyperparameters {unknown}")
    build, parameters = METHODS[name]
    return build(seed, **{p.name: values.get(p.name, p.default) for p in parameters})


def _check(name: str) -> None:
    if name not in METHODS:
        raise FusekitError(f"unknown merge method {name!r}: expected one of {', '.join(METHODS)}")


__all__ = ["METHODS", "PARAMETERS", "MergeMethod", "Param", "make_method", "method_parameters"]
