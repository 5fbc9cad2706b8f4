"""`fusekit joint`: one shared adapter trained on several tasks at once, the task losses balanced.

Each step draws one batch per task (so every balancer sees every task's loss every step); the sampling strategy
sets each task's share of the step's K·B examples: b_i = max(1, round(K·B·p_i)), p_i ∝ n_i^T (temperature),
∝ n_i (proportional) or 1/K (uniform). Heads are per task; the adapter, φ0 and the outputs are those of
`fusekit train` and `fusekit merge`, so `fusekit eval` scores a joint folder like a merged one. Checkpoints and
resuming work as in `fusekit train`, the balancer's state included.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from fusekit import __version__
from fusekit.artifacts.atomic import atomic_write_text
from fusekit.artifacts.layout import CONFIG
from fusekit.artifacts.merged_folder import write_multitask
from fusekit.artifacts.run_folder import adapter_spec, build_adapted_model, load_run, record_eval
from fusekit.artifacts.task_vector import TaskVector
from fusekit.config import JointConfig, to_yaml
from fusekit.data.loading import ResumableLoader, Split, load_split, make_loader
from fusekit.data.tasks import TaskSpec, get_task, parse_tasks
from fusekit.errors import FusekitError
from fusekit.evaluation.loop import autocast, evaluate, task_loss, to_device
from fusekit.models.base import load_base_model
from fusekit.models.heads import TaskHead
from fusekit.progress import console
from fusekit.training.balancers import make_balancer
from fusekit.training.session import TrainingSession, seed_everything

SAMPLING = ("temperature", "proportional", "uniform")


def task_shares(sizes: list[int], sampling: str, temperature: float) -> list[float]:
    if sampling not in SAMPLING:
        raise FusekitError(f"unknown sampling {sampling!r}: expected one of {', '.join(SAMPLING)}")
    power = {"temperature": temperature, "proportional": 1.0, "uniform": 0.0}[sampling]
    mass = [n ** power for n in sizes]
    return [m / sum(mass) for m in mass]


def prior_loss(split: Split) -> float:
    """Loss of predicting the label prior: its entropy (classification) or the label variance (regression)."""
    labels = torch.tensor(split.labels, dtype=torch.float32)
    if split.task.is_regression:
        return float(labels.var(unbiased=False))
    p = torch.bincount(labels.long(), minlength=split.task.num_labels).float() / len(labels)
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def train_joint(cfg: JointConfig, overwrite: bool = False) -> dict[str, dict[str, float]]:
    tasks = parse_tasks(cfg.tasks)
    spec = adapter_spec(cfg)
    session = TrainingSession(cfg, "joint", overwrite)
    procs = session.procs
    if cfg.references:
        if len(cfg.references) != len(tasks):
            raise FusekitError(f"references: {len(cfg.references)} run folders for {len(tasks)} tasks "
                               "(expected one per task, in task order)")
        for task, folder in zip(tasks, cfg.references):
            if get_task(load_run(Path(folder)).head_task).family != task.family:
                raise FusekitError(f"references: {folder} is not a run of {task.name} (expected task order)")
    device = session.setup_device()
    splits = {t.name: load_split(t, "train", cfg.data) for t in tasks}
    train = {n: s.capped(cfg.max_train, cfg.seed) for n, s in splits.items()}
    held = {n: s.held_out(cfg.max_train, cfg.seed).capped(cfg.validation_examples, cfg.seed)
            for n, s in splits.items()}
    held = {n: (h if len(h) else train[n].capped(cfg.validation_examples, cfg.seed)) for n, h in held.items()}
    dev = {t.name: load_split(t, "validation", cfg.data).capped(cfg.max_eval, cfg.seed) for t in tasks}

    seed_everything(cfg.seed)
    if cfg.pair_encoding != "cross":
        raise FusekitError("joint training shares one forward among the tasks: pair_encoding must be cross")
    base = load_base_model(cfg.model, tasks[0], cfg.pooling, objective=cfg.objective)
    model = build_adapted_model(base, spec).to(device)
    heads = {tasks[0].name: {k: torch.nn.Parameter(v.to(device)) for k, v in model.head_state().items()}}
    for task in tasks[1:]:  # each head initialised as the model class initialises it for that task (text: none)
        other = model if base.head.text else build_adapted_model(
            load_base_model(cfg.model, task, cfg.pooling, objective=cfg.objective), spec)
        heads[task.name] = {k: torch.nn.Parameter(v.to(device)) for k, v in other.head_state().items()}
    shares = task_shares([len(train[t.name]) for t in tasks], cfg.sampling, cfg.temperature)
    sizes = [max(1, round(len(tasks) * cfg.batch_size * p)) for p in shares]
    total = math.ceil(cfg.epochs * sum(len(t) for t in train.values()) / sum(sizes))
    options = {"priors": [prior_loss(train[t.name]) for t in tasks], "gamma": cfg.gamma, "alpha": cfg.gradnorm_alpha,
               "seed": cfg.seed, "total_steps": total, "coba_interval": cfg.coba_interval,
               "coba_warmup": cfg.coba_warmup, "coba_window": cfg.coba_window,
               "coba_acs_history": cfg.coba_acs_history, "coba_loss_scale": cfg.coba_loss_scale, "famo_lr": cfg.famo_lr,
               "famo_gamma": cfg.famo_gamma}
    balancer = make_balancer(cfg.balancer, len(tasks), options)
    balancer.across_processes = procs.sum
    seed_everything(cfg.seed)

    encoded = {t.name: base.encode(train[t.name], cfg.max_length) for t in tasks}
    loaders = {t.name: ResumableLoader(make_loader(encoded[t.name], b, True, cfg.seed + i))
               for i, (t, b) in enumerate(zip(tasks, sizes))}
    validation = {t.name: base.encode(held[t.name], cfg.max_length) for t in tasks}
    batches = {name: loader.forever() for name, loader in loaders.items()}
    shared = [p for k, p in model.adapter_params.items() if k not in model.frozen_keys()]
    head_params = [p for head in heads.values() for p in head.values()]
    # clipping acts on the combined gradient: tasks share one norm budget
    session.setup_optimizer(shared + balancer.parameters(), total, clipped=shared + head_params, heads=head_params)
    session.track({**{f"adapter/{k}": p for k, p in model.adapter_params.items()},
                   **{f"head/{n}/{k}": p for n, head in heads.items() for k, p in head.items()}},
                  {f"train/{n}": x for n, x in loaders.items()}, balancer)
    session.announce(f"joint {','.join(t.name for t in tasks)} · {cfg.adapter} · balancer {cfg.balancer} · "
                     f"batch per task {sizes} · {total} steps on {device}")

    def draw(batch_of: dict, tasks: list[TaskSpec]) -> list[tuple[dict, float]]:
        """Each task's next batch: this process's rows of it and their weight in the global mean."""
        return [procs.shard(to_device(next(batch_of[task.name]), device)) for task in tasks]

    def losses_of(step_batches: list[tuple[dict, float]], tasks: list[TaskSpec]) -> torch.Tensor:
        values = []
        for task, (batch, weight) in zip(tasks, step_batches):
            with autocast(device):
                loss = task_loss(task, model.forward_with_head(batch, heads[task.name]), batch, model.text)
            values.append(procs.global_mean(loss, weight))
        return torch.stack(values)

    def validation_losses() -> torch.Tensor:
        """Each task's mean loss on its whole fixed held-out sample: it changes only when the model does."""
        return torch.tensor([evaluate(WithHead(model, heads[t.name]), validation[t.name], t, device,
                                      cfg.eval_batch_size)["loss"] for t in tasks])

    done = session.resume()
    with session.writing() as stage:
        bar, log = session.bar, session.log
        if balancer.validation_interval and not session.resumed:
            start = validation_losses()  # ℓ_i(0), before training
            balancer.start(start)
            log.write({"step": 0, "validation_losses": start.tolist()})
        job = bar.add_task("joint", total=total, completed=done, status="")
        while session.step < total:
            began = time.perf_counter()
            model.train()
            step_batches = draw(batches, tasks)
            losses = losses_of(step_batches, tasks)
            weights = balancer.backward(losses, shared)
            # gradients that flowed through the losses are per-process shares; balancer weights are not
            procs.sum_gradients(head_params + ([] if balancer.combines_shared_gradients else shared))
            step = session.optimizer_step()
            if balancer.needs_loss_after_step:  # FAMO: the same batches at the new weights, same mode, no grad
                with torch.no_grad():
                    balancer.after_step(losses_of(step_batches, tasks).detach())
            del step_batches
            record = {"step": step, "losses": losses.detach().tolist(), "weights": weights.tolist()}
            session.check_finite(record["losses"])
            if balancer.validation_interval and step % balancer.validation_interval == 0:
                val = validation_losses()
                balancer.observe(step, val)
                record["validation_losses"] = val.tolist()
            log.write({**record, "seconds": time.perf_counter() - began})
            bar.update(job, advance=1, status=f"loss {losses.sum().item():.4f}")
            if session.checkpoint_due():
                session.save_checkpoint()
        model.eval()
        results = {}
        for task in tasks:
            results[task.name] = evaluate(WithHead(model, heads[task.name]),
                                          base.encode(dev[task.name], cfg.max_length), task,
                                          device, cfg.eval_batch_size)
            log.write({"step": total, "task": task.name, "eval": results[task.name]})
        log.close()
        vector = TaskVector.from_weights(model.adapter_state(), model.init_state(), {
            **model.spec.meta(), "target_modules": model.target_modules(), "tasks": [t.name for t in tasks],
            "base_model": base.name, "base_fingerprint": base.fingerprint, "fusekit_version": __version__},
            frozen=model.frozen_keys())
        head_states = {n: TaskHead({k: v.detach().cpu() for k, v in h.items()}, base.head) for n, h in heads.items()}
        references = cfg.references or [None] * len(tasks)
        write_multitask(stage, vector, head_states, cfg.model, {
            "method": "joint", "params": {"balancer": cfg.balancer, "sampling": cfg.sampling,
                                          "temperature": cfg.temperature},
            "inputs": [{"task": t.name, "run": ref} for t, ref in zip(tasks, references)],
            "data": cfg.data, "max_length": cfg.max_length, "config": asdict(cfg),
        })
        atomic_write_text(stage / CONFIG, to_yaml(cfg))
        for name, metrics in results.items():
            record_eval(stage, name, metrics)
    console.print(f"wrote {session.out} · " + " ".join(f"{n}={m['score']:.4f}" for n, m in results.items()))
    return results


class WithHead(torch.nn.Module):
    """The shared model seen through one task's head, as `evaluate` expects a model."""

    def __init__(self, model, head: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.head, self.text = model, head, model.text

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.forward_with_head(batch, self.head)
