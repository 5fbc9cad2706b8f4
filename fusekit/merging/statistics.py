"""Per-layer input statistics of each run, for merges that look at data (RegMean).

The Gram matrix G = Xᵀ X of every adapted linear layer's inputs, X the token rows of the run's own finetuned model
on held-out training examples of its task (the complement of its training subset; labels unused), one example at
a time so that no padding token enters X. Memory: one in × in matrix per adapted layer.
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
