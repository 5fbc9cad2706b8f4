"""Loss balancers for joint multi-task training, registered in one place: a new one is a class plus a line."""

from __future__ import annotations

from fusekit.config import JointConfig
from fusekit.errors import FusekitError
from fusekit.training.balancers.base import Balancer, RunFacts
from fusekit.training.balancers.coba import CoBa
from fusekit.training.balancers.famo import FAMO
from fusekit.training.balancers.gradients import GradNorm, GradNormalize, PCGrad
from fusekit.training.balancers.weighting import InitNorm, PowerMean, PriorNorm, RealTime, Uncertainty, Uniform

BALANCERS: dict[str, type[Balancer]] = {cls.name: cls for cls in (
    Uniform, CoBa, InitNorm, PriorNorm, RealTime, PowerMean, Uncertainty, GradNorm, GradNormalize, PCGrad, FAMO)}


def make_balancer(name: str, num_tasks: int, cfg: JointConfig, run: RunFacts) -> Balancer:
    """The balancer `name` for a joint run with settings `cfg` (each reads its own in `for_run`)."""
    if name not in BALANCERS:
        raise FusekitError(f"unknown balancer {name!r}: expected one of {', '.join(BALANCERS)}")
    return BALANCERS[name].for_run(num_tasks, cfg, run)


__all__ = ["BALANCERS", "Balancer", "RunFacts", "make_balancer"]
