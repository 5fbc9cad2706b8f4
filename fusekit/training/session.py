"""The skeleton that `fusekit train` and `fusekit joint` share (as torchtune's recipe class): setup, resume,
optimizer step, checkpoint, finish. What differs — the model, the data, the loss of a step, the outputs — stays
in each command's module.

A session checks the output folder before any work, loads the last checkpoint if there is one (a corrupt one,
or one of another config, fails here too), builds AdamW with a linear warmup-decay schedule, and writes the
outputs into a staged folder that replaces the output folder only when complete; then its checkpoints go.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from fusekit.artifacts.checkpoint import Checkpoints, TrainingState, metrics_log
from fusekit.artifacts.output import OutputLock, check_output, claim_output
from fusekit.config import TrainConfig
from fusekit.data.loading import ResumableLoader
from fusekit.errors import FusekitError
from fusekit.models.base import resolve_device
from fusekit.progress import console, progress_bar
from fusekit.training.parallel import processes


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingSession:
    """One training run's output folder, processes, device, optimizer, schedule, checkpoints and metrics log."""

    def __init__(self, cfg: TrainConfig, kind: str, overwrite: bool = False):
        """`kind` names the output in its marker: run (`fusekit train`) or joint."""
        self.cfg, self.kind, self.overwrite = cfg, kind, overwrite
        self.out = cfg.output_dir()
        self.procs = processes()
        # fail before any work, not after it; the lock keeps a second command off this output and its checkpoint
        inputs = [cfg.data, cfg.model, *(getattr(cfg, "references", None) or [])]
        self.lock: OutputLock | None = None
        if self.procs.is_main:
            self.lock = claim_output(self.out, overwrite, inputs)
        else:
            check_output(self.out, overwrite, inputs)
        self.checkpoints = Checkpoints(self.out, cfg, overwrite, writer=self.procs.is_main)
        self.resumed = self.checkpoints.load()  # likewise a corrupt checkpoint, or one of another config
        self.step, self.seconds = 0, 0.0

    def setup_device(self) -> torch.device:
        self.device = self.procs.device(resolve_device(self.cfg.device))
        return self.device

    def setup_optimizer(self, params: list[torch.Tensor], total_steps: int,
                        clipped: list[torch.Tensor] | None = None, heads: list[torch.Tensor] = ()) -> None:
        """AdamW over `params` at `lr` and `heads` at `head_lr` (a fresh head wants its own step size), linear
        warmup then decay over `total_steps`; the gradient norm of `clipped` (default all of them) is clipped
        to `max_grad_norm` at each step."""
        cfg = self.cfg
        self.clipped = [*params, *heads] if clipped is None else clipped
        groups = [{"params": list(params), "lr": cfg.lr}]
        if heads:
            groups.append({"params": list(heads), "lr": cfg.lr if cfg.head_lr is None else cfg.head_lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.total = total_steps
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, math.ceil(cfg.warmup_ratio * total_steps),
                                                         total_steps)

    def track(self, trained: dict[str, torch.Tensor], loaders: dict[str, ResumableLoader], balancer=None) -> None:
        """What a checkpoint captures besides optimizer and schedule: trained weights, loader positions, balancer."""
        self.state = TrainingState(trained, self.optimizer, self.scheduler, loaders, balancer)

    def announce(self, text: str) -> None:
        console.print(text + (f" × {self.procs.world} processes" if self.procs.active else ""))

    def resume(self) -> int:
        """Restore the last checkpoint, if any; the number of optimizer steps already taken."""
        if self.resumed:
            self.state.restore(self.resumed)
            self.seconds, self.step = self.resumed["seconds"], self.resumed["step"]
            console.print(f"resuming from step {self.step}")
        return self.step

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """The staged output folder, with `bar` (progress) and `log` (metrics, continued on resume) open; on
        success it replaces the output folder, every process waits for it, and the checkpoints are discarded."""
        try:
            with self.procs.stage(self.out, self.overwrite, self.kind) as stage, progress_bar() as bar:
                self.bar, self.log = bar, metrics_log(stage, self.resumed)
                yield stage
            self.procs.barrier()  # the output folder is in place before any process goes on
            self.checkpoints.discard()
        finally:
            if self.lock:
                self.lock.release()

    def optimizer_step(self) -> int:
        """Clip the gradient norm (unless `max_grad_norm` is 0), step optimizer and schedule, clear gradients."""
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return self.step

    def check_finite(self, losses: list[float]) -> None:
        """Stop a run whose loss is no longer a number, before anything diverged is written."""
        if not all(math.isfinite(x) for x in losses):
            raise FusekitError(f"training diverged: the loss is {losses} at step {self.step} (a smaller --lr, "
                               "--head-lr or --alpha?); nothing was written")

    def checkpoint_due(self) -> bool:
        return self.checkpoints.due(self.step)

    def save_checkpoint(self, seconds: float = 0.0) -> None:
        """Everything needed to continue after this step; `seconds` is the training time so far."""
        self.checkpoints.save(self.state.capture(self.step, self.log.path, seconds))
