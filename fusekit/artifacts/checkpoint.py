"""Resumable training: a checkpoint of all a run needs to continue bit for bit, in a folder beside its output.

Its files (a manifest and one step file) are listed in fusekit.artifacts.layout.

A save writes a new file, then rewrites the manifest, then deletes the older file: a crash or a full disk at
any moment leaves a manifest naming a complete file. Files hold only tensors and plain containers and are read
with `torch.load(weights_only=True)`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
import tempfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Protocol

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from fusekit.artifacts.atomic import atomic_write_json, publish
from fusekit.artifacts.checksums import sha256
from fusekit.artifacts.layout import CHECKPOINT_GLOB, MANIFEST, METRICS, checkpoint_dir, checkpoint_file
from fusekit.errors import FusekitError
from fusekit.progress import JsonlLog

IGNORED_KEYS = ("checkpoint_every", "out")  # config keys that do not change what a run computes


class Stateful(Protocol):
    """What a checkpoint needs of a data loader or a loss balancer (format code does not know the algorithms)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainingState:
    """The live objects of a training loop that a checkpoint captures and restores."""

    params: dict[str, torch.Tensor]  # trainable weights by name (adapter and heads)
    optimizer: Optimizer
    scheduler: LRScheduler
    loaders: dict[str, Stateful]  # resumable data loaders
    balancer: Stateful | None = None  # the loss balancer of joint training

    def capture(self, step: int, log: Path, seconds: float = 0.0) -> dict:
        """Everything needed to continue after optimizer step `step`, as tensors and plain containers.

        `log` is the run's metrics log so far; `seconds` the training time so far (for throughput).
        """
        return {
            "step": step, "seconds": seconds, "metrics": log.read_text(encoding="utf-8"),
            "params": {k: p.detach().clone() for k, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "loaders": {k: loader.state_dict() for k, loader in self.loaders.items()},
            "balancer": self.balancer.state_dict() if self.balancer else None,
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def restore(self, state: dict) -> None:
        if set(state["params"]) != set(self.params):
            raise FusekitError("checkpoint weights do not match the model (expected the same adapter and heads)")
        with torch.no_grad():
            for key, param in self.params.items():
                param.copy_(state["params"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for key, loader in self.loaders.items():
            loader.load_state_dict(state["loaders"][key])
        if self.balancer:
            self.balancer.load_state_dict(state["balancer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


def _config_dict(config) -> dict:
    """The config as JSON would give it back, without keys that do not change the run."""
    data = json.loads(json.dumps(dataclasses.asdict(config)))
    return {k: v for k, v in data.items() if k not in IGNORED_KEYS}


def metrics_log(stage: Path, resumed: dict | None) -> JsonlLog:
    """The run's metrics log in `stage`, continuing from the lines a resumed checkpoint carried."""
    path = stage / METRICS
    if resumed:
        path.write_text(resumed["metrics"], encoding="utf-8")
    return JsonlLog(path)


class Checkpoints:
    """The checkpoint folder of one run: load the latest valid checkpoint, save a new one, discard them all.

    With `writer` False (the other processes of a data-parallel run) it only reads: nothing is due, nothing is
    discarded.
    """

    def __init__(self, out: Path, config, overwrite: bool, writer: bool = True):
        self.folder = checkpoint_dir(out)
        self.config = _config_dict(config)
        self.every = config.checkpoint_every
        self.writer = writer
        if self.every < 0:
            raise FusekitError(f"checkpoint_every is {self.every} (expected 0 for none, or a number of steps)")
        if overwrite:
            self.discard()

    def restart_hint(self) -> str:
        return f"delete {self.folder} (or pass --overwrite) to restart"

    def load(self) -> dict | None:
        """The latest checkpoint's state, checked against its sha256 and this run's config; None if none."""
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            name, expected, config = manifest["file"], manifest["sha256"], manifest["config"]
            if not (isinstance(name, str) and fnmatch(name, CHECKPOINT_GLOB) and "/" not in name
                    and isinstance(config, dict)):
                raise TypeError("unexpected file name or config")
            path = self.folder / name
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as error:
            raise FusekitError(f"checkpoint {manifest_path} is corrupt ({error}): {self.restart_hint()}") from None
        changed = sorted(k for k in {*config, *self.config} if config.get(k) != self.config.get(k))
        if changed:
            raise FusekitError(f"checkpoint {self.folder} was written by a different config ({', '.join(changed)} "
                               f"differ): {self.restart_hint()}")
        if not path.is_file():
            raise FusekitError(f"checkpoint {path} is missing: {self.restart_hint()}")
        if sha256(path) != expected:
            raise FusekitError(f"checkpoint {path} is corrupt (sha256 mismatch): {self.restart_hint()}")
        try:
            return torch.load(path, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:  # not a resumable file
            raise FusekitError(f"checkpoint {path} cannot be read ({str(error).splitlines()[0]}): "
                               f"{self.restart_hint()}") from None

    def due(self, step: int) -> bool:
        return self.writer and self.every > 0 and step % self.every == 0

    def save(self, state: dict) -> None:
        """Write `state` as a new file, point the manifest at it, then delete older files."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / checkpoint_file(state["step"])
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            publish(tmp, path)  # the permissions of every other file fusekit writes (0644 under umask 022)
            atomic_write_json(self.folder / MANIFEST, {"step": state["step"], "file": path.name,
                                                       "sha256": sha256(path), "config": self.config})
        except OSError as error:
            Path(tmp).unlink(missing_ok=True)
            raise FusekitError(f"could not write checkpoint {path} ({error}); the previous one is kept") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for old in self.folder.glob(CHECKPOINT_GLOB):
            if old != path:
                old.unlink()

    def discard(self) -> None:
        if self.writer:
            shutil.rmtree(self.folder, ignore_errors=True)
