"""Defaults that learn: the settings a run leaves unset come from its task and its model family, not from one
value for every task and model.

A setting is resolved, first match wins, from: the flag or recipe key (anything not None), the task's default for
the model family (declared beside the task in fusekit.data.tasks, chosen by `fusekit tune` on held-out training
data: recipes/defaults-*.yaml), the family's default (below), then the config's own. A family is how a model
learns a task: `head` (an encoder with a classifier head per task) or `text` (a generative model that writes the
answer word). `resolve_defaults` returns the filled config and where each value came from, which `fusekit train
--dry-run` prints and every run announces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

from fusekit.config import JointConfig, TrainConfig
from fusekit.data.tasks import TASKS, get_task, parse_tasks

Config = TypeVar("Config", TrainConfig, JointConfig)

# Settings whose right value depends on the task and the model: None in TrainConfig means "resolve here".
DEFAULTED = ("lr", "head_lr", "head_init", "epochs", "batch_size", "eval_batch_size", "max_length",
             "pair_encoding", "target_modules", "subset_from")

# What an encoder with a head and a generative model each learn well with, before any task says otherwise.
MODEL_DEFAULTS: dict[str, dict[str, object]] = {
    "head": {"lr": 1e-3, "head_lr": 5e-3, "head_init": "fresh", "epochs": 3, "batch_size": 16, "eval_batch_size": 128,
             "max_length": 128, "pair_encoding": "cross", "subset_from": "examples"},
    "text": {"lr": 1e-3, "head_lr": None, "head_init": None, "epochs": 1, "batch_size": 16, "eval_batch_size": 64,
             "max_length": 256, "pair_encoding": "cross", "subset_from": "examples"},
}
# L-LoRA moves less per step than LoRA (its tangent model's gradient is the Jacobian at φ0 alone): a task's step
# size tuned for LoRA does not carry over, so L-LoRA's comes from a task's `<family>:l-lora` entry, else from here.
# Encoder: the encoder studies' held-out diagnosis (five times LoRA's, docs/results/minilm.md); generative: what
# the SmolLM2 seeds study's held-out tunes chose at the quick path's budget (3e-3 over 1e-2 on SST-2, MRPC, STS-B
# and RTE; CoLA learned nothing at either, docs/results/defaults.md).
ADAPTER_STEP = {("head", "l-lora"): 5e-3, ("text", "l-lora"): 3e-3}
STEP_KEYS = ("lr",)  # what is tuned per adapter kind; max length, pair encoding and the head's step are not

# Encoders whose attention and feed-forward layers bear BERT's names get LoRA on all of them (the README's
# studies); any other architecture keeps peft's own targets for it.
BERT_STYLE = frozenset({"bert", "roberta", "xlm-roberta", "electra", "camembert"})
BERT_TARGETS = ["query", "key", "value", "dense"]

FAMILY_NAMES = {"head": "encoder with a head", "text": "generative, text to text"}


@dataclass(frozen=True)
class Resolved:
    config: TrainConfig  # every DEFAULTED setting filled (head_lr stays None without a head, target_modules
    # None for peft's own targets)
    sources: dict[str, str]  # setting → where its value came from, for those this resolution filled


def model_defaults(family: str, model_type: str | None) -> dict[str, object]:
    targets = BERT_TARGETS if family == "head" and model_type in BERT_STYLE else None
    return {**MODEL_DEFAULTS[family], "target_modules": targets}


def resolve_defaults(cfg: Config) -> Resolved:
    """`cfg` with every DEFAULTED setting it leaves None taken from its task (a joint run: the family alone, with
    the longest of its tasks' max_length) or its model family."""
    from fusekit.models.base import model_kind  # torch, imported when a run resolves

    family, model_type = model_kind(cfg.model, cfg.objective)
    family_values = model_defaults(family, model_type)
    kind = f"{family}:{cfg.adapter}" if cfg.adapter != "lora" else family
    if (family, cfg.adapter) in ADAPTER_STEP:
        family_values["lr"] = ADAPTER_STEP[(family, cfg.adapter)]
    if isinstance(cfg, JointConfig):
        lengths = [t.defaults.get(family, {}).get("max_length") for t in parse_tasks(cfg.tasks)]
        task_values = {"max_length": max(v for v in lengths if v)} if all(lengths) else {}
        task_label = "longest of the tasks'"
    else:
        spec = get_task(cfg.task)
        task_values = {k: v for k, v in spec.defaults.get(family, {}).items()
                       if kind == family or k not in STEP_KEYS} | spec.defaults.get(kind, {})
        task_label = f"{cfg.task}'s"
    changes, sources = {}, {}
    for key in DEFAULTED:
        if getattr(cfg, key) is not None:
            continue
        if key in task_values:
            changes[key], sources[key] = task_values[key], f"task default ({task_label}, {kind})"
        else:
            adapter = f"; {cfg.adapter}" if key in STEP_KEYS and kind != family else ""
            changes[key], sources[key] = family_values[key], f"model default ({FAMILY_NAMES[family]}{adapter})"
    return Resolved(dataclasses.replace(cfg, **changes), sources)


def changed_settings(recorded: dict, cfg: Config) -> list[str]:
    """The settings a finished run recorded (its config.yaml, resolved) that differ from what `cfg` asks once its
    defaults are resolved: what decides whether the run may be reused (the checkpoint interval never matters)."""
    wanted = dataclasses.asdict(resolve_defaults(cfg).config)
    recorded = {"precision": "auto", "subset_from": "examples", **recorded}  # runs from before these settings
    return sorted(k for k in wanted if k in recorded and recorded[k] != wanted[k] and k != "checkpoint_every")


def describe_defaults(resolved: Resolved) -> str:
    """One line of the values this resolution filled, grouped by where they came from."""
    groups: dict[str, list[str]] = {}
    for key, source in resolved.sources.items():
        value = getattr(resolved.config, key)
        if value is None and key != "target_modules":
            continue  # a head setting of a model without a head
        shown = "peft's" if key == "target_modules" and value is None else _show(value)
        groups.setdefault(source, []).append(f"{key}={shown}")
    return " · ".join(f"{', '.join(items)} ({source})" for source, items in groups.items())


def default_help(key: str) -> str | None:
    """What `--help` says of a defaulted setting: each family's value and the tasks that differ from it."""
    if key not in DEFAULTED:
        return None
    parts = []
    for family, values in MODEL_DEFAULTS.items():
        if key == "target_modules":
            shown = f"{','.join(BERT_TARGETS)} on BERT-style encoders, else peft's" if family == "head" else "peft's"
        else:
            shown = "none" if values.get(key) is None else _show(values[key])
        special = [f"{task} {_show(spec.defaults[family][key])}" for task, spec in TASKS.items()
                   if key in spec.defaults.get(family, {}) and spec.defaults[family][key] != values.get(key)]
        adapters = [f"{adapter} {_show(step)}" for (fam, adapter), step in ADAPTER_STEP.items()
                    if fam == family and key in STEP_KEYS]
        parts.append(f"{family} {shown}" + (f" ({', '.join(special + adapters)})" if special or adapters else ""))
    return "default by model family and task: " + "; ".join(parts)


def _show(value: object) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)
