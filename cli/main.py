"""`fusekit` commands. No logic lives here: each command builds a config and calls fusekit."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import os
import signal
import sys
import threading
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from fusekit.artifacts.reading import load_recipe
from fusekit.config import PRECISION_HELP, PRECISIONS, JointConfig, TrainConfig, from_mapping, with_overrides
from fusekit.errors import FusekitError
from fusekit.merging.config import MergeConfig
from fusekit.models.defaults import default_help

DEBUG = "FUSEKIT_DEBUG"  # set to 1 (or pass --debug) to see the traceback of an unexpected error
_debug = False  # --debug of the command being run: set by every command, so it never leaks into the next one


def debugging() -> bool:
    return _debug or os.environ.get(DEBUG) == "1"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# click's error base class, wherever this typer takes click from (its own vendored copy in recent releases)
CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler's stop, a closed terminal), handled as Ctrl-C: staged outputs are deleted,
    locks released, one line printed; the exit code is 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.code = 128 + signum


@contextlib.contextmanager
def signals_interrupt():
    """While a command runs, SIGTERM and SIGHUP raise `Terminated` in the main thread (their default would end
    the process at once, leaving `<out>.tmp-*` folders and `<out>.lock` files behind)."""
    def interrupt(signum, frame):
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {name: signal.signal(getattr(signal, name), interrupt) for name in names}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


class OneLineErrors(TyperGroup):
    """Usage errors (a flag that does not parse, an unknown option) as one `error:` line and exit code 1, like
    every other error, instead of click's framed usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            with signals_interrupt():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except CLICK_ERROR as error:
            typer.echo(f"error: {_one_line(error.format_message())}", err=True)
            code = 1
        except typer.Abort:
            typer.echo("interrupted", err=True)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-task adaptation of pretrained transformers by adapter fusion.")


def one_line_errors(command):
    """Every failure as one `error:` line on stderr and exit code 1, never a traceback: a FusekitError says what
    was wrong with the input; a file system error names the file; anything else says what fusekit was doing
    (`--debug` or FUSEKIT_DEBUG=1 re-raises it with its traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        doing = f"fusekit {command.__name__.replace('_', ' ').removesuffix(' recipe')}"
        try:
            return command(*args, **kwargs)
        except FusekitError as error:
            message = str(error)
        except KeyboardInterrupt as interrupt:
            typer.echo("interrupted: nothing was written", err=True)
            raise typer.Exit(getattr(interrupt, "code", 130)) from None
        except OSError as error:
            if debugging():
                raise
            where = f" {error.filename}" if error.filename else ""
            message = f"{doing} could not use{where}: {error.strerror or error}"
        except Exception as error:  # noqa: BLE001 — the last line of defence between a bug and the user
            if debugging():
                raise
            message = (f"{doing} failed unexpectedly: {type(error).__name__}: {error} (rerun with --debug for the "
                       "traceback, and please report it)")
        typer.echo(f"error: {_one_line(message)}", err=True)
        raise typer.Exit(1) from None

    return wrapper


Opt = typer.Option
DEVICE_HELP = "auto (a GPU when present), cpu, cuda or cuda:N"
JSON_HELP = "print the result as one JSON document on stdout (progress and tables stay on stderr)"


def _emit(result: object, as_json: bool) -> None:
    """The command's result on stdout as JSON, for scripts (`fusekit eval ... --json | jq`)."""
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fusekit {version('fusekit')}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[bool, Opt("--version", callback=_version, is_eager=True, help="print the version and exit")]
    = False,
    debug: Annotated[bool, Opt(help=f"show the traceback of an unexpected error (also {DEBUG}=1)")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="print only errors and results: no progress, no tables")]
    = False,
    verbose: Annotated[bool, Opt("--verbose", "-v", help="progress lines in logs every 5 s instead of 30 s, and "
                                                         "the libraries' warnings")] = False,
) -> None:
    """Multi-task adaptation of pretrained transformers by adapter fusion."""
    from fusekit.progress import set_verbosity

    global _debug
    _debug = debug
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose contradict each other")
    set_verbosity("quiet" if quiet else "verbose" if verbose else "normal")


