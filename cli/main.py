"""`fusekit` commands. No logic lives here: each command builds a config and calls fusekit."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fusekit.errors import FusekitError
from fusekit.merging.methods import DENSITY, DROP_RATE, LAMBDA

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-task adaptation of pretrained transformers by adapter fusion.")


def one_line_errors(command):
    """Turn a FusekitError into `error: <message>` on stderr and exit code 1 (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FusekitError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing was written", err=True)
            raise typer.Exit(130) from None

    return wrapper


Opt = typer.Option


@app.command()
@one_line_errors
def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe; flags override its keys")] = None,
    task: Annotated[Optional[str], Opt(help="GLUE task: cola sst2 mrpc qqp stsb mnli qnli rte wnli")] = None,
    adapter: Annotated[Optional[str], Opt(help="lora or l-lora")] = None,
    model: Annotated[Optional[str], Opt(help="model folder or hub id (default: all-MiniLM-L6-v2)")] = None,
    data: Annotated[Optional[str], Opt(help="GLUE-layout folder or hub dataset id")] = None,
    out: Annotated[Optional[str], Opt(help="run folder (default runs/<task>-<adapter>)")] = None,
    rank: Annotated[Optional[int], Opt(help="LoRA rank r")] = None,
    alpha: Annotated[Optional[float], Opt(help="LoRA alpha (scale s = alpha / r)")] = None,
    dropout: Annotated[Optional[float], Opt(help="LoRA dropout")] = None,
    target_modules: Annotated[Optional[str], Opt(help="comma-separated module names to adapt")] = None,
    init_seed: Annotated[Optional[int], Opt(help="seed of φ0, shared by tasks to be merged")] = None,
    lora_init: Annotated[Optional[str], Opt(help="default (B0 = 0) or nonzero (random B0, W0 compensated)")] = None,
    linearize: Annotated[Optional[str], Opt(help="L-LoRA scope: module or network")] = None,
    lr: Annotated[Optional[float], Opt(help="peak learning rate (AdamW, linear decay)")] = None,
    weight_decay: Annotated[Optional[float], Opt()] = None,
    warmup_ratio: Annotated[Optional[float], Opt()] = None,
    max_grad_norm: Annotated[Optional[float], Opt(help="gradient-norm clipping (0: none)")] = None,
    epochs: Annotated[Optional[int], Opt()] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    eval_batch_size: Annotated[Optional[int], Opt()] = None,
    max_length: Annotated[Optional[int], Opt(help="tokens per example (truncation)")] = None,
    max_train: Annotated[Optional[int], Opt(help="cap on training examples (seeded subset)")] = None,
    max_eval: Annotated[Optional[int], Opt(help="cap on validation examples")] = None,
    seed: Annotated[Optional[int], Opt()] = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda, cuda:N")] = None,
    checkpoint_every: Annotated[Optional[int], Opt(help="steps between checkpoints in <out>.checkpoint (0: none); "
                                                        "a rerun resumes from the last one")] = None,
    overwrite: Annotated[bool, Opt(help="replace an existing run folder (and discard its checkpoint)")] = False,
) -> None:
    """Finetune one adapter on one GLUE task.

    Example: fusekit train --task sst2 --adapter lora --data ../shared/glue --max-train 10000 --out runs/sst2-lora

    L-LoRA: fusekit train --task rte --adapter l-lora --linearize module --lora-init nonzero --data ../shared/glue
    """
    from fusekit.config import TrainConfig, load_recipe, with_overrides
    from fusekit.training.train import train as run_training

    base = load_recipe(recipe, TrainConfig) if recipe else TrainConfig()
    targets = [t.strip() for t in target_modules.split(",")] if target_modules else None
    overrides = dict(task=task, adapter=adapter, model=model, data=data, out=out, rank=rank, alpha=alpha,
                     dropout=dropout, target_modules=targets, init_seed=init_seed, lora_init=lora_init,
                     linearize=linearize, lr=lr, weight_decay=weight_decay,
                     warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm, epochs=epochs, batch_size=batch_size,
                     eval_batch_size=eval_batch_size, max_length=max_length, max_train=max_train,
                     max_eval=max_eval, seed=seed, device=device, checkpoint_every=checkpoint_every)
    run_training(with_overrides(base, overrides), overwrite=overwrite)


