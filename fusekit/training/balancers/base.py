"""The loss-balancer interface for joint multi-task training.

Each step the trainer runs each task's forward and backward in turn (one task's activations alive at a time) and
calls `balance(losses, grads)` with the task losses' values and their gradients g_i on the shared adapter weights;
it returns the shared weights' gradient and the task weights ω applied (logged per step, and scaling each task's
head gradient). Loss-weighting balancers only define `combine`, an objective of the losses: ω_i = ∂objective/∂L_i
and the gradient Σ ω_i g_i, which is the objective's own gradient. Gradient balancers (PCGrad, gradient
normalization, GradNorm) override `combine_gradients` and act on the g_i themselves.

Balancers that learn from how a step changed the losses (FAMO) set `needs_loss_after_step`; the trainer then
recomputes the task losses on the step's own batches after `optimizer.step()`, without gradients, and passes them
to `after_step`.

`state_dict` / `load_state_dict` capture whatever a balancer learns while training (histories, weights,
generators, a balancer's own optimizer), found by type, so that a resumed run continues exactly without
per-balancer code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fusekit.config import JointConfig


@dataclass(frozen=True)
class RunFacts:
    """What a balancer may need to know of its run beyond its settings."""

    total_steps: int
    priors: list[float]  # each task's loss at its label prior (prior-norm)


class Balancer:
    name = ""
    # gradient balancers set the shared weights' gradients from per-task gradients summed over processes
    combines_shared_gradients: bool = False

    @staticmethod
    def across_processes(tensor: torch.Tensor) -> torch.Tensor:
        """Sum over data-parallel processes; the trainer installs `Processes.sum` (one process: unchanged)."""
        return tensor

    def __init__(self, num_tasks: int):
        self.num_tasks = num_tasks

    @classmethod
    def for_run(cls, num_tasks: int, cfg: JointConfig, run: RunFacts) -> Balancer:
        """The balancer a joint run asks for: each balancer reads its own settings from the config here, so that
        the trainer knows none of them."""
        return cls(num_tasks)

    def parameters(self) -> list[nn.Parameter]:
        """Learnable balancer weights, optimised with the model (uncertainty weighting, GradNorm)."""
        return []

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """The scalar objective built from the task losses (default: their sum)."""
        return losses.sum()

    def balance(self, losses: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(The shared weights' gradient, ω) from the K loss values and the K × P matrix of their gradients g_i
        (this process's shares). ω_i = ∂objective/∂L_i (for a weighted sum, the weights themselves); the balancer's
        own learnable weights get their gradients from the objective here."""
        values = losses.detach().clone().requires_grad_()
        self.combine(values).backward()
        weights = values.grad
        return weights.to(grads.dtype) @ grads, weights

    # Hooks for balancers that watch validation losses (CoBa) — the trainer asks before calling.
    validation_interval: int = 0

    def observe(self, step: int, validation_losses: torch.Tensor) -> None:
        """Validation losses of each task after optimizer step `step`."""

    def start(self, validation_losses: torch.Tensor) -> None:
        """Full validation losses before training."""

    # Hook for balancers that need the losses of the same batches after the optimizer step (FAMO).
    needs_loss_after_step: bool = False

    def after_step(self, new_losses: torch.Tensor) -> None:
        """The task losses on this step's batches at the updated parameters (no gradients)."""

    def state_dict(self) -> dict:
        """Attributes that training changes: tensors, lists of tensors or ints, None, generators and optimizers
        (their state).

        Plain numbers are settings, rebuilt from the config, and are left out.
        """
        state: dict = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.Generator):
                state[name] = value.get_state()
            elif isinstance(value, torch.optim.Optimizer):
                state[name] = copy.deepcopy(value.state_dict())
            elif isinstance(value, torch.Tensor):
                state[name] = value.detach().clone()
            elif value is None or (isinstance(value, list) and all(isinstance(v, (torch.Tensor, int)) for v in value)):
                state[name] = value
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; learnable parameters are copied in place (the optimizer holds them)."""
        for name, value in state.items():
            current = getattr(self, name)
            if isinstance(current, torch.Generator):
                current.set_state(value)
            elif isinstance(current, torch.optim.Optimizer):
                current.load_state_dict(value)
            elif isinstance(current, nn.Parameter):
                with torch.no_grad():
                    current.copy_(value)
            else:
                setattr(self, name, value)

