"""`fusekit train`: finetune one adapter and its task head on one task, then write a run folder.

With `checkpoint_every` a run saves checkpoints beside its output folder; rerun after a crash, it resumes from
the last one and ends with the weights and metrics an uninterrupted run would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fusekit.artifacts.run_folder import adapter_spec, build_adapted_model, record_eval, save_run
from fusekit.config import TrainConfig
from fusekit.data.loading import ResumableLoader, Split, load_split, make_loader
from fusekit.data.tasks import TaskSpec, get_task
from fusekit.errors import FusekitError
from fusekit.evaluation.baselines import fit_head
from fusekit.evaluation.loop import autocast, evaluate, task_loss, to_device
from fusekit.models.adapters import AdaptedModel
from fusekit.models.base import BaseModel, load_base_model
from fusekit.models.defaults import Resolved, describe_defaults, resolve_defaults
from fusekit.progress import console
from fusekit.training.session import TrainingSession, seed_everything


@dataclass
class TrainResult:
    metrics: dict[str, float]  # validation metrics after the last epoch
    seconds: float  # training time, evaluation excluded
    examples_per_second: float
    steps: int


def evaluation_split(cfg: TrainConfig, full_train: Split) -> Split:
    """The dev split (capped at `max_eval`), or with `eval_on: held-out` training examples outside the training
    subset: what `fusekit tune` scores, so that no setting is ever chosen on dev."""
    if cfg.eval_on == "dev":
        return load_split(full_train.task, "validation", cfg.data).capped(cfg.max_eval, cfg.seed)
    if cfg.eval_on != "held-out":
        raise FusekitError(f"eval_on {cfg.eval_on!r} is not one of dev, held-out")
    held = full_train.held_out(cfg.max_train, cfg.seed, cfg.subset_from).capped(cfg.held_out_examples, cfg.seed)
    if not len(held):
        why = full_train.why_none_held_out(cfg.max_train, cfg.subset_from)
        raise FusekitError(f"eval_on held-out: max_train {cfg.max_train} of {len(full_train)} leaves no training "
                           f"example unseen ({why}; expected a smaller max_train)")
    return held


def train(cfg: TrainConfig, overwrite: bool = False) -> TrainResult:
    """Finetune, score and write the run folder; settings `cfg` leaves None take the task's and model's defaults."""
    resolved = resolve_defaults(cfg)
    cfg, task = resolved.config, get_task(cfg.task)
    spec = adapter_spec(cfg)
    session = TrainingSession(cfg, "run", overwrite)
    procs, device = session.procs, session.setup_device()
    full_train = load_split(task, "train", cfg.data)
    train_split = full_train.training_subset(cfg.max_train, cfg.seed, cfg.subset_from)
    eval_split = evaluation_split(cfg, full_train)
    seed_everything(cfg.seed)
    base = _load_base(cfg, task, train_split)
    model = build_adapted_model(base, spec, network_backward=cfg.network_backward).to(device)
    seed_everything(cfg.seed)

    train_data, eval_data = base.encode(train_split, cfg.max_length), base.encode(eval_split, cfg.max_length)
    loader = ResumableLoader(make_loader(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed))
    params = model.trainable_parameters()
    session.setup_optimizer(model.trainable_adapter_parameters(), cfg.epochs * len(loader),
                            heads=list(model.head_params.values()))
    session.track({**{f"adapter/{k}": p for k, p in model.adapter_params.items()},
                   **{f"head/{k}": p for k, p in model.head_params.items()}}, {"train": loader})
    _announce(session, resolved, base, model, len(train_split), device)

    metrics = {}
    step, seconds = session.resume(), session.seconds  # in this order: resuming restores the seconds
    with session.writing() as stage:
        bar, log = session.bar, session.log
        job = bar.add_task(f"{task.name}", total=session.total, completed=step, status="")
        # a checkpoint is taken inside an epoch (its eval still to come); the loader skips the batches it took
        for epoch in range(max(step - 1, 0) // len(loader) + 1, cfg.epochs + 1):
            model.train()
            start = time.perf_counter()
            for batch in loader:
                batch, weight = procs.shard(to_device(batch, device))
                with autocast(device, cfg.precision):
                    loss = procs.global_mean(task_loss(task, model(batch), batch, model.text), weight)
                loss.backward()
                procs.sum_gradients(params)
                step = session.optimizer_step()
                value = loss.item()
                session.check_finite([value])
                log.write({"step": step, "epoch": epoch, "loss": value, "lr": session.scheduler.get_last_lr()[0]})
                bar.update(job, advance=1, status=f"loss {value:.4f}")
                if session.checkpoint_due():
                    seconds += time.perf_counter() - start
                    session.save_checkpoint(seconds)
                    start = time.perf_counter()
            seconds += time.perf_counter() - start
            metrics = evaluate(model, eval_data, task, device, cfg.eval_batch_size, precision=cfg.precision)
            log.write({"step": step, "epoch": epoch, "eval": metrics})
            bar.update(job, status=f"{task.name} score {metrics['score']:.4f}")
        throughput = cfg.epochs * len(train_data) / max(seconds, 1e-9)
        log.write({"step": step, "train_seconds": seconds, "examples_per_second": throughput})
        log.close()
        save_run(stage, cfg, base, model, task)
        record_eval(stage, task.name, metrics)
    console.print(f"wrote {session.out} · {task.name} " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                                  if k in (*task.metrics, "score")))
    return TrainResult(metrics, seconds, throughput, step)


def _load_base(cfg: TrainConfig, task: TaskSpec, train_split: Split) -> BaseModel:
    """The base model for the task, its head fitted first on the frozen features with `head_init: probe` (LP-FT:
    linear probing, then finetuning, Kumar et al. 2022: the adapter starts under a head that already reads the
    features, instead of being pulled by a random one)."""
    base = load_base_model(cfg.model, task, cfg.pooling, cfg.pair_encoding, cfg.objective)
    if cfg.head_init == "probe" and not base.head.text:
        fit_head(base, task, train_split, cfg.max_length, cfg.eval_batch_size, cfg.seed, cfg.head_lr)
    return base


def _announce(session: TrainingSession, resolved: Resolved, base: BaseModel, model: AdaptedModel, examples: int,
              device) -> None:
    """What is about to be trained, how the task reads the model, and which settings came from defaults."""
    cfg = resolved.config
    reads = "text answers" if base.head.text else f"{base.head.pooling} pooling" + (
        " · bi-encoder" if base.head.pair_encoding == "bi" else "")
    session.announce(f"train {cfg.task} · {cfg.adapter} r={cfg.rank} · {reads} · {examples} examples · "
                     f"{session.total} steps on {device}")
    if resolved.sources:
        console.print("defaults: " + describe_defaults(resolved))
    if model.frozen_keys():
        console.print(f"note: {len(model.frozen_keys())} lora_A weights are frozen: with lora_init=default (B0 = 0)"
                      " the linearized model gives them exactly zero gradient; --lora-init nonzero trains both")
