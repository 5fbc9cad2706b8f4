"""Merge methods, registered in one place: a new method is a class in its own file plus one line here."""

from __future__ import annotations

from fusekit.errors import FusekitError
from fusekit.merging.methods.average import Average
from fusekit.merging.methods.base import MergeMethod
from fusekit.merging.methods.dare import Dare
from fusekit.merging.methods.task_arithmetic import TaskArithmetic
from fusekit.merging.methods.ties import Ties

# name → builder from hyperparameters (λ, TIES density, DARE drop rate, seed)
METHODS = {
    "task-arithmetic": lambda lam, density, rate, seed: TaskArithmetic(lam),
    "average": lambda lam, density, rate, seed: Average(),
    "ties": lambda lam, density, rate, seed: Ties(lam, density),
    "dare": lambda lam, density, rate, seed: Dare(TaskArithmetic(lam), rate, seed),
    "dare-ties": lambda lam, density, rate, seed: Dare(Ties(lam, density), rate, seed),
}


def make_method(name: str, lam: float = 0.3, density: float = 0.2, rate: float = 0.5, seed: int = 0) -> MergeMethod:
    if name not in METHODS:
        raise FusekitError(f"unknown merge method {name!r}: expected one of {', '.join(METHODS)}")
    return METHODS[name](lam, density, rate, seed)


__all__ = ["METHODS", "MergeMethod", "make_method"]
