"""Per-task statistics for merges that look at data, from held-out training examples of each run's task (the
complement of its training subset), one example at a time so that no padding enters them.

- `gram_matrices` (RegMean): G = Xᵀ X of every adapted linear layer's inputs, X the token rows of the run's own
  finetuned model; labels unused. Memory: one in × in matrix per adapted layer.
- `fisher_diagonals` (Fisher merging): the diagonal empirical Fisher of every trained adapter parameter.
- `learn_coefficients` (AdaMerging): per-task, per-layer λ that minimise the entropy of the predictions on
  unlabeled inputs (labels never read).
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer

from fusekit.artifacts.run_folder import Run, model_for_run
from fusekit.data.loading import ResumableLoader, Split, make_loader
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.evaluation.loop import task_loss, to_device
from fusekit.merging.search import held_out_split
from fusekit.progress import progress_bar


def gram_matrices(run: Run, examples: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """layer name (as in the task vector's keys) → G = Xᵀ X (float64) of its inputs over the examples."""
    if run.vector.meta["kind"] != "lora":
        raise FusekitError(f"{run.folder}: RegMean needs the layers' inputs, which fusekit collects for LoRA runs "
                           "only (L-LoRA merges in its own parameter space)")
    task = get_task(run.head_task)
    base, model = model_for_run(run, task)
    model = model.to(device).eval()
    split = held_out_split(run, examples, seed)
    data = base.encode(split, run.config.max_length)
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
    data = base.encode(split, run.config.max_length)
    sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for index in range(len(data)):
        batch = to_device(data.collate([data[index]]), device)
        logits = model(batch).float()
        if model.text:  # the model's own likelihood of the answer it was trained to write
            loss = task_loss(task, logits, batch, text=True) * len(logits)
        elif task.is_regression:
            loss = 0.5 * (logits[:, 0] - batch["labels"].float()).pow(2).sum()
        else:
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        # a parameter the prediction never reaches (an adapted pooler under mean pooling) has Fisher 0
        for total, grad in zip(sums, torch.autograd.grad(loss, params, allow_unused=True)):
            if grad is not None:
                total += grad.double().pow(2)
    return {key: (total / len(data)).float().cpu() for key, total in zip(keys, sums)}


ADA_STEPS, ADA_LR, ADA_INIT, ADA_BATCH = 300, 1e-3, 0.3, 16  # the paper's lr and init; 100 steps moved λ ≤ 0.1
OWN_BATCHES = 8  # batches of each task's held-out inputs its own adapter's entropy is averaged over


def ada_objective(entropies: torch.Tensor, own: torch.Tensor | None, coefficients: torch.Tensor,
                  anchor: float) -> torch.Tensor:
    """What AdaMerging minimises: Σ_i H_i (the paper), or Σ_i H_i / H_i(own adapter) when `own` is given, so that a
    task whose own adapter is already unsure weighs as much as one whose adapter is confident; plus anchor ·
    mean((λ − λ_0)²), which keeps the coefficients near the task-arithmetic start λ_0 = ADA_INIT."""
    terms = entropies if own is None else entropies / own.clamp(min=1e-6)
    return terms.sum() + anchor * (coefficients - ADA_INIT).pow(2).mean()


def learn_coefficients(runs: list[Run], examples: int, device: torch.device, seed: int = 0,
                       steps: int | None = None, normalized: bool = False,
                       anchor: float = 0.0) -> dict[str, list[torch.Tensor]]:
    """AdaMerging's λ_{i,l}: Adam on `ada_objective` over the classification tasks' prediction entropies, each on
    its own unlabeled held-out training inputs (regression tasks have no predictive entropy and add nothing to the
    objective; their λ still moves with the others'). Returns tensor key → [λ_1, …, λ_K] of its layer, and logs
    the objective as it falls."""
    from torch.func import functional_call

    classified = _classified(runs)
    base, model = model_for_run(runs[classified[0]], get_task(runs[classified[0]].head_task))
    model = model.to(device).eval()
    init = {k: v.to(device) for k, v in runs[0].vector.init.items()}
    deltas = [{k: v.to(device) for k, v in run.vector.delta.items()} for run in runs]
    layers = sorted({key.rsplit(".lora_", 1)[0] for key in init})
    layer_of = {key: layers.index(key.rsplit(".lora_", 1)[0]) for key in init}
    coefficients = torch.full((len(runs), len(layers)), ADA_INIT, device=device, requires_grad=True)
    loaders = _unlabeled_batches(runs, classified, base, examples, seed)
    heads = {i: {k: v.to(device) for k, v in runs[i].head.weights.items()} for i in classified}
    names = {key: f"peft_model.{model.param_names[key]}" for key in init}

    def entropy(i: int, weights: torch.Tensor) -> torch.Tensor:
        phi = {key: init[key] + sum(weights[j, layer_of[key]] * deltas[j][key]
                                    for j in range(len(runs)) if key in deltas[j]) for key in init}
        saved, model.adapter_params = model.adapter_params, phi  # linearized forwards read φ from here
        try:
            replaced = {**{names[k]: v for k, v in phi.items()},
                        **{model.head_names[k]: v for k, v in heads[i].items()}}
            logits = functional_call(model, replaced, (to_device(next(loaders[i]), device),)).float()
        finally:
            model.adapter_params = saved
        probabilities = logits.softmax(dim=-1)
        return -(probabilities * probabilities.clamp(min=1e-12).log()).sum(dim=-1).mean()

    own = None
    if normalized:  # each task's own adapter alone: λ = 1 on its own vector and 0 on the others, in every layer
        alone = torch.eye(len(runs), device=device)[:, :, None].expand(-1, -1, len(layers))
        with torch.no_grad():
            own = torch.stack([torch.stack([entropy(i, alone[i]) for _ in range(OWN_BATCHES)]).mean()
                               for i in classified])
    _minimise(lambda: ada_objective(torch.stack([entropy(i, coefficients) for i in classified]), own, coefficients,
                                    anchor), coefficients, ADA_STEPS if steps is None else steps)
    learned = coefficients.detach().cpu()
    return {key: [learned[i, layer_of[key]] for i in range(len(runs))] for key in init}


def _classified(runs: list[Run]) -> list[int]:
    """The runs whose task has a predictive entropy (classification); one forward serves them all."""
    classified = [i for i, run in enumerate(runs) if not get_task(run.head_task).is_regression]
    if not classified:
        raise FusekitError("AdaMerging needs a classification task: it minimises the entropy of predictions")
    if len({runs[i].head.spec.pair_encoding for i in classified}) > 1:
        raise FusekitError("AdaMerging shares one forward among the tasks: their pair encodings must agree")
    return classified


def _unlabeled_batches(runs: list[Run], classified: list[int], base, examples: int, seed: int) -> dict:
    """Each classification run → endless shuffled batches of its held-out training inputs (labels never read)."""
    loaders = {}
    for i in classified:
        inputs = held_out_split(runs[i], examples, seed)
        unlabeled = Split(inputs.task, inputs.texts, [0] * len(inputs))
        data = base.encode(unlabeled, runs[i].config.max_length)
        loaders[i] = ResumableLoader(make_loader(data, ADA_BATCH, True, seed + i)).forever()
    return loaders


def _minimise(objective, coefficients: torch.Tensor, steps: int) -> None:
    """Adam on the coefficients, `steps` times, the objective shown as it falls."""
    optimizer = torch.optim.Adam([coefficients], lr=ADA_LR)
    with progress_bar() as bar:
        job = bar.add_task("adamerging", total=steps, status="")
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = objective()
            loss.backward()
            optimizer.step()
            bar.update(job, advance=1, status=f"objective {loss.item():.4f}")


COLLECT = {"gram": gram_matrices, "fisher": fisher_diagonals}


def run_statistics(run: Run, kind: str, examples: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """`gram` or `fisher` statistics of one run, computed once and cached beside it (`<run>.stats/`, sealed with
    sha256 like every folder fusekit writes), so that a grid of merges, or a study's subsets, reuse them."""
    from fusekit.artifacts.atomic import load_tensors, save_tensors
    from fusekit.artifacts.checksums import ChecksummedFolder, reseal
    from fusekit.artifacts.layout import statistics_dir
    from fusekit.artifacts.output import mark

    folder = statistics_dir(run.folder)
    name = f"{kind}-n{examples}-seed{seed}-{run.vector.meta.get('init_fingerprint', 'x')[:8]}.safetensors"
    if (folder / name).is_file():
        tensors, _ = load_tensors(ChecksummedFolder.open(folder).path(name))
        return tensors
    tensors = COLLECT[kind](run, examples, device, seed)
    folder.mkdir(exist_ok=True)
    if not any(folder.iterdir()):
        mark(folder, "statistics")
    save_tensors(folder / name, tensors, {"kind": kind, "examples": str(examples), "seed": str(seed)})
    reseal(folder, name, create=True)
    return tensors