def config_flags(cls: type, skip: tuple[str, ...] = (), names: dict[str, str] | None = None,
                 defaults: typing.Callable[[str], str | None] | None = None):
    """Give a command one flag per field of config dataclass `cls`, named after the field (or `names`), with the
    field's help text and, from `defaults`, what it defaults to: flags and config cannot drift. A flag left out
    keeps the recipe's value (None); list fields take comma-separated values. The command receives them as keyword
    arguments."""
    hints = typing.get_type_hints(cls)

    def decorate(command):
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        generated = []
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            hint = hints[f.name]
            kind = bool if hint is bool else next((t for t in (int, float, str) if _accepts(hint, t)), str)
            decls = (names[f.name],) if names and f.name in names else ()
            extra = defaults(f.name) if defaults else None
            text = f.metadata.get("help") + (f"; {extra}" if extra else "")
            annotation = Annotated[Optional[kind], Opt(*decls, help=text)]
            generated.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                               annotation=annotation))
        fixed = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
        recipe, rest = fixed[:1], [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in fixed[1:]]
        command.__signature__ = inspect.Signature(recipe + generated + rest)
        command.__annotations__ = {p.name: p.annotation for p in recipe + generated + rest}
        return command

    return decorate


def _accepts(hint, kind: type) -> bool:
    return hint is kind or kind in typing.get_args(hint)


def _overrides(cls: type, settings: dict, names: dict[str, str] | None = None) -> dict:
    """Flag values as config keys: comma-separated lists split (into numbers for a list of numbers)."""
    hints = typing.get_type_hints(cls)

    def value(key: str, text):
        if _accepts(hints[key], list[float]):
            return _floats(text, (names or {}).get(key, "--" + key.replace("_", "-")))
        if _accepts(hints[key], list[str]):
            return [x.strip() for x in text.split(",")] if text else None
        return text

    return {k: value(k, v) for k, v in settings.items()}


def _train_config(recipe: Optional[Path], settings: dict) -> TrainConfig:
    """The recipe's TrainConfig (or the defaults) with the flags given on the command line applied."""
    base = load_recipe(recipe, TrainConfig) if recipe else TrainConfig()
    return with_overrides(base, _overrides(TrainConfig, settings))


def _settings_table(recipe: Optional[Path], settings: dict) -> list[dict]:
    """Every setting a run of these flags and recipe would use, and where its value comes from."""
    from fusekit.artifacts.reading import read_yaml
    from fusekit.models.defaults import resolve_defaults

    resolved = resolve_defaults(_train_config(recipe, settings))
    in_recipe = set(read_yaml(recipe, "recipe") or {}) if recipe else set()
    flagged = {k for k, v in settings.items() if v is not None}

    def source(key: str) -> str:
        if key in flagged:
            return "flag"
        if key in in_recipe:
            return f"recipe {recipe}"
        return resolved.sources.get(key, "fusekit default")

    return [{"setting": f.name, "value": getattr(resolved.config, f.name), "source": source(f.name)}
            for f in dataclasses.fields(TrainConfig)]


def _print_settings(rows: list[dict], as_json: bool) -> None:
    from rich.table import Table

    from fusekit.progress import console

    table = Table("setting", "value", "from", title="settings of this run (nothing runs with --dry-run)")
    for row in rows:
        table.add_row(row["setting"], str(row["value"]), row["source"])
    console.print(table)
    _emit({row["setting"]: {"value": row["value"], "from": row["source"]} for row in rows}, as_json)