@app.command("eval")
@one_line_errors
def evaluate(
    runs: Annotated[Optional[list[Path]], typer.Argument(help="run folders to score")] = None,
    adapter: Annotated[Optional[list[Path]], Opt(help="run folder (repeatable; same as the arguments)")] = None,
    task: Annotated[Optional[str], Opt(help="comma-separated tasks (default: each run's own task)")] = None,
    data: Annotated[Optional[str], Opt(help="GLUE-layout folder or hub dataset id (default: the run's)")] = None,
    max_eval: Annotated[Optional[int], Opt(help="cap on validation examples (default: the full split)")] = None,
    batch_size: Annotated[int, Opt()] = 128,
    device: Annotated[str, Opt()] = "auto",
    nonlinear: Annotated[bool, Opt(help="score L-LoRA runs with the plain LoRA forward at φ (their PEFT export)")]
    = False,
    out: Annotated[Optional[Path], Opt(help="also write all results to this JSON file")] = None,
) -> None:
    """Score adapters on GLUE validation splits with each task's official metric.

    Example: fusekit eval --task sst2 --adapter runs/sst2-lora --data ../shared/glue
    """
    from fusekit.evaluation.eval import score_folders

    folders = [*(runs or []), *(adapter or [])]
    if not folders:
        raise FusekitError("no run folder given: expected fusekit eval RUN_DIR... or --adapter RUN_DIR")
    score_folders(folders, task, data, max_eval, batch_size, device, out, nonlinear)


