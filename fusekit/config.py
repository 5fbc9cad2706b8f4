"""Typed run configurations, validated from YAML recipes before any work starts.

Recipes are data: a YAML mapping whose keys are the dataclass fields; CLI flags override keys of the same name.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from fusekit.data.loading import DEFAULT_HUB_DATASET
from fusekit.errors import FusekitError


@dataclass
class TrainConfig:
    """One adapter finetuned on one task (`fusekit train`)."""

    task: str = "sst2"
    adapter: str = "lora"  # lora | l-lora
    model: str | None = None  # local folder or hub id; None = the embedded all-MiniLM-L6-v2
    data: str = DEFAULT_HUB_DATASET  # GLUE-layout folder or hub dataset id
    out: str | None = None  # default runs/<task>-<adapter>
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    init_seed: int = 0
    lora_init: str = "default"  # default (B0 = 0) | nonzero (random B0, base weight compensated)
    linearize: str | None = None  # L-LoRA scope: module (default for l-lora) | network
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0  # clip the gradient norm to this (0: no clipping)
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128
    max_train: int | None = None
    max_eval: int | None = None
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints (0: none)

    def output_dir(self) -> Path:
        return Path(self.out or f"runs/{self.task}-{self.adapter}")


@dataclass
class JointConfig(TrainConfig):
    """One adapter trained on several tasks at once, one head per task (`fusekit joint`).

    `task` is unused; each step draws one batch per task, of `batch_size` · K · p_i examples for task i, with
    p_i ∝ n_i^T (temperature), ∝ n_i (proportional) or uniform.
    """

    tasks: str = "sst2,rte,mrpc,cola,stsb"
    balancer: str = "uniform"
    sampling: str = "temperature"  # temperature | proportional | uniform
    temperature: float = 0.5
    gamma: float = 0.5  # power-mean
    gradnorm_alpha: float = 1.5
    coba_interval: int = 1
    coba_warmup: int = 100
    coba_window: int = 200
    famo_lr: float = 0.025  # FAMO: Adam learning rate of the task logits ξ
    famo_gamma: float = 0.001  # FAMO: weight decay γ of ξ (the paper's regulariser, which pulls z toward uniform)
    validation_examples: int = 200  # CoBa's held-out set, carved from training examples the run does not use
    references: list[str] | None = None  # run folders of the individually finetuned adapters, for normalized scores

    def output_dir(self) -> Path:
        return Path(self.out or f"runs/joint-{self.balancer}")


def _type_ok(value: object, hint: object) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)  # type: ignore[arg-type]


def _type_name(hint: object) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def from_mapping(cls: type, data: dict, source: str):
    """Build dataclass `cls` from `data`, naming the source and key of any unknown key or wrong type."""
    if not isinstance(data, dict):
        raise FusekitError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise FusekitError(f"{source}: unknown key {key!r} (expected one of {', '.join(sorted(known))})")
        if isinstance(value, int) and not isinstance(value, bool) and hints[key] is float:
            data[key] = float(value)
        elif not _type_ok(value, hints[key]):
            raise FusekitError(f"{source}: key {key!r} is {value!r}, expected {_type_name(hints[key])}")
    return cls(**data)


def load_recipe(path: Path, cls: type):
    if not path.is_file():
        raise FusekitError(f"recipe {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise FusekitError(f"recipe {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    return from_mapping(cls, data, str(path))


def with_overrides(config, overrides: dict):
    """A copy of `config` with every non-None override applied (CLI flags win over the recipe)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return from_mapping(type(config), {**dataclasses.asdict(config), **changes}, "command line")


def to_yaml(config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