@app.command()
@config_flags(TrainConfig, defaults=default_help)
@one_line_errors
def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe; flags override its keys")] = None,
    overwrite: Annotated[bool, Opt(help="replace an existing run folder (and discard its checkpoint)")] = False,
    dry_run: Annotated[bool, Opt(help="print every setting the run would use and where it comes from (flag, "
                                      "recipe, task default, model default); train nothing")] = False,
    as_json: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
    **settings,
) -> None:
    """Finetune one adapter on one GLUE task. Settings not given take the task's and the model family's defaults
    (chosen on held-out data); --dry-run shows each value and where it comes from.

    Example: fusekit train --task sst2 --data ../shared/glue --max-train 2000 --epochs 1

    L-LoRA: fusekit train --task rte --adapter l-lora --linearize module --lora-init nonzero --data ../shared/glue
    """
    from fusekit.training.train import train as run_training

    if dry_run:
        _print_settings(_settings_table(recipe, settings), as_json)
        return
    cfg = _train_config(recipe, settings)
    result = run_training(cfg, overwrite=overwrite)
    _emit({"out": str(cfg.output_dir()), **dataclasses.asdict(result)}, as_json)


@app.command()
@config_flags(TrainConfig)
@one_line_errors
def tune(
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe of the run to tune; flags override its keys")]
    = None,
    grid: Annotated[Optional[list[str]], Opt(help="KEY=V1,V2,... a setting and the values to try (repeatable)")]
    = None,
    as_json: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
    **settings,
) -> None:
    """Choose training settings on held-out training examples (never on dev): train every grid point, score each on
    --held-out-examples training examples outside the --max-train subset, keep the best. --out is the tune folder.

    Example: fusekit tune --task rte --data ../shared/glue --max-train 1990 --grid lr=3e-4,1e-3 --grid head_lr=1e-3,5e-3
    --out runs/tune-rte
    """
    cfg = _train_config(recipe, settings)
    _tune_and_emit(cfg, grid, Path(cfg.out or f"runs/tune-{cfg.task}-{cfg.adapter}"), as_json)


def _tune_and_emit(cfg: TrainConfig, grid: Optional[list[str]], out: Path, as_json: bool) -> None:
    """`fusekit tune` and `fusekit tune-joint` after their configs: the grid checked, the tune run, its table shown."""
    from fusekit.training.tune import parse_grid
    from fusekit.training.tune import tune as run_tune

    if not grid:
        raise FusekitError("no --grid given: expected at least one --grid KEY=V1,V2,... such as --grid lr=1e-4,3e-4")
    _emit(run_tune(cfg, parse_grid(grid), out, cfg.held_out_examples), as_json)


@app.command()
@config_flags(TrainConfig)
@one_line_errors
def baseline(
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe of the run to compare; flags override its keys")]
    = None,
    as_json: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
    **settings,
) -> None:
    """Score what the checkpoint knows without an adapter: majority class, zero-shot cosine (sentence-pair
    regression), and a head-only linear probe trained on the same examples (at --head-lr). --out is a JSON file.

    Example: fusekit baseline --task stsb --pair-encoding bi --data ../shared/glue --out runs/baseline-stsb.json
    """
    from fusekit.evaluation.baselines import run_baselines

    cfg = _train_config(recipe, settings)
    _emit(run_baselines(cfg, Path(cfg.out or f"runs/baseline-{cfg.task}.json")), as_json)


