"""Loss balancers for joint multi-task training, registered in one place: a new one is a class plus a line."""

from __future__ import annotations

from fusekit.errors import FusekitError
from fusekit.training.balancers.base import Balancer
from fusekit.training.balancers.coba import CoBa
from fusekit.training.balancers.famo import FAMO
from fusekit.training.balancers.gradients import GradNorm, GradNormalize, PCGrad
from fusekit.training.balancers.weighting import InitNorm, PowerMean, PriorNorm, RealTime, Uncertainty, Uniform

# name → builder(num_tasks, options); options carry priors, gamma, alpha, seed, total_steps, the CoBa and the FAMO
# settings
BALANCERS = {
    "uniform": lambda k, o: Uniform(k),
    "coba": lambda k, o: CoBa.for_run(k, o["total_steps"], o["coba_interval"], o["coba_warmup"], o["coba_window"],
                                      o["coba_acs_history"], o["coba_loss_scale"], o["coba_weighting"]),
    "init-norm": lambda k, o: InitNorm(k),
    "prior-norm": lambda k, o: PriorNorm(k, o["priors"]),
    "realtime": lambda k, o: RealTime(k),
    "power-mean": lambda k, o: PowerMean(k, o["gamma"]),
    "uncertainty": lambda k, o: Uncertainty(k),
    "gradnorm": lambda k, o: GradNorm(k, o["alpha"]),
    "grad-normalize": lambda k, o: GradNormalize(k),
    "pcgrad": lambda k, o: PCGrad(k, o["seed"]),
    "famo": lambda k, o: FAMO(k, o["famo_lr"], o["famo_gamma"]),
}


def make_balancer(name: str, num_tasks: int, options: dict) -> Balancer:
    if name not in BALANCERS:
        raise FusekitError(f"unknown balancer {name!r}: expected one of {', '.join(BALANCERS)}")
    return BALANCERS[name](num_tasks, options)


__all__ = ["BALANCERS", "Balancer", "make_balancer"]
