"""Typed run configurations, validated from YAML recipes before any work starts.

Recipes are data: a YAML mapping whose keys are the dataclass fields; CLI flags override keys of the same name.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from fusekit.data.tasks import DEFAULT_HUB_DATASET
from fusekit.errors import FusekitError


def setting(default, help: str):
    """A config field with its help text (peft's style), which the CLI shows as the flag's help."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """One adapter finetuned on one task (`fusekit train`)."""

    task: str = setting("sst2", "GLUE task: cola sst2 mrpc qqp stsb mnli qnli rte wnli")
    adapter: str = setting("lora", "lora or l-lora")
    model: str | None = setting(None, "model folder or hub id (default: the embedded all-MiniLM-L6-v2)")
    data: str = setting(DEFAULT_HUB_DATASET, "GLUE-layout folder or hub dataset id")
    out: str | None = setting(None, "run folder (default runs/<task>-<adapter>)")
    rank: int = setting(8, "LoRA rank r")
    alpha: float = setting(16.0, "LoRA alpha (scale s = alpha / r)")
    dropout: float = setting(0.0, "LoRA dropout")
    target_modules: list[str] | None = setting(None, "comma-separated module names to adapt (default: the model's)")
    init_seed: int = setting(0, "seed of φ0, shared by tasks to be merged")
    lora_init: str = setting("default", "default (B0 = 0) or nonzero (random B0, W0 compensated)")
    linearize: str | None = setting(None, "L-LoRA scope: module (default for l-lora) or network")
    pooling: str = setting("auto", "how a sentence becomes one vector: auto (the checkpoint's own, from a "
                                   "sentence-transformers 1_Pooling/config.json; else cls), cls, mean or max")
    pair_encoding: str = setting("cross", "sentence pairs: cross (one input) or bi (each sentence apart; a "
                                          "Sentence-BERT head over u, v, |u-v|, u*v, or a scaled cosine for STS-B)")
    lr: float = setting(5e-4, "peak learning rate of the adapter (AdamW, linear decay)")
    head_lr: float | None = setting(None, "peak learning rate of the task head (default: lr)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_ratio: float = setting(0.06, "fraction of the steps spent warming the learning rate up")
    max_grad_norm: float = setting(1.0, "gradient-norm clipping (0: none)")
    epochs: int = setting(3, "passes over the training examples")
    batch_size: int = setting(32, "training examples per step")
    eval_batch_size: int = setting(128, "examples per evaluation batch")
    max_length: int = setting(128, "tokens per example (truncation)")
    max_train: int | None = setting(None, "cap on training examples (seeded subset)")
    max_eval: int | None = setting(None, "cap on validation examples")
    eval_on: str = setting("dev", "what the run is scored on: dev, or held-out (training examples outside the "
                                  "max_train subset, what fusekit tune scores; dev is then never read)")
    held_out_examples: int = setting(500, "held-out training examples scored when eval_on is held-out")
    seed: int = setting(0, "seed of data order, dropout and subsets")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N")
    checkpoint_every: int = setting(0, "steps between checkpoints beside the output folder (0: none); a rerun "
                                       "resumes from the last one")

    def output_dir(self) -> Path:
        return Path(self.out or f"runs/{self.task}-{self.adapter}")


@dataclass
class JointConfig(TrainConfig):
    """One adapter trained on several tasks at once, one head per task (`fusekit joint`).

    `task` is unused; each step draws one batch per task, of `batch_size` · K · p_i examples for task i, with
    p_i ∝ n_i^T (temperature), ∝ n_i (proportional) or uniform.
    """

    out: str | None = setting(None, "output folder (default runs/joint-<balancer>)")
    max_grad_norm: float = setting(1.0, "clipping of the combined gradient's norm (0: none)")
    batch_size: int = setting(32, "examples per task per step (before sampling shares)")
    max_train: int | None = setting(None, "cap on training examples per task")
    tasks: str = setting("sst2,rte,mrpc,cola,stsb", "comma-separated GLUE tasks")
    balancer: str = setting("uniform", "uniform coba init-norm prior-norm realtime power-mean uncertainty gradnorm "
                                       "grad-normalize pcgrad famo")
    sampling: str = setting("temperature", "temperature, proportional or uniform")
    temperature: float = setting(0.5, "sampling temperature T (p_i ∝ n_i^T)")
    gamma: float = setting(0.5, "power-mean exponent γ")
    gradnorm_alpha: float = setting(1.5, "GradNorm: asymmetry α")
    coba_interval: int | None = setting(None, "CoBa: optimizer steps between validations of the fixed held-out "
                                              "sample (default: 1/100 of the run)")
    coba_warmup: int | None = setting(None, "CoBa: steps of uniform weights (default: 10% of the run)")
    coba_window: int | None = setting(None, "CoBa: points in each slope fit (default: a fifth of the "
                                            "validations, at least 5)")
    famo_lr: float = setting(0.025, "FAMO: Adam learning rate of the task logits ξ")
    famo_gamma: float = setting(0.001, "FAMO: weight decay γ of ξ (the paper's regulariser, which pulls z toward "
                                       "uniform)")
    validation_examples: int = setting(200, "CoBa's fixed held-out sample per task, carved from training "
                                            "examples the run does not use")
    references: list[str] | None = setting(None, "individual run folders, one per task, for normalized scores")

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