@app.command("eval")
@one_line_errors
def evaluate(
    runs: Annotated[Optional[list[Path]], typer.Argument(help="run folders to score")] = None,
    adapter: Annotated[Optional[list[Path]], Opt(help="run folder (repeatable; same as the arguments)")] = None,
    task: Annotated[Optional[str], Opt(help="comma-separated tasks (default: each run's own task)")] = None,
    data: Annotated[Optional[str], Opt(help="GLUE-layout folder or hub dataset id (default: the run's)")] = None,
    max_eval: Annotated[Optional[int], Opt(help="cap on validation examples (default: the full split)")] = None,
    batch_size: Annotated[int, Opt(help="examples per evaluation batch")] = 128,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
    precision: Annotated[Optional[str], Opt(help=f"{PRECISION_HELP} (default: the one each folder was made in)")]
    = None,
    nonlinear: Annotated[bool, Opt(help="score L-LoRA runs with the plain LoRA forward at φ (their PEFT export)")]
    = False,
    out: Annotated[Optional[Path], Opt(help="also write all results to this JSON file")] = None,
    as_json: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
) -> None:
    """Score adapters on GLUE validation splits with each task's official metric.

    Example: fusekit eval --task sst2 --adapter runs/sst2-lora --data ../shared/glue
    """
    from fusekit.evaluation.eval import score_folders

    folders = [*(runs or []), *(adapter or [])]
    if not folders:
        raise FusekitError("no run folder given: expected fusekit eval RUN_DIR... or --adapter RUN_DIR")
    if batch_size < 1 or (max_eval is not None and max_eval < 1):
        raise FusekitError("--batch-size and --max-eval must be integers ≥ 1")
    if precision is not None and precision not in PRECISIONS:
        raise FusekitError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    _emit(score_folders(folders, task, data, max_eval, batch_size, device, out, nonlinear, precision), as_json)


@app.command("eval-lm")
@one_line_errors
def evaluate_lm(
    adapter: Annotated[Path, typer.Argument(help="a PEFT LoRA folder of a causal LM (e.g. fusekit merge's output)")],
    prompts: Annotated[Path, Opt(help="JSON lines of {\"prompt\": ..., \"answer\": ...}")],
    metric: Annotated[str, Opt(help="loglik (mean log-likelihood per answer token) or exact (greedy exact match)")]
    = "loglik",
    base: Annotated[Optional[str], Opt(help="base model folder, hub id or embedded name such as smollm2-135m "
                                            "(default: the adapter's own)")] = None,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
    as_json: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
) -> None:
    """Score a causal-LM adapter on prompts with expected answers.

    Example: fusekit eval-lm merged/ta --prompts tasks/arith.jsonl --metric exact --base ./llama-tiny
    """
    from fusekit.evaluation.prompts import load_causal_lm, read_prompts, score_prompts
    from fusekit.models.base import resolve_device
    from fusekit.progress import console

    examples = read_prompts(prompts)
    target = resolve_device(device)
    model, tokenizer = load_causal_lm(adapter, base, target)
    result = score_prompts(model, tokenizer, examples, metric, target)
    console.print(f"{adapter} · {prompts.name} · " + " ".join(f"{k}={v:.4f}" for k, v in result.items()
                                                                if isinstance(v, float)))
    _emit(result, as_json)


