"""Data parallelism under `accelerate launch` or `torchrun`, with no change to the command's arguments.

The launcher starts one process per device and sets WORLD_SIZE, RANK and LOCAL_RANK; fusekit then joins the
process group. Every process reads the same batch and keeps its own contiguous slice of the rows, so the global
batch, the number of steps, the schedule and the checkpoints are those of a single-process run. Adapters are
small, so after the backward all trainable gradients travel in one flat all-reduce: simpler than DDP's buckets,
and it leaves the `torch.func.jvp` forward of L-LoRA untouched.

Losses go through `global_mean`: its value is the mean over every process's rows (what balancers, logs and
schedules see, identical everywhere) and its gradient is this process's share of it, so that summing gradients
across processes gives exactly the gradient of the global-batch loss, also through the balancers' nonlinear
combinations of task losses (the chain rule is linear in ∇L). Only the main process writes outputs and
checkpoints; the others write into a scratch folder that is thrown away.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from fusekit.artifacts.staging import staged_dir
from fusekit.errors import FusekitError
from fusekit.progress import console
from fusekit.training.flat_gradients import set_gradients, take_gradients

# merges and evaluation run on the main process while the others wait at a barrier
TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, device: torch.device) -> torch.device:
        """A CUDA device becomes this process's own GPU (LOCAL_RANK)."""
        if not self.active or device.type != "cuda":
            return device
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def shard(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        """This process's rows of `batch`, and their weight in the global mean (rows here / rows in all).

        A batch with fewer rows than processes is kept whole by each of them, at weight 1/world.
        """
        if not self.active:
            return batch, 1.0
        rows = len(next(iter(batch.values())))
        if rows < self.world:
            return batch, 1.0 / self.world
        start, stop = rows * self.rank // self.world, rows * (self.rank + 1) // self.world
        return {k: v[start:stop] for k, v in batch.items()}, (stop - start) / rows

    def global_mean(self, local: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
        """Value: the global-batch mean of a per-process mean loss; gradient: this process's share of it."""
        if not self.active:
            return local
        share = local * weight
        total = share.detach().clone()
        dist.all_reduce(total)
        return share + (total - share.detach())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all processes (a new tensor)."""
        if not self.active:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` over all processes, in one all-reduce of a flat buffer."""
        if not self.active or not params:
            return
        flat = take_gradients(params)
        dist.all_reduce(flat)  # a fresh buffer: reduced in place, and the gradients become views of it
        set_gradients(params, flat)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @contextmanager
    def stage(self, out: Path, overwrite: bool, kind: str) -> Iterator[Path]:
        """The output folder to fill: `staged_dir` on the main process, a throwaway folder elsewhere."""
        if self.is_main:
            with staged_dir(out, overwrite, kind) as folder:
                yield folder
        else:
            with tempfile.TemporaryDirectory(prefix="fusekit-rank") as scratch:
                yield Path(scratch)


def processes() -> Processes:
    """This process's place among the launcher's processes, joining the process group on first use."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise FusekitError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as accelerate launch and torchrun "
                           "set them)") from None
    if world > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
        console.quiet = rank != 0  # one process speaks
    return Processes(rank, world, local_rank)
