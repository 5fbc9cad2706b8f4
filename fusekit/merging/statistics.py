"""Per-task statistics for merges that look at data, from held-out training examples of each run's task (the
complement of its training subset), one example at a time so that no padding enters them.

- `gram_matrices` (RegMean): G = Xᵀ X of every adapted linear layer's inputs, X the token rows of the run's own
  finetuned model; labels unused. Memory: one in × in matrix per adapted layer.
- `fisher_diagonals` (Fisher merging): the diagonal empirical Fisher of every trained adapter parameter.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer

from fusekit.artifacts.run_folder import Run, model_for_run
from fusekit.data.loading import EncodedSplit
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.evaluation.loop import to_device
from fusekit.merging.search import held_out_split


def gram_matrices(run: Run, examples: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """layer name (as in the task vector's keys) → G = Xᵀ X (float64) of its inputs over the examples."""
    if run.vector.meta["kind"] != "lora":
        raise FusekitError(f"{run.folder}: RegMean needs the layers' inputs, which fusekit collects for LoRA runs "
                           "only (L-LoRA merges in its own parameter space)")
    task = get_task(run.head_task)
    base, model = model_for_run(run, task)
    model = model.to(device).eval()
    split = held_out_split(run, examples, seed)
    data = EncodedSplit(split, base.tokenizer, run.config.max_length, base.head.pair_encoding)
    grams: dict[str, torch.Tensor] = {}
    hooks = []

    def collect(name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            grams[name] = grams.get(name, 0) + (x.T @ x).cpu()
        return hook

    for name, module in model.peft_model.named_modules():
        if isinstance(module, LoraLayer):
            hooks.append(module.register_forward_hook(collect(name.replace(".default", ""))))
    try:
        with torch.inference_mode():
            for index in range(len(data)):
                model(to_device(data.collate([data[index]]), device))
    finally:
        for hook in hooks:
            hook.remove()
    return grams


def fisher_diagonals(run: Run, examples: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each trained adapter parameter's diagonal empirical Fisher, E_x[(∂ log p(y|x) / ∂θ)²], on held-out training
    examples with their own labels (one example at a time): cross-entropy for classification, a unit-variance
    Gaussian (½ squared error) for regression, so that tasks of both kinds weigh on one scale. Taken in the
    adapter's own parameter space (LoRA's factors A and B, L-LoRA's φ), the space Fisher merging averages in."""
    task = get_task(run.head_task)
    base, model = model_for_run(run, task)
    model = model.to(device).eval()  # no dropout: the Fisher of the model as it predicts
    keys = [key for key in run.vector.delta if key in model.adapter_params]
    params = [model.adapter_params[key] for key in keys]
    for param in params:
        param.requires_grad_(True)
    split = held_out_split(run, examples, seed)
    data = EncodedSplit(split, base.tokenizer, run.config.max_length, base.head.pair_encoding)
    sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for index in range(len(data)):
        batch = to_device(data.collate([data[index]]), device)
        logits = model(batch).float()
        if task.is_regression:
            loss = 0.5 * (logits[:, 0] - batch["labels"].float()).pow(2).sum()
        else:
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        for total, grad in zip(sums, torch.autograd.grad(loss, params)):
            total += grad.double().pow(2)
    return {key: (total / len(data)).float().cpu() for key, total in zip(keys, sums)}