def _floats(text: Optional[str], option: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise FusekitError(f"{option} {text[:40]!r}: expected comma-separated numbers such as 0.1,0.3,0.5")
    return values


MERGE_FLAGS = {"lam": "--lambda", "rate": "--drop-rate", "rates": "--drop-rates"}


@app.command()
@config_flags(MergeConfig, names=MERGE_FLAGS)
@one_line_errors
def merge(
    runs: Annotated[list[Path], typer.Argument(help="run folders (one per task) whose task vectors to fuse, or any "
                                                    "PEFT LoRA folders or Hub ids (merged in ΔW space)")],
    out: Annotated[Path, Opt(help="merged folder to write")],
    overwrite: Annotated[bool, Opt(help="replace an existing merged folder")] = False,
    push_to_hub: Annotated[Optional[str], Opt(help="then upload the merged folder to this Hub repo (org/name)")]
    = None,
    as_json: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
    **settings,
) -> None:
    """Fuse task vectors into one multi-task adapter.

    Example: fusekit merge runs/sst2-lora runs/rte-lora runs/mrpc-lora --method ties --search --out merged/ties
    """
    from fusekit.merging.merge import run_merge

    config = from_mapping(MergeConfig, {k: v for k, v in _overrides(MergeConfig, settings, MERGE_FLAGS).items()
                                        if v is not None}, "command line")
    summary = run_merge(config, runs, out, overwrite)
    if push_to_hub:
        from fusekit.artifacts.hub import push_to_hub as push

        summary["hub"] = push(out, push_to_hub)
    _emit(summary, as_json)


@app.command()
@one_line_errors
def disentangle(
    runs: Annotated[Optional[list[Path]], typer.Argument(help="run folders in pairs: A B [A' B' ...]; each pair (two "
                                                              "tasks, one φ0) is one heatmap, all on one colour "
                                                              "scale")] = None,
    out: Annotated[Path, Opt(help="folder for disentanglement.json and disentanglement.png")] = Path("disentangle"),
    study: Annotated[Optional[Path], Opt(help="a study folder: take the pairs from its train/ runs, every adapter "
                                             "variant side by side")] = None,
    pairs: Annotated[str, Opt(help="with --study: all, or task pairs such as sst2+rte,mrpc+cola")] = "all",
    alphas: Annotated[Optional[str], Opt(help="comma-separated α grid (default -2,-1.5,...,2)")] = None,
    examples: Annotated[int, Opt(help="validation examples per task (an analysis: nothing is chosen on them)")]
    = 200,
    space: Annotated[str, Opt(help="factors (the adapter parameters, as the paper; L-LoRA's only space) or, for "
                                   "LoRA, delta-w")] = "factors",
    data: Annotated[Optional[str], Opt(help="GLUE-layout folder or hub dataset id (default: the runs')")] = None,
    seed: Annotated[int, Opt(help="which validation examples are drawn")] = 0,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
    overwrite: Annotated[bool, Opt(help="replace an existing output folder")] = False,
    as_json: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
) -> None:
    """Weight disentanglement ξ(α1, α2) of two task vectors (Ortiz-Jiménez et al. 2023, as in the L-LoRA paper):
    how much adding one task's vector changes the other task's predictions.

    Example: fusekit disentangle runs/s/train/sst2-lora runs/s/train/rte-lora runs/s/train/sst2-l-lora
    runs/s/train/rte-l-lora --out runs/s/disentangle

    A whole study: fusekit disentangle --study runs/glue-fusion --pairs all --out runs/glue-fusion/disentangle
    """
    from fusekit.study.disentangle import ALPHAS, disentangle_folders
    from fusekit.study.plan import study_pairs

    if examples < 1:
        raise FusekitError(f"--examples {examples}: expected an integer ≥ 1")
    grid = _floats(alphas, "--alphas") if alphas is not None else list(ALPHAS)
    columns = None
    if study is not None:
        if runs:
            raise FusekitError("give run folders or --study, not both")
        runs, columns = study_pairs(study, pairs)
    _emit(disentangle_folders(runs or [], out, grid, examples, space, device, seed, data, overwrite, columns),
          as_json)


@app.command()
@config_flags(JointConfig, skip=("task",), names={"temperature": "--T"})
@one_line_errors
def joint(
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe (JointConfig keys); flags override")] = None,
    overwrite: Annotated[bool, Opt(help="replace an existing output folder (and discard its checkpoint)")] = False,
    as_json: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
    **settings,
) -> None:
    """Train one adapter on several tasks with a loss balancer.

    Example: fusekit joint --tasks sst2,rte,mrpc,cola,stsb --balancer coba --data ../shared/glue
    """
    from fusekit.artifacts.checksums import reseal
    from fusekit.artifacts.layout import BALANCER_PLOT, METRICS
    from fusekit.study.plots import plot_joint
    from fusekit.training.joint import train_joint

    base = load_recipe(recipe, JointConfig) if recipe else JointConfig()
    cfg = with_overrides(base, _overrides(JointConfig, settings))
    results = train_joint(cfg, overwrite=overwrite)
    out = cfg.output_dir()
    plot_joint(out / METRICS, list(results), out / BALANCER_PLOT)
    reseal(out, BALANCER_PLOT)
    _emit({"out": str(out), "scores": results}, as_json)


@app.command("tune-joint")
@config_flags(JointConfig, skip=("task",), names={"temperature": "--T"})
@one_line_errors
def tune_joint(
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe of the joint run to tune (JointConfig keys); "
                                                          "flags override")] = None,
    grid: Annotated[Optional[list[str]], Opt(help="KEY=V1,V2,... a setting and the values to try (repeatable)")]
    = None,
    as_json: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
    **settings,
) -> None:
    """Choose joint training settings on held-out training examples (never on dev): train a joint run per grid
    point, score each task on --held-out-examples training examples outside its cap, keep the best mean.

    Example: fusekit tune-joint --tasks sst2,mrpc --data ../shared/glue --max-train 2000 --grid lr=1e-3,3e-3
    --out runs/tune-joint
    """
    base = load_recipe(recipe, JointConfig) if recipe else JointConfig()
    cfg = with_overrides(base, _overrides(JointConfig, settings))
    _tune_and_emit(cfg, grid, Path(cfg.out or f"runs/tune-joint-{cfg.balancer}"), as_json)


