"""Typed run configurations, validated from YAML recipes before any work starts.

Recipes are data: a YAML mapping whose keys are the dataclass fields; CLI flags override keys of the same name.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import re
import reprlib
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from fusekit.data.tasks import DEFAULT_HUB_DATASET
from fusekit.errors import FusekitError


@dataclass(frozen=True)
class Allowed:
    """What values a setting accepts beyond its type: bounds (open or closed) and named choices. Floats must be
    finite. `choices` may be a callable, so that a registry owned elsewhere stays the one list (read lazily)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    unique: bool = False  # a list without repeats (seeds, methods: a repeat would plan the same stage twice)
    path_safe: bool = False  # a name that becomes one folder name: no separators, no '..'

    def problem(self, value: object) -> str | None:
        """None when `value` is allowed, else what is expected ("a finite number > 0")."""
        if isinstance(value, list):
            if self.unique and len({repr(v) for v in value}) < len(value):
                return "a list without repeats"
            return next((p for p in map(self.problem, value) if p), None)
        if self.path_safe and isinstance(value, str) and not SAFE_NAME.fullmatch(value):
            return "a name of letters, digits, '.', '_' and '-' that does not start with '.' or '-'"
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return self.describe()
        if isinstance(value, (int, float)):
            below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
            return self.describe(isinstance(value, int)) if below or above else None
        if isinstance(value, str) and self.choices is not None:
            names = tuple(self.choices() if callable(self.choices) else self.choices)
            return None if value in names else f"one of {', '.join(names)}"
        return None

    def describe(self, integer: bool = False) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '≥'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '≤'} {self.high:g}")
        return ("an integer" if integer else "a finite number") + (" " + " and ".join(parts) if parts else "")


POSITIVE = Allowed(low=0, low_open=True)
AT_LEAST_ONE = Allowed(low=1)
NON_NEGATIVE = Allowed(low=0)
FRACTION = Allowed(low=0, high=1, high_open=True)  # [0, 1)
SEED = Allowed(low=0, high=2**32 - 1)  # what numpy's and torch's generators accept
PRECISIONS = ("auto", "fp32", "bf16")
SUBSET_SOURCES = ("examples", "sentences")
PRECISION_HELP = ("forward passes: auto (bf16 autocast on GPUs that support it, fp32 elsewhere), fp32, or bf16 "
                  "(autocast; weights and updates stay fp32; fast on CPUs with AMX, slower on others)")


SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def setting(default, help: str, allowed: Allowed | None = None):
    """A config field with its help text (peft's style), which the CLI shows as the flag's help, and what values
    it accepts, which every recipe, flag and stored config is checked against before any work starts."""
    metadata = {"help": help, "allowed": allowed}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def short(value: object, limit: int = 60) -> str:
    """A value's repr cut to `limit` characters, so that an error line stays one short line whatever the input."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = limit
    shortener.maxlist, shortener.maxdict, shortener.maxlevel = 6, 4, 2
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def registry(module: str, name: str) -> Callable[[], Iterable[str]]:
    """The names of a registry owned by `module`, read when a value is checked (not at import: no torch here)."""
    return lambda: importlib.import_module(module).__dict__[name]


@dataclass
class TrainConfig:
    """One adapter finetuned on one task (`fusekit train`). Settings left None (step sizes, epochs, batch sizes,
    max length, pair encoding, targets) take the task's and the model family's defaults when the run starts
    (fusekit.training.defaults)."""

    task: str = setting("sst2", "GLUE task: cola sst2 mrpc qqp stsb mnli qnli rte wnli",
                         Allowed(choices=registry("fusekit.data.tasks", "TASKS")))
    adapter: str = setting("lora", "lora or l-lora",
                           Allowed(choices=registry("fusekit.models.adapters", "ADAPTER_KINDS")))
    model: str | None = setting(None, "model folder, hub id or embedded model: all-MiniLM-L6-v2 (the default, an "
                                      "encoder) or smollm2-135m (SmolLM2-135M-Instruct, a causal LM)")
    data: str = setting(DEFAULT_HUB_DATASET, "GLUE-layout folder or hub dataset id")
    out: str | None = setting(None, "run folder (default runs/<task>-<adapter>)")
    rank: int = setting(8, "LoRA rank r", AT_LEAST_ONE)
    alpha: float = setting(16.0, "LoRA alpha (scale s = alpha / r)", POSITIVE)
    dropout: float = setting(0.0, "LoRA dropout", FRACTION)
    target_modules: list[str] | None = setting(None, "comma-separated module names to adapt")
    init_seed: int = setting(0, "seed of φ0, shared by tasks to be merged", SEED)
    lora_init: str = setting("default", "default (B0 = 0) or nonzero (random B0, W0 compensated)",
                              Allowed(choices=registry("fusekit.models.adapters", "LORA_INITS")))
    linearize: str | None = setting(None, "L-LoRA scope: module (default for l-lora) or network",
                                    Allowed(choices=registry("fusekit.models.adapters", "LINEARIZE_SCOPES")))
    network_backward: str = setting("lean", "L-LoRA network scope, how training takes the (same) gradient: lean "
                                            "(the plain network's backward at φ0 plus a jvp without a graph: "
                                            "1.05–1.3× LoRA's peak memory) or jvp (through the jvp: 1.5–2.4× the "
                                            "memory, one plain forward less per step)",
                                    Allowed(choices=("lean", "jvp")))
    objective: str = setting("auto", "what the model learns to output: text (it writes the task's answer word; "
                                     "the default for causal LMs and encoder-decoders) or head (a classifier head "
                                     "per task; the default for encoders)",
                             Allowed(choices=registry("fusekit.models.heads", "OBJECTIVES")))
    pooling: str = setting("auto", "how a sentence becomes one vector: auto (the checkpoint's own, from a "
                                   "sentence-transformers 1_Pooling/config.json; else cls), cls, mean or max",
                           Allowed(choices=registry("fusekit.models.heads", "POOLINGS")))
    pair_encoding: str | None = setting(None, "sentence pairs: cross (one input) or bi (each sentence apart; a "
                                          "Sentence-BERT head over u, v, |u-v|, u*v, or a scaled cosine for STS-B)",
                                 Allowed(choices=registry("fusekit.models.heads", "PAIR_ENCODINGS")))
    head_init: str | None = setting(None, "how a head starts: fresh (the model class's random init) or probe (first "
                                          "fitted on the frozen model's features, then finetuned with the adapter: "
                                          "LP-FT)", Allowed(choices=("fresh", "probe")))
    lr: float | None = setting(None, "peak learning rate of the adapter (AdamW, linear decay)", POSITIVE)
    head_lr: float | None = setting(None, "peak learning rate of the task head", POSITIVE)
    weight_decay: float = setting(0.0, "AdamW weight decay", NON_NEGATIVE)
    warmup_ratio: float = setting(0.06, "fraction of the steps spent warming the learning rate up", FRACTION)
    max_grad_norm: float = setting(1.0, "gradient-norm clipping (0: none)", NON_NEGATIVE)
    epochs: int | None = setting(None, "passes over the training examples", AT_LEAST_ONE)
    batch_size: int | None = setting(None, "training examples per step", AT_LEAST_ONE)
    eval_batch_size: int | None = setting(None, "examples per evaluation batch", AT_LEAST_ONE)
    max_length: int | None = setting(None, "tokens per example (truncation)", Allowed(low=4))
    max_train: int | None = setting(None, "cap on training examples (seeded subset)", AT_LEAST_ONE)
    subset_from: str | None = setting(None, "what a capped training subset is drawn from: examples (all of them) "
                                            "or sentences (SST-2, whose training examples are every phrase of "
                                            "parsed sentences: whole sentences first, phrases only beyond them; "
                                            "other tasks' examples are sentences already)",
                                      Allowed(choices=SUBSET_SOURCES))
    max_eval: int | None = setting(None, "cap on validation examples", AT_LEAST_ONE)
    eval_on: str = setting("dev", "what the run is scored on: dev, or held-out (training examples outside the "
                                  "max_train subset, what fusekit tune scores; dev is then never read)",
                                 Allowed(choices=("dev", "held-out")))
    held_out_examples: int = setting(500, "held-out training examples scored when eval_on is held-out",
                                     AT_LEAST_ONE)
    seed: int = setting(0, "seed of data order, dropout and subsets", SEED)
    device: str = setting("auto", "auto, cpu, cuda, cuda:N")
    precision: str = setting("auto", PRECISION_HELP, Allowed(choices=PRECISIONS))
    checkpoint_every: int = setting(0, "steps between checkpoints beside the output folder (0: none); a rerun "
                                       "resumes from the last one", NON_NEGATIVE)

    def output_dir(self) -> Path:
        return Path(self.out or f"runs/{self.task}-{self.adapter}")


@dataclass
class JointConfig(TrainConfig):
    """One adapter trained on several tasks at once, one head per task (`fusekit joint`).

    `task` is unused; each step draws one batch per task, of `batch_size` · K · p_i examples for task i, with
    p_i ∝ n_i^T (temperature), ∝ n_i (proportional) or uniform.
    """

    out: str | None = setting(None, "output folder (default runs/joint-<balancer>)")
    max_grad_norm: float = setting(1.0, "clipping of the combined gradient's norm (0: none)", NON_NEGATIVE)
    batch_size: int = setting(32, "examples per task per step (before sampling shares)", AT_LEAST_ONE)
    max_train: int | None = setting(None, "cap on training examples per task", AT_LEAST_ONE)
    tasks: str = setting("sst2,rte,mrpc,cola,stsb", "comma-separated GLUE tasks")
    balancer: str = setting("uniform", "uniform coba init-norm prior-norm realtime power-mean uncertainty gradnorm "
                                       "grad-normalize pcgrad famo",
                           Allowed(choices=registry("fusekit.training.balancers", "BALANCERS")))
    sampling: str = setting("temperature", "temperature, proportional or uniform",
                             Allowed(choices=registry("fusekit.training.joint", "SAMPLING")))
    temperature: float = setting(0.5, "sampling temperature T (p_i ∝ n_i^T)", NON_NEGATIVE)
    gamma: float = setting(0.5, "power-mean exponent γ", Allowed())
    gradnorm_alpha: float = setting(1.5, "GradNorm: asymmetry α", NON_NEGATIVE)
    coba_interval: int | None = setting(None, "CoBa: optimizer steps between validations of the fixed held-out "
                                              "sample (default: 1/100 of the run)", AT_LEAST_ONE)
    coba_warmup: int | None = setting(None, "CoBa: steps of uniform weights (default: 10% of the run)",
                                      NON_NEGATIVE)
    coba_window: int | None = setting(None, "CoBa: points in each slope fit (default: a fifth of the "
                                            "validations, at least 5)", Allowed(low=2))
    coba_acs_history: str = setting("window", "CoBa: slopes the absolute convergence score looks back over: "
                                              "window (the paper's last N) or all (since the warm-up)",
                                    Allowed(choices=("window", "all")))
    coba_loss_scale: str = setting("paper", "CoBa: paper (Σ ω_i L_i, Σ ω = 1) or uniform (K times that: the scale "
                                            "of uniform weighting)", Allowed(choices=("paper", "uniform")))
    coba_weighting: str = setting("paper", "CoBa: paper (ω = DF·RCS + (1 − DF)·ACS, as the paper writes it) or "
                                           "mftcoder (MFTCoder's code: softmax(K·ω), floored at 0.1/K)",
                                  Allowed(choices=registry("fusekit.training.balancers.coba", "WEIGHTINGS")))
    coba_slope_floor: float = setting(0.0, "CoBa: RCS divides by Σ|α| floored at this share of the largest Σ|α| so "
                                           "far (0: the paper; 0.1 keeps flat, noisy slopes from swinging the "
                                           "weights)", Allowed(low=0, high=1))
    famo_lr: float = setting(0.025, "FAMO: Adam learning rate of the task logits ξ", POSITIVE)
    famo_gamma: float = setting(0.001, "FAMO: weight decay γ of ξ (the paper's regulariser, which pulls z toward "
                                       "uniform)", NON_NEGATIVE)
    validation_examples: int = setting(200, "CoBa's fixed held-out sample per task, carved from training "
                                            "examples the run does not use", AT_LEAST_ONE)
    references: list[str] | None = setting(None, "individual run folders, one per task, for normalized scores")
    task_max_train: list[str] | None = setting(None, "per-task caps over max_train, as task=N (cola=4000): "
                                                     "the examples each task's own adapter trained on")

    def output_dir(self) -> Path:
        return Path(self.out or f"runs/joint-{self.balancer}")

    def task_caps(self) -> dict[str, int | None]:
        """Each task's cap on its training examples: its `task_max_train` entry, else `max_train`."""
        names = [t.strip() for t in self.tasks.split(",") if t.strip()]
        caps: dict[str, int | None] = dict.fromkeys(names, self.max_train)
        for item in self.task_max_train or []:
            name, _, number = item.partition("=")
            if name.strip() not in caps or not number.strip().isdigit() or int(number) < 1:
                raise FusekitError(f"task_max_train: {item!r} (expected task=N, N ≥ 1, for one of the tasks "
                                   f"{','.join(names)})")
            caps[name.strip()] = int(number)
        return caps


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


def _accepts_float_only(hint: object) -> bool:
    """A float setting (optional or not), into which an integer from YAML is converted (`lr: 1` → 1.0)."""
    kinds = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
    return float in kinds and int not in kinds


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
        if isinstance(value, int) and not isinstance(value, bool) and _accepts_float_only(hints[key]):
            data[key] = float(value)
        elif not _type_ok(value, hints[key]):
            raise FusekitError(f"{source}: key {key!r} is {short(value)}, expected {_type_name(hints[key])}")
    for f in fields(cls):
        allowed = f.metadata.get("allowed")
        problem = allowed.problem(data[f.name]) if allowed and f.name in data else None
        if problem:
            raise FusekitError(f"{source}: key {f.name!r} is {short(data[f.name])}, expected {problem}")
    return cls(**data)


def with_overrides(config, overrides: dict):
    """A copy of `config` with every non-None override applied (CLI flags win over the recipe)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return from_mapping(type(config), {**dataclasses.asdict(config), **changes}, "command line")


def to_yaml(config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
