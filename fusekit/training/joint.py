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
from dataclasses import asdict, replace
from pathlib import Path

import torch

from fusekit.artifacts.atomic import atomic_write_text
from fusekit.artifacts.layout import CONFIG
from fusekit.artifacts.merged_folder import write_multitask
from fusekit.artifacts.run_folder import adapter_spec, build_adapted_model, load_run, record_eval, vector_meta
from fusekit.artifacts.task_vector import TaskVector
from fusekit.config import JointConfig, to_yaml
from fusekit.data.loading import ResumableLoader, Split, load_split, make_loader
from fusekit.data.tasks import TaskSpec, get_task, parse_tasks
from fusekit.errors import FusekitError
from fusekit.evaluation.loop import autocast, evaluate, task_loss, to_device
from fusekit.models.base import load_base_model
from fusekit.models.defaults import resolve_defaults
from fusekit.models.heads import TaskHead
from fusekit.progress import console
from fusekit.training.balancers import RunFacts, make_balancer
from fusekit.training.flat_gradients import set_gradients, take_gradients
from fusekit.training.session import TrainingSession, seed_everything
from fusekit.training.train import evaluation_split

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


def scored_splits(cfg: JointConfig, train_splits: dict[str, Split]) -> dict[str, Split]:
    """What each task of a joint run is scored on: its dev split, or with `eval_on: held-out` its training examples
    outside its own cap (what a joint tune chooses on)."""
    caps = cfg.task_caps()
    return {name: evaluation_split(replace(cfg, max_train=caps[name]), split) for name, split in train_splits.items()}


def train_joint(cfg: JointConfig, overwrite: bool = False) -> dict[str, dict[str, float]]:
    """Train, evaluate on dev and write the joint folder; each task's dev metrics."""
    return JointTraining(cfg, overwrite).run()


