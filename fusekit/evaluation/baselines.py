"""Baselines beside every adapter: what the checkpoint scores with no adapter at all.

* `majority`: the most frequent training label (classification) or the mean training label (regression; its
  correlations are undefined and read 0): the floor a task's metric starts from.
* `zero_shot`: a generative model (text objective) asked the task's prompt and scored by its answer words, for
  every task; on an encoder, sentence-pair regression (STS-B) scored by the cosine of the two sentences' pooled
  embeddings (the bi-encoder head before any training: 5 · cos(u, v)), and no other task.
* `head_only` (encoders; a generative model has no head): the frozen checkpoint with only the task head trained,
  a linear probe, on the adapter's training examples with the same head. The head's inputs are computed once (a
  hook on the head module) and cached, so the probe costs one forward pass over the data, whatever the number of
  epochs.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusekit.artifacts.atomic import atomic_write_json
from fusekit.artifacts.output import check_output_file
from fusekit.config import TrainConfig
from fusekit.data.loading import EncodedSplit, Split, load_split, make_loader
from fusekit.data.tasks import TaskSpec, get_task
from fusekit.errors import FusekitError
from fusekit.evaluation.loop import evaluate, task_loss
from fusekit.evaluation.metrics import compute_metrics, predictions
from fusekit.models.adapters import AdapterSpec, add_lora
from fusekit.models.base import BaseModel, load_base_model, resolve_device
from fusekit.models.defaults import resolve_defaults
from fusekit.progress import console

PROBE_EPOCHS = 20  # passes over the cached head inputs: a linear probe converges long before this
PROBE_LR = 1e-3


def run_baselines(cfg: TrainConfig, path: Path) -> dict:
    """Every baseline of `cfg`'s task on its training subset and dev split; written to `path` (JSON)."""
    cfg, task = resolve_defaults(cfg).config, get_task(cfg.task)
    check_output_file(path, [cfg.data, cfg.model])  # before any work
    train = load_split(task, "train", cfg.data).training_subset(cfg.max_train, cfg.seed, cfg.subset_from)
    dev = load_split(task, "validation", cfg.data).capped(cfg.max_eval, cfg.seed)
    torch.manual_seed(cfg.seed)
    base = load_base_model(cfg.model, task, cfg.pooling, cfg.pair_encoding, cfg.objective)
    result = {"task": task.name, "examples": len(dev), "train_examples": len(train), "head": base.head.meta(),
              "settings": recorded_settings(cfg), "majority": majority(task, train, dev)}
    if base.head.text:
        result |= {"zero_shot": prompted(base, task, dev, cfg), "head_only": None}
    else:
        started = time.perf_counter()
        probe = head_only(base, task, train, dev, cfg.max_length, cfg.batch_size, cfg.seed,
                          lr=cfg.head_lr)  # resolved: an encoder's defaults always give its head a step
        result |= {"zero_shot": zero_shot(cfg.model, task, dev, cfg.pooling, cfg.max_length, cfg.eval_batch_size),
                   "head_only": {**probe, "seconds": time.perf_counter() - started, "epochs": PROBE_EPOCHS}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    console.print(f"baselines {task.name}: " + " · ".join(
        f"{name} {result[key]['score']:.4f}" for name, key in (("majority", "majority"), ("head-only", "head_only"),
                                                               ("zero-shot", "zero_shot")) if result[key]))
    return result


def recorded_settings(cfg: TrainConfig) -> dict:
    """The resolved settings the baselines were computed with (the output folder aside): a study reuses a finished
    baseline only while its recipe still asks for these."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}


def prompted(base: BaseModel, task: TaskSpec, dev: Split, cfg: TrainConfig) -> dict[str, float]:
    """The generative model as it is, asked the task's prompt (a LoRA at B = 0 computes exactly the base)."""
    model = add_lora(base, AdapterSpec()).to(resolve_device(cfg.device))
    return evaluate(model, base.encode(dev, cfg.max_length), task, resolve_device(cfg.device), cfg.eval_batch_size,
                    progress=f"zero-shot {task.name}", precision=cfg.precision)


def majority(task: TaskSpec, train: Split, dev: Split) -> dict[str, float]:
    if task.is_regression:
        guess: float = float(np.mean(train.labels))
    else:
        guess = Counter(train.labels).most_common(1)[0][0]
    return compute_metrics(task, dev.labels, [guess] * len(dev))


def zero_shot(model: str | None, task: TaskSpec, dev: Split, pooling: str, max_length: int,
              batch_size: int) -> dict[str, float] | None:
    """The untrained bi-encoder's cosine on sentence-pair regression; None for the other tasks."""
    if not task.is_regression or len(task.text_columns) != 2:
        return None
    base = load_base_model(model, task, pooling, "bi")
    data = EncodedSplit(dev, base.tokenizer, max_length, "bi")
    outputs, labels = _head_inputs(base, data, batch_size)
    head = _head(base)
    with torch.inference_mode():
        logits = torch.cat([head(*x) for x in outputs]).float().numpy()
    return compute_metrics(task, np.concatenate(labels), predictions(task, logits))


def head_only(base: BaseModel, task: TaskSpec, train: Split, dev: Split, max_length: int, batch_size: int,
              seed: int, lr: float = PROBE_LR, epochs: int = PROBE_EPOCHS) -> dict[str, float]:
    """Train `base`'s fresh head alone on cached head inputs, score it on `dev`."""
    head = fit_head(base, task, train, max_length, batch_size, seed, lr, epochs)
    dev_inputs, dev_labels = _head_inputs(base, EncodedSplit(dev, base.tokenizer, max_length,
                                                             base.head.pair_encoding), batch_size)
    with torch.inference_mode():
        logits = torch.cat([head(*x) for x in dev_inputs]).float().numpy()
    return compute_metrics(task, np.concatenate(dev_labels), predictions(task, logits))


def fit_head(base: BaseModel, task: TaskSpec, train: Split, max_length: int, batch_size: int, seed: int,
             lr: float = PROBE_LR, epochs: int = PROBE_EPOCHS) -> nn.Module:
    """Fit `base`'s head, in place, on the frozen model's features of `train` (a linear probe): the head-only
    baseline, and the first half of LP-FT (`head_init: probe`), which then finetunes from it."""
    train_inputs, train_labels = _head_inputs(base, EncodedSplit(train, base.tokenizer, max_length,
                                                                 base.head.pair_encoding), batch_size)
    head = _head(base)
    head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    order = list(range(len(train_inputs)))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    for _ in range(epochs):
        rng.shuffle(order)
        for i in order:
            loss = task_loss(task, head(*train_inputs[i]), {"labels": torch.as_tensor(train_labels[i])})
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    head.eval()
    return head


def _head(base: BaseModel) -> nn.Module:
    if len(base.head_modules) != 1:
        raise FusekitError(f"head-only baseline: expected one head module, found {base.head_modules}")
    return base.model.get_submodule(base.head_modules[0])


def _head_inputs(base: BaseModel, data: EncodedSplit, batch_size: int) -> tuple[list[tuple], list[np.ndarray]]:
    """The head module's inputs on every batch of `data` (frozen model, eval mode), and the batches' labels."""
    cached: list[tuple] = []
    hook = _head(base).register_forward_pre_hook(lambda module, args: cached.append(tuple(a.detach() for a in args)))
    labels = []
    base.model.eval()
    try:
        with torch.inference_mode():
            for batch in make_loader(data, batch_size, shuffle=False):
                labels.append(batch.pop("labels").numpy())
                base.model(**batch)
    finally:
        hook.remove()
    return [tuple(a.clone() for a in x) for x in cached], labels