def _floats(text: Optional[str], option: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FusekitError(f"{option} {text!r}: expected comma-separated numbers such as 0.1,0.3,0.5") from None


@app.command()
@one_line_errors
def merge(
    runs: Annotated[list[Path], typer.Argument(help="run folders (one per task) whose task vectors to fuse")],
    out: Annotated[Path, Opt(help="merged folder to write")],
    method: Annotated[str, Opt(help="task-arithmetic, average, ties, dare (+ task arithmetic), dare-ties")]
    = "task-arithmetic",
    lam: Annotated[str, Opt("--lambda", help=f"{LAMBDA.help}, or 'auto' to choose it on held-out training data")]
    = str(LAMBDA.default),
    lambdas: Annotated[Optional[str], Opt(help="λ grid for the search, e.g. 0.1,0.3,0.5 (implies a search)")] = None,
    density: Annotated[Optional[float], Opt(help=f"{DENSITY.help} (default {DENSITY.default})")] = None,
    densities: Annotated[Optional[str], Opt(help="TIES density grid for the search")] = None,
    drop_rate: Annotated[Optional[float], Opt(help=f"{DROP_RATE.help} (default {DROP_RATE.default})")] = None,
    drop_rates: Annotated[Optional[str], Opt(help="DARE drop-rate grid for the search")] = None,
    weights: Annotated[Optional[str], Opt(help="per-run weights, comma-separated (default uniform)")] = None,
    space: Annotated[str, Opt(help="LoRA: delta-w (exact B·A products) or factors (A and B apart)")] = "delta-w",
    rank: Annotated[Optional[int], Opt(help="delta-w: truncate the merged ΔW to this rank by SVD")] = None,
    val_examples: Annotated[int, Opt(help="held-out training examples per task for the search")] = 200,
    seed: Annotated[int, Opt(help="DARE drops and held-out sampling")] = 0,
    device: Annotated[str, Opt()] = "auto",
    overwrite: Annotated[bool, Opt(help="replace an existing merged folder")] = False,
) -> None:
    """Fuse task vectors into one multi-task adapter.

    Example: fusekit merge runs/sst2-lora runs/rte-lora runs/mrpc-lora --method ties --lambda auto --out merged/ties
    """
    from fusekit.merging.merge import fuse

    grid = {"lam": _floats(lambdas, "--lambdas"), "density": _floats(densities, "--densities"),
            "rate": _floats(drop_rates, "--drop-rates")}
    fixed = {"lam": None if lam == "auto" else _floats(lam, "--lambda")[0], "density": density, "rate": drop_rate}
    fuse(runs, out, method, fixed, grid, _floats(weights, "--weights"), space, rank, val_examples, seed, device,
         overwrite)


@app.command()
@one_line_errors
def joint(
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe (JointConfig keys); flags override")] = None,
    tasks: Annotated[Optional[str], Opt(help="comma-separated GLUE tasks")] = None,
    adapter: Annotated[Optional[str], Opt(help="lora or l-lora")] = None,
    balancer: Annotated[Optional[str], Opt(help="uniform coba init-norm prior-norm realtime power-mean "
                                                "uncertainty gradnorm grad-normalize pcgrad famo")] = None,
    sampling: Annotated[Optional[str], Opt(help="temperature, proportional or uniform")] = None,
    temperature: Annotated[Optional[float], Opt("--T", help="sampling temperature T (p_i ∝ n_i^T)")] = None,
    gamma: Annotated[Optional[float], Opt(help="power-mean exponent γ")] = None,
    coba_interval: Annotated[Optional[int], Opt(help="CoBa: optimizer steps between validation batches")] = None,
    coba_warmup: Annotated[Optional[int], Opt(help="CoBa: steps of uniform weights")] = None,
    coba_window: Annotated[Optional[int], Opt(help="CoBa: points in the slope fit")] = None,
    famo_lr: Annotated[Optional[float], Opt(help="FAMO: Adam learning rate of the task logits")] = None,
    famo_gamma: Annotated[Optional[float], Opt(help="FAMO: weight decay γ of the task logits")] = None,
    references: Annotated[Optional[str], Opt(help="individual run folders, one per task, for normalized scores")]
    = None,
    model: Annotated[Optional[str], Opt(help="model folder or hub id")] = None,
    data: Annotated[Optional[str], Opt(help="GLUE-layout folder or hub dataset id")] = None,
    out: Annotated[Optional[str], Opt(help="output folder (default runs/joint-<balancer>)")] = None,
    linearize: Annotated[Optional[str], Opt(help="L-LoRA scope: module or network")] = None,
    lora_init: Annotated[Optional[str], Opt(help="default or nonzero")] = None,
    rank: Annotated[Optional[int], Opt(help="LoRA rank r")] = None,
    alpha: Annotated[Optional[float], Opt(help="LoRA alpha")] = None,
    lr: Annotated[Optional[float], Opt()] = None,
    max_grad_norm: Annotated[Optional[float], Opt(help="clipping of the combined gradient's norm (0: none)")] = None,
    epochs: Annotated[Optional[int], Opt()] = None,
    batch_size: Annotated[Optional[int], Opt(help="examples per task per step (before sampling shares)")] = None,
    max_length: Annotated[Optional[int], Opt()] = None,
    max_train: Annotated[Optional[int], Opt(help="cap on training examples per task")] = None,
    max_eval: Annotated[Optional[int], Opt()] = None,
    seed: Annotated[Optional[int], Opt()] = None,
    device: Annotated[Optional[str], Opt()] = None,
    checkpoint_every: Annotated[Optional[int], Opt(help="steps between checkpoints in <out>.checkpoint (0: none); "
                                                        "a rerun resumes from the last one")] = None,
    overwrite: Annotated[bool, Opt(help="replace an existing output folder (and discard its checkpoint)")] = False,
) -> None:
    """Train one adapter on several tasks with a loss balancer.

    Example: fusekit joint --tasks sst2,rte,mrpc,cola,stsb --balancer coba --data ../shared/glue
    """
    from fusekit.config import JointConfig, load_recipe, with_overrides
    from fusekit.training.joint import train_joint

    base = load_recipe(recipe, JointConfig) if recipe else JointConfig()
    refs = [r.strip() for r in references.split(",")] if references else None
    overrides = dict(tasks=tasks, adapter=adapter, balancer=balancer, sampling=sampling, temperature=temperature,
                     gamma=gamma, coba_interval=coba_interval, coba_warmup=coba_warmup, coba_window=coba_window,
                     famo_lr=famo_lr, famo_gamma=famo_gamma, references=refs, model=model, data=data, out=out,
                     linearize=linearize, lora_init=lora_init, rank=rank, alpha=alpha, lr=lr, max_grad_norm=max_grad_norm,
                     epochs=epochs,
                     batch_size=batch_size, max_length=max_length, max_train=max_train, max_eval=max_eval, seed=seed,
                     device=device, checkpoint_every=checkpoint_every)
    train_joint(with_overrides(base, overrides), overwrite=overwrite)


@app.command("run")
@one_line_errors
def run_recipe(
    recipe: Annotated[Path, typer.Argument(help="study recipe (YAML): tasks, adapters, merges, joint baselines")],
    only: Annotated[Optional[str], Opt(help="comma-separated stage-name prefixes or globs: train/,merge/lora-*")]
    = None,
    dry_run: Annotated[bool, Opt(help="validate the recipe and print the plan, run nothing")] = False,
) -> None:
    """Run a whole study; rerunning skips finished stages and resumes an interrupted training.

    Example: fusekit run recipes/quickstart.yaml && fusekit report runs/quickstart
    """
    from fusekit.study.run import describe, load_study, plan, run_study

    if dry_run:
        typer.echo(describe(plan(load_study(recipe), str(recipe))))
        return
    run_study(recipe, only)


@app.command()
@one_line_errors
def report(
    study: Annotated[Path, typer.Argument(help="study folder written by fusekit run")],
) -> None:
    """Write the study's markdown report: per-task, merged and joint tables, λ sweeps, balancer weights, stage costs.

    Example: fusekit report runs/glue-fusion
    """
    from fusekit.study.report import write_report

    typer.echo(f"wrote {write_report(study)}")


def main() -> None:
    app(sys.argv[1:])


if __name__ == "__main__":
    main()