class JointTraining:
    """`fusekit joint` in named steps, as torchtune writes a recipe: data, model and heads, balancer, loaders and
    optimizer are set up in that order (the RNG is reseeded where an uninterrupted run and a resumed one must
    agree), then the loop, the dev scores and the outputs."""

    def __init__(self, cfg: JointConfig, overwrite: bool):
        self.cfg, self.tasks = resolve_defaults(cfg).config, parse_tasks(cfg.tasks)
        cfg = self.cfg
        self.session = TrainingSession(cfg, "joint", overwrite)
        self.procs = self.session.procs
        self._check_references()
        self.device = self.session.setup_device()
        self._setup_data()
        seed_everything(cfg.seed)
        self._setup_model()
        self._setup_balancer()
        seed_everything(cfg.seed)
        self._setup_optimizer()

    def _check_references(self) -> None:
        references = self.cfg.references
        if not references:
            return
        if len(references) != len(self.tasks):
            raise FusekitError(f"references: {len(references)} run folders for {len(self.tasks)} tasks "
                               "(expected one per task, in task order)")
        for task, folder in zip(self.tasks, references):
            if get_task(load_run(Path(folder)).head_task).family != task.family:
                raise FusekitError(f"references: {folder} is not a run of {task.name} (expected task order)")

    def _setup_data(self) -> None:
        """Each task's training subset, its fixed held-out sample (CoBa's signal) and what it is scored on: its dev
        split, or with `eval_on: held-out` training examples outside its subset (a joint tune's points)."""
        cfg = self.cfg
        caps = cfg.task_caps()
        splits = {t.name: load_split(t, "train", cfg.data) for t in self.tasks}
        self.train = {n: s.training_subset(caps[n], cfg.seed, cfg.subset_from) for n, s in splits.items()}
        held = {n: s.held_out(caps[n], cfg.seed, cfg.subset_from).capped(cfg.validation_examples, cfg.seed)
                for n, s in splits.items()}
        self.held = {n: (h if len(h) else self.train[n].capped(cfg.validation_examples, cfg.seed))
                     for n, h in held.items()}
        self.scored_on = scored_splits(cfg, splits)

    def _setup_model(self) -> None:
        """One adapter; a head per task, each initialised as the model class initialises it (text: none)."""
        cfg, device = self.cfg, self.device
        if cfg.pair_encoding != "cross":
            raise FusekitError("joint training shares one forward among the tasks: pair_encoding must be cross")
        spec = adapter_spec(cfg)
        self.base = load_base_model(cfg.model, self.tasks[0], cfg.pooling, objective=cfg.objective)
        self.model = build_adapted_model(self.base, spec, network_backward=cfg.network_backward).to(device)
        self.heads = {}
        for i, task in enumerate(self.tasks):
            other = self.model if i == 0 or self.base.head.text else build_adapted_model(
                load_base_model(cfg.model, task, cfg.pooling, objective=cfg.objective), spec)
            self.heads[task.name] = {k: torch.nn.Parameter(v.to(device)) for k, v in other.head_state().items()}

    def _setup_balancer(self) -> None:
        """Each task's batch size from the sampling shares, the number of steps, and the loss balancer."""
        cfg, tasks = self.cfg, self.tasks
        shares = task_shares([len(self.train[t.name]) for t in tasks], cfg.sampling, cfg.temperature)
        self.sizes = [max(1, round(len(tasks) * cfg.batch_size * p)) for p in shares]
        self.total = math.ceil(cfg.epochs * sum(len(t) for t in self.train.values()) / sum(self.sizes))
        run = RunFacts(self.total, [prior_loss(self.train[t.name]) for t in tasks])
        self.balancer = make_balancer(cfg.balancer, len(tasks), cfg, run)
        self.balancer.across_processes = self.procs.sum

    def _setup_optimizer(self) -> None:
        """Loaders (one per task, resumable), AdamW over the adapter, the heads and the balancer's own weights."""
        cfg, model, session = self.cfg, self.model, self.session
        loaders = {t.name: ResumableLoader(make_loader(self.base.encode(self.train[t.name], cfg.max_length), b, True,
                                                       cfg.seed + i))
                   for i, (t, b) in enumerate(zip(self.tasks, self.sizes))}
        self.validation = {t.name: self.base.encode(self.held[t.name], cfg.max_length) for t in self.tasks}
        self.batches = {name: loader.forever() for name, loader in loaders.items()}
        self.shared = [p for k, p in model.adapter_params.items() if k not in model.frozen_keys()]
        self.head_params = [p for head in self.heads.values() for p in head.values()]
        # clipping acts on the combined gradient: tasks share one norm budget
        session.setup_optimizer(self.shared + self.balancer.parameters(), self.total,
                                clipped=self.shared + self.head_params, heads=self.head_params)
        session.track({**{f"adapter/{k}": p for k, p in model.adapter_params.items()},
                       **{f"head/{n}/{k}": p for n, head in self.heads.items() for k, p in head.items()}},
                      {f"train/{n}": x for n, x in loaders.items()}, self.balancer)
        session.announce(f"joint {','.join(t.name for t in self.tasks)} · {cfg.adapter} · balancer {cfg.balancer} · "
                         f"batch per task {self.sizes} · {self.total} steps on {self.device}")

    def run(self) -> dict[str, dict[str, float]]:
        session = self.session
        done = session.resume()
        with session.writing() as stage:
            if self.balancer.validation_interval and not session.resumed:
                start = self._validation_losses()  # ℓ_i(0), before training
                self.balancer.start(start)
                session.log.write({"step": 0, "validation_losses": start.tolist()})
            job = session.bar.add_task("joint", total=self.total, completed=done, status="")
            while session.step < self.total:
                self._step(job)
            results = self._evaluate()
            self._save(stage, results)
        console.print(f"wrote {session.out} · " + " ".join(f"{n}={m['score']:.4f}" for n, m in results.items()))
        return results

    def _step(self, job) -> None:
        """One optimizer step on a batch of every task, balanced; logged, and checkpointed when due."""
        session, balancer = self.session, self.balancer
        began = time.perf_counter()
        self.model.train()
        # each task's next batch: this process's rows of it and their weight in the global mean
        step_batches = [self.procs.shard(to_device(next(self.batches[t.name]), self.device)) for t in self.tasks]
        losses, weights = self._backward(step_batches)
        # gradients that flowed through the losses are per-process shares; balancer weights are not
        self.procs.sum_gradients(self.head_params + ([] if balancer.combines_shared_gradients else self.shared))
        step = session.optimizer_step()
        if balancer.needs_loss_after_step:  # FAMO: the same batches at the new weights, same mode, no grad
            with torch.no_grad():
                balancer.after_step(self._losses(step_batches).detach())
        del step_batches
        record = {"step": step, "losses": losses.tolist(), "weights": weights.tolist()}
        session.check_finite(record["losses"])
        if balancer.validation_interval and step % balancer.validation_interval == 0:
            val = self._validation_losses()
            balancer.observe(step, val)
            record["validation_losses"] = val.tolist()
        session.log.write({**record, "seconds": time.perf_counter() - began})
        session.bar.update(job, advance=1, status=f"loss {losses.sum().item():.4f}")
        if session.checkpoint_due():
            session.save_checkpoint()

    def _backward(self, step_batches: list[tuple[dict, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each task's forward and backward in turn, so that one task's activations are alive at a time, not K
        tasks'; the balancer turns the losses and their gradients on the shared weights into the step's gradient,
        and each task's head gradient is scaled by the task's weight. Returns the losses and the weights."""
        losses, grads = [], []
        for task, (batch, weight) in zip(self.tasks, step_batches):
            loss = self._loss(task, batch, weight)
            loss.backward()
            grads.append(take_gradients(self.shared))
            losses.append(loss.detach())
        losses = torch.stack(losses)
        gradient, weights = self.balancer.balance(losses, torch.stack(grads))
        set_gradients(self.shared, gradient)
        for task, weight in zip(self.tasks, weights.tolist()):
            for p in self.heads[task.name].values():
                if p.grad is not None:
                    p.grad.mul_(weight)
        return losses, weights

    def _loss(self, task: TaskSpec, batch: dict, weight: float | torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.cfg.precision):
            out = self.model.forward_with_head(batch, self.heads[task.name])
            loss = task_loss(task, out, batch, self.model.text)
        return self.procs.global_mean(loss, weight)

    def _losses(self, step_batches: list[tuple[dict, float]]) -> torch.Tensor:
        return torch.stack([self._loss(task, batch, weight)
                            for task, (batch, weight) in zip(self.tasks, step_batches)])

    def _validation_losses(self) -> torch.Tensor:
        """Each task's mean loss on its whole fixed held-out sample: it changes only when the model does."""
        return torch.tensor([evaluate(WithHead(self.model, self.heads[t.name]), self.validation[t.name], t,
                                      self.device, self.cfg.eval_batch_size, precision=self.cfg.precision)["loss"]
                             for t in self.tasks])

    def _evaluate(self) -> dict[str, dict[str, float]]:
        self.model.eval()
        results = {}
        for task in self.tasks:
            data = self.base.encode(self.scored_on[task.name], self.cfg.max_length)
            results[task.name] = evaluate(WithHead(self.model, self.heads[task.name]), data, task, self.device,
                                          self.cfg.eval_batch_size, precision=self.cfg.precision)
            self.session.log.write({"step": self.total, "task": task.name, "eval": results[task.name]})
        self.session.log.close()
        return results

    def _save(self, stage: Path, results: dict[str, dict[str, float]]) -> None:
        """The joint folder: the adapter as a task vector, every head, a PEFT folder per task, config, scores; each
        task's training examples named by count and fingerprint, so a comparison can show they are its adapter's."""
        cfg, model, base = self.cfg, self.model, self.base
        vector = TaskVector.from_weights(model.adapter_state(), model.init_state(),
                                         vector_meta(model, base, self.tasks), frozen=model.frozen_keys())
        heads = {n: TaskHead({k: v.detach().cpu() for k, v in h.items()}, base.head) for n, h in self.heads.items()}
        references = cfg.references or [None] * len(self.tasks)
        write_multitask(stage, vector, heads, cfg.model, {
            "method": "joint", "params": {"balancer": cfg.balancer, "sampling": cfg.sampling,
                                          "temperature": cfg.temperature},
            "inputs": [{"task": t.name, "run": ref, "max_length": cfg.max_length, "train_examples": len(subset),
                        "train_fingerprint": subset.fingerprint()}
                       for t, ref in zip(self.tasks, references) for subset in [self.train[t.name]]],
            "data": cfg.data, "max_length": cfg.max_length, "config": asdict(cfg),
        })
        atomic_write_text(stage / CONFIG, to_yaml(cfg))
        for name, metrics in results.items():
            record_eval(stage, name, metrics)


class WithHead(torch.nn.Module):
    """The shared model seen through one task's head, as `evaluate` expects a model."""

    def __init__(self, model, head: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.head, self.text = model, head, model.text

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.forward_with_head(batch, self.head)