@app.command("run")
@one_line_errors
def run_recipe(
    recipe: Annotated[Path, typer.Argument(help="study recipe (YAML): tasks, adapters, merges, joint baselines")],
    only: Annotated[Optional[str], Opt(help="comma-separated stage-name prefixes or globs: train/,merge/lora-*")]
    = None,
    dry_run: Annotated[bool, Opt(help="validate the recipe and print the plan, run nothing")] = False,
    restore: Annotated[Optional[Path], Opt(help="continue from what this study published (fusekit report "
                                               "--publish): its tunes, baselines, merges and disentanglement are "
                                               "restored, not run again")] = None,
    executor: Annotated[str, Opt(help="local (one stage after another, here) or ray (each stage a Ray task, "
                                      "started once the stages it needs are finished)")] = "local",
    address: Annotated[Optional[str], Opt(help="ray: address of a running cluster (default: $RAY_ADDRESS, else a "
                                               "local one for this run)")] = None,
    stage_cpus: Annotated[float, Opt(help="ray: CPU cores each stage asks for (its torch threads)")] = 1.0,
    stage_gpus: Annotated[Optional[float], Opt(help="ray: GPUs each stage asks for (default: 1 where this machine "
                                                    "has a GPU, else 0)")] = None,
) -> None:
    """Run a whole study; rerunning skips finished stages and resumes an interrupted training.

    Example: fusekit run recipes/quickstart.yaml && fusekit report runs/quickstart
    """
    from fusekit.study.executors import make_executor
    from fusekit.study.plan import describe, plan
    from fusekit.study.recipe import load_study
    from fusekit.study.run import run_study

    chosen = make_executor(executor, address, stage_cpus, stage_gpus)
    if dry_run:
        typer.echo(describe(plan(load_study(recipe), str(recipe))))
        return
    run_study(recipe, only, chosen, restore)


@app.command()
@one_line_errors
def report(
    study: Annotated[Path, typer.Argument(help="study folder written by fusekit run")],
    publish: Annotated[Optional[Path], Opt(help="also copy the report, figures, recipe, stage costs and every "
                                                "stage's scores (no weights) to this folder, e.g. docs/results/NAME")]
    = None,
    drop_stages: Annotated[bool, Opt(help="publish even though stages published there are not finished in the "
                                          "study (a retune retired them, or the recipe no longer plans them)")]
    = False,
) -> None:
    """Write the study's markdown report: per-task, merged and joint tables, λ sweeps, balancer weights, stage costs.

    Example: fusekit report runs/glue-fusion --publish docs/results/glue-fusion
    """
    from fusekit.study.publish import publish as publish_results
    from fusekit.study.report import write_report

    written = write_report(study)
    typer.echo(f"wrote {written}")
    if publish is not None:
        typer.echo(f"published {publish_results(study, written, publish, drop_stages)}")


def main() -> None:
    app(sys.argv[1:])


if __name__ == "__main__":
    main()
