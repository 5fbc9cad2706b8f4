"""`fusekit run`: a whole study from one recipe — per-task adapters, merges, joint baselines — resumable.

The recipe is validated and expanded into a plan of stages before any work starts. Each stage writes its own
folder under the study directory (atomically, so a folder that exists is finished); running the same command
again skips finished stages, and a training stage killed midway resumes from its last checkpoint.

The study folder's layout is listed in fusekit.artifacts.layout.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import yaml

from fusekit.artifacts.atomic import atomic_write_text
from fusekit.artifacts.layout import (
    BASELINE,
    CONFIG,
    DISENTANGLEMENT,
    EVAL,
    MARKER,
    STAGES,
    STUDY_RECIPE,
    TUNE,
    TUNED_RECIPE,
)
from fusekit.artifacts.output import check_output, claim_output, mark
from fusekit.artifacts.reading import load_recipe, read_json, read_text, read_yaml
from fusekit.config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    SAFE_NAME,
    Allowed,
    JointConfig,
    TrainConfig,
    from_mapping,
    registry,
    setting,
    short,
    to_yaml,
)
from fusekit.data.tasks import parse_tasks
from fusekit.errors import FusekitError
from fusekit.study.disentangle import ALPHAS, task_pairs
from fusekit.merging.config import MergeConfig
from fusekit.merging.search import searched
from fusekit.models.defaults import changed_settings
from fusekit.progress import JsonlLog, console
from fusekit.study.resources import measure
from fusekit.training.parallel import processes
from fusekit.training.tune import chosen_settings, point_configs, tune


@dataclass
class MergeSettings:
    """Which merges to make of each variant's per-task adapters, and the held-out search grid."""

    methods: list[str] = setting(["task-arithmetic", "average", "ties", "dare"], "merge methods",
                                 Allowed(choices=registry("fusekit.merging.methods", "METHODS"), unique=True))
    spaces: list[str] = setting(["delta-w", "factors"], "LoRA merge spaces (L-LoRA merges its factors)",
                                Allowed(choices=registry("fusekit.merging.config", "SPACES"), unique=True))
    lambdas: list[float] = setting([0.3, 0.6, 1.0], "λ grid of the held-out search", Allowed(unique=True))
    densities: list[float] | None = setting(None, "TIES density grid (None: `fusekit merge --search`'s)",
                                            Allowed(low=0, high=1, low_open=True, unique=True))
    drop_rates: list[float] | None = setting(None, "DARE drop-rate grid (None: likewise)",
                                             Allowed(low=0, high=1, high_open=True, unique=True))
    val_examples: int = setting(100, "held-out training examples per task for the search", AT_LEAST_ONE)
    criterion: str = setting("normalized", "what the search maximises (every criterion is recorded either way)",
                             Allowed(choices=registry("fusekit.merging.criteria", "CRITERIA")))
    select_on_seen: bool = setting(False, "let searches select on training examples a run trained on, when it "
                                          "trained on all of them (refused otherwise)")
    per_task: list[str] = setting([], "methods merged a second time with one λ per task (`fusekit merge --per-task`; "
                                      "stage names end in -per-task)", Allowed(unique=True))
    variants: list[str] | None = setting(None, "adapter variants to merge (None: all)", Allowed(unique=True))


@dataclass
class ScalingSettings(MergeSettings):
    """Fusion against the number of merged tasks (the L-LoRA paper's analysis): each method over subsets of k of
    the study's tasks, k = 2 … K, hyperparameters chosen on held-out data per subset."""

    methods: list[str] = setting(["task-arithmetic"], "merge methods",
                                 Allowed(choices=registry("fusekit.merging.methods", "METHODS"), unique=True))
    sizes: list[int] | None = setting(None, "subset sizes k (None: 2 … the number of tasks)",
                                      Allowed(low=2, unique=True))
    max_subsets: int | None = setting(10, "at most this many subsets per k, a seeded sample (None: every one)",
                                      AT_LEAST_ONE)


def task_subsets(tasks: list[str], k: int, limit: int | None, seed: int) -> list[tuple[str, ...]]:
    """Every subset of k tasks (in the study's order), or a seeded sample of `limit` of them."""
    every = list(itertools.combinations(tasks, k))
    if limit is None or len(every) <= limit:
        return every
    return sorted(random.Random(seed).sample(every, limit), key=every.index)


@dataclass
class DisentangleSettings:
    """Weight disentanglement of task pairs (the L-LoRA paper's analysis, `fusekit disentangle`): one ξ grid per
    pair, variant and space, on the first seed's runs (an analysis of the vectors; nothing is chosen on it)."""

    pairs: list[str] | None = setting(None, "task pairs such as sst2+mrpc (None: every pair of the study's tasks)",
                                      Allowed(unique=True))
    alphas: list[float] = setting(list(ALPHAS), "α grid, used for both α1 and α2", Allowed(unique=True))
    examples: int = setting(200, "validation examples per task", AT_LEAST_ONE)
    spaces: list[str] = setting(["factors"], "LoRA spaces (L-LoRA combines its factors)",
                                Allowed(choices=registry("fusekit.merging.config", "SPACES"), unique=True))
    variants: list[str] | None = setting(None, "adapter variants (None: all)", Allowed(unique=True))


@dataclass
class JointSettings:
    """Joint baselines: one adapter per balancer trained on all the study's tasks."""

    balancers: list[str] = setting(["uniform", "coba"], "loss balancers, one joint run each",
                                   Allowed(choices=registry("fusekit.training.balancers", "BALANCERS"), unique=True))
    variants: list[str] = setting(["lora"], "adapter variants trained jointly", Allowed(unique=True))
    settings: dict = setting({}, "JointConfig keys (sampling, temperature, coba_warmup, ...)")


@dataclass
class TuneSettings:
    """Training settings chosen per task and variant on held-out training examples (`fusekit tune`)."""

    grid: dict = setting({"lr": [2e-4, 5e-4, 1e-3]}, "train keys → values to try")
    task_grids: dict = setting({}, "task (or task:variant) → train keys → values, added to the grid for that task "
                                   "(pair_encoding for sentence-pair tasks) or that task's variant")
    held_out_examples: int = setting(500, "training examples outside each run's subset, scored per grid point",
                                     AT_LEAST_ONE)
    variants: list[str] | None = setting(None, "adapter variants to tune (None: all)", Allowed(unique=True))
    tasks: list[str] | None = setting(None, "tasks to tune (None: all)", Allowed(unique=True))


@dataclass
class StudyConfig:
    """A study: `train` keys are shared; `adapters` and `task_settings` override them (task wins; a key such as
    `stsb:l-lora` overrides one task of one variant)."""

    out: str = setting("runs/study", "the study folder")
    tasks: list[str] = setting(["sst2", "rte", "mrpc", "cola", "stsb"], "GLUE tasks",
                               Allowed(choices=registry("fusekit.data.tasks", "TASKS"), unique=True))
    seeds: list[int] = setting([0], "seeds; each gets its own runs, merges and joint baselines",
                               Allowed(low=0, high=2**32 - 1, unique=True))
    checkpoint_every: int = setting(50, "steps between checkpoints of each training stage", NON_NEGATIVE)
    train: dict = setting({}, "TrainConfig keys shared by every training stage")
    adapters: dict = setting({"lora": {"adapter": "lora"}}, "variant name → TrainConfig keys")
    task_settings: dict = setting({}, "task or task:variant → TrainConfig keys")
    tune: dict | None = setting(None, "TuneSettings: settings chosen on held-out training examples first")
    baselines: bool = setting(False, "majority, zero-shot and head-only scores per task (`fusekit baseline`)")
    merge: dict | None = setting(None, "MergeSettings")
    scaling: dict | None = setting(None, "ScalingSettings: fusion against the number of merged tasks")
    disentangle: dict | None = setting(None, "DisentangleSettings: weight disentanglement of task pairs")
    joint: dict | None = setting(None, "JointSettings")


@dataclass
class Stage:
    name: str  # folder under the study directory, e.g. train/sst2-lora
    kind: str  # tune | baseline | train | merge | joint | disentangle
    config: object  # TuneJob | TrainConfig | MergeJob | JointConfig | DisentangleJob


@dataclass
class MergeJob:
    runs: list[str]
    config: MergeConfig


@dataclass
class DisentangleJob:
    runs: list[str]
    alphas: list[float]
    examples: int
    space: str
    seed: int


@dataclass
class TuneJob:
    config: TrainConfig  # the train stage's settings before tuning; `out` is the tune folder
    variant: str
    grid: dict
    held_out_examples: int


def load_study(path: Path) -> StudyConfig:
    return load_recipe(path, StudyConfig)


def plan(study: StudyConfig, source: str) -> list[Stage]:
    """Every stage of the study, each config fully validated (a bad key fails here, before any work)."""
    tasks = [t.name for t in parse_tasks(",".join(study.tasks))]
    for key in study.task_settings:
        task, _, variant = key.partition(":")
        if task not in tasks or (variant and variant not in study.adapters):
            raise FusekitError(f"{source}: task_settings key {key!r} names no task (or task:variant) of the study")
    tune = from_mapping(TuneSettings, dict(study.tune), f"{source}: tune") if study.tune is not None else None
    stages, multi_seed = [], len(study.seeds) > 1
    for variant, settings in study.adapters.items():
        if not isinstance(variant, str) or not SAFE_NAME.fullmatch(variant):
            raise FusekitError(f"{source}: adapters: variant name {short(variant)} must be letters, digits, '.', "
                               "'_' and '-' (it names the stage folders)")
        if not isinstance(settings, dict):
            raise FusekitError(f"{source}: adapters.{variant} must be a mapping of train keys")
    for key, settings in study.task_settings.items():
        if not isinstance(settings, dict):
            raise FusekitError(f"{source}: task_settings.{key} is {short(settings)}, expected a mapping of train keys")
    if tune:
        stages += _tune_stages(tune, study, tasks, source)
    if study.baselines:
        first = next(iter(study.adapters))
        for task in tasks:
            keys = {**_train_keys(study, task, first, study.seeds[0]), "out": None}
            stages.append(Stage(f"baseline/{task}", "baseline", from_mapping(TrainConfig, keys, f"{source}: baseline")))
    for seed in study.seeds:
        tag = f"-seed{seed}" if multi_seed else ""
        runs: dict[str, list[str]] = {}
        for variant in study.adapters:
            for task in tasks:
                name = train_stage_name(task, variant, tag)
                keys = {**_train_keys(study, task, variant, seed), "out": str(Path(study.out) / name)}
                stages.append(Stage(name, "train", from_mapping(TrainConfig, keys, f"{source}: {name}")))
                runs.setdefault(variant, []).append(keys["out"])
        if study.merge is not None:
            stages += _merge_stages(from_mapping(MergeSettings, dict(study.merge), f"{source}: merge"), study, runs,
                                    tag, seed, source)
        if study.scaling is not None:
            scaling = from_mapping(ScalingSettings, dict(study.scaling), f"{source}: scaling")
            if any(k > len(tasks) for k in scaling.sizes or []):
                raise FusekitError(f"{source}: scaling.sizes: a subset cannot hold more than the {len(tasks)} tasks")
            subsets = [s for k in scaling.sizes or range(2, len(tasks) + 1)
                       for s in task_subsets(tasks, k, scaling.max_subsets, seed)]
            stages += _merge_stages(scaling, study, runs, tag, seed, source, "scaling", tasks, subsets)
        if study.joint is not None:
            stages += _joint_stages(from_mapping(JointSettings, dict(study.joint), f"{source}: joint"), study,
                                    runs, tag, seed, source)
        if study.disentangle is not None and seed == study.seeds[0]:
            settings = from_mapping(DisentangleSettings, dict(study.disentangle), f"{source}: disentangle")
            stages += _disentangle_stages(settings, study, runs, tasks, tag, seed, source)
    return stages


def train_stage_name(task: str, variant: str, tag: str) -> str:
    """The one place a training stage's name is made (`tag`: `-seed<N>` in a multi-seed study, else empty)."""
    return f"train/{task}-{variant}{tag}"


def waiting_for_tunes(study: StudyConfig, stages: list[Stage], out: Path, only: str | None) -> None:
    """Refuse to train (or score a baseline) with settings a selected stage's tune has not chosen yet: it would
    train at the defaults, and the finished tune would then find the stage run with other settings."""
    first = next(iter(study.adapters))
    tags = [f"-seed{seed}" if len(study.seeds) > 1 else "" for seed in study.seeds]
    for stage in stages:
        if stage.kind != "tune" or is_done(stage, out):
            continue
        task, variant = stage.config.config.task, stage.config.variant
        waiting = [train_stage_name(task, variant, tag) for tag in tags] + ([f"baseline/{task}"] if variant == first
                                                                            else [])
        blocked = next((name for name in waiting if selected(name, only)), None)
        if blocked:
            raise FusekitError(f"{blocked} waits for {stage.name} to choose its settings: run that first "
                               f"(--only {stage.name}) or select both")


def _tune_folder(study: StudyConfig, task: str, variant: str) -> Path:
    return Path(study.out) / "tune" / f"{task}-{variant}"


def _train_keys(study: StudyConfig, task: str, variant: str, seed: int, tuned: bool = True) -> dict:
    """A train stage's keys: train < variant < task < task:variant < what a finished tune chose (if `tuned`)."""
    chosen = (chosen_settings(_tune_folder(study, task, variant)) if tuned else None) or {}
    return {**study.train, **study.adapters[variant], **study.task_settings.get(task, {}),
            **study.task_settings.get(f"{task}:{variant}", {}), **chosen,
            "task": task, "seed": seed, "checkpoint_every": study.checkpoint_every}


def _tune_stages(tune: TuneSettings, study: StudyConfig, tasks: list[str], source: str) -> list[Stage]:
    for key, grid in tune.task_grids.items():
        task, _, variant = str(key).partition(":")
        if task not in tasks or (variant and variant not in study.adapters) or not isinstance(grid, dict):
            raise FusekitError(f"{source}: tune.task_grids.{key}: expected a task (or task:variant) of the study "
                               "mapped to a grid")
    stages = []
    for variant in tune.variants or list(study.adapters):
        if variant not in study.adapters:
            raise FusekitError(f"{source}: tune.variants: {variant!r} is not one of the adapters")
        for task in tune.tasks or tasks:
            if task not in tasks:
                raise FusekitError(f"{source}: tune.tasks: {task!r} is not one of the study's tasks")
            folder = _tune_folder(study, task, variant)
            name = str(folder.relative_to(study.out))
            keys = {**_train_keys(study, task, variant, study.seeds[0], tuned=False), "out": str(folder)}
            config = from_mapping(TrainConfig, keys, f"{source}: {name}")
            grid = {**tune.grid, **tune.task_grids.get(task, {}), **tune.task_grids.get(f"{task}:{variant}", {})}
            point_configs(config, grid, folder, tune.held_out_examples, f"{source}: tune grid of {task}")
            stages.append(Stage(name, "tune", TuneJob(config, variant, grid, tune.held_out_examples)))
    return stages


def tuned_recipe(study: StudyConfig, stages: list[Stage]) -> str:
    """The recipe with every finished tune's choice written into task_settings (and no tune section)."""
    settings = {k: dict(v) for k, v in study.task_settings.items()}
    for stage in stages:
        if stage.kind == "tune":
            chosen = chosen_settings(Path(study.out) / stage.name)
            if chosen:
                settings.setdefault(f"{stage.config.config.task}:{stage.config.variant}", {}).update(chosen)
    recipe = {**dataclasses.asdict(study), "task_settings": settings}
    recipe.pop("tune")
    return yaml.safe_dump(recipe, sort_keys=False)


def merge_space_fits(method: str, space: str) -> bool:
    """Data-aware methods merge in one space (RegMean: ΔW, Fisher: factors); the others in any."""
    from fusekit.merging.methods import make_method

    needed = make_method(method).space
    return needed is None or needed == space


def _merge_stages(merge: MergeSettings, study, runs, tag, seed, source, prefix: str = "merge",
                  tasks: list[str] | None = None, subsets: list[tuple[str, ...]] | None = None) -> list[Stage]:
    """A merge per variant, space and method of all the runs, or (`subsets` of `tasks`) of each subset's runs."""
    wrong = [m for m in merge.per_task if m not in merge.methods or "lam" not in searched(m)]
    if wrong:
        raise FusekitError(f"{source}: {prefix}.per_task: {wrong[0]!r} is not one of the merge's methods with a λ")
    stages = []
    for variant in merge.variants or list(study.adapters):
        if variant not in runs:
            raise FusekitError(f"{source}: {prefix}.variants: {variant!r} is not one of the adapters")
        for space in ["factors"] if _linearized(study, variant) else merge.spaces:
            for method in [m for m in merge.methods if merge_space_fits(m, space)]:
                taken = searched(method)
                config = MergeConfig(method=method, space=space, search=True, val_examples=merge.val_examples,
                                     seed=seed, lambdas=merge.lambdas if "lam" in taken else None,
                                     densities=merge.densities if "density" in taken else None,
                                     rates=merge.drop_rates if "rate" in taken else None, criterion=merge.criterion,
                                     select_on_seen=merge.select_on_seen)
                kinds = [("", config)] + ([("-per-task", dataclasses.replace(config, per_task=True))]
                                          if method in merge.per_task else [])
                for subset in subsets or [None]:
                    chosen = runs[variant] if subset is None else [runs[variant][tasks.index(t)] for t in subset]
                    suffix = "" if subset is None else f"-k{len(subset)}-{'+'.join(subset)}"
                    stages += [Stage(f"{prefix}/{variant}-{space}-{method}{kind}{suffix}{tag}", "merge",
                                     MergeJob(chosen, kind_config)) for kind, kind_config in kinds]
    return stages


def _linearized(study: StudyConfig, variant: str) -> bool:
    return study.adapters[variant].get("adapter", study.train.get("adapter", "lora")) != "lora"


def _disentangle_stages(settings: DisentangleSettings, study, runs, tasks, tag, seed, source) -> list[Stage]:
    """One stage per task pair, variant and space: `disentangle/<variant>-<space>-<task>+<task>`."""
    try:
        pairs = task_pairs(tasks, settings.pairs)
    except FusekitError as error:
        raise FusekitError(f"{source}: disentangle.pairs: {error}") from None
    stages = []
    for variant in settings.variants or list(study.adapters):
        if variant not in runs:
            raise FusekitError(f"{source}: disentangle.variants: {variant!r} is not one of the adapters")
        for space in ["factors"] if _linearized(study, variant) else settings.spaces:
            for first, second in pairs:
                chosen = [runs[variant][tasks.index(first)], runs[variant][tasks.index(second)]]
                job = DisentangleJob(chosen, settings.alphas, settings.examples, space, seed)
                stages.append(Stage(f"disentangle/{variant}-{space}-{first}+{second}{tag}", "disentangle", job))
    return stages


def _joint_stages(joint: JointSettings, study, runs, tag, seed, source) -> list[Stage]:
    stages = []
    for variant in joint.variants:
        if variant not in runs:
            raise FusekitError(f"{source}: joint.variants: {variant!r} is not one of the adapters")
        for balancer in joint.balancers:
            name = f"joint/{variant}-{balancer}{tag}"
            keys = {**study.train, **study.adapters[variant], **joint.settings, "tasks": ",".join(study.tasks),
                    "balancer": balancer, "seed": seed, "references": runs[variant],
                    "checkpoint_every": study.checkpoint_every, "out": str(Path(study.out) / name)}
            keys.pop("task", None)
            stages.append(Stage(name, "joint", from_mapping(JointConfig, keys, f"{source}: {name}")))
    return stages


FINISHED_FILE = {"tune": TUNE, "baseline": BASELINE, "disentangle": DISENTANGLEMENT}  # train, joint: CONFIG


def is_done(stage: Stage, out: Path) -> bool:
    """Finished stages leave their folder (written atomically); a merge is finished once it is scored."""
    folder = out / stage.name
    if stage.kind == "merge":
        path = folder / EVAL
        return path.is_file() and "average_normalized" in read_json(path, "scores")
    return (folder / FINISHED_FILE.get(stage.kind, CONFIG)).is_file()


def check_unchanged(stage: Stage, out: Path) -> None:
    """A finished training or disentangle stage is reused only if the recipe still asks for the same one."""
    if stage.kind == "disentangle":
        recorded = read_json(out / stage.name / DISENTANGLEMENT, "disentanglement", expect=list)
        job: DisentangleJob = stage.config
        if [(r.get("alphas"), r.get("space")) for r in recorded] != [(job.alphas, job.space)]:
            raise FusekitError(f"{out / stage.name} was computed on another α grid or space than the recipe asks "
                               "(delete the folder to rerun it, or change `out`)")
    if stage.kind == "tune":
        recorded, job = read_json(out / stage.name / TUNE, "tune table"), stage.config
        if (recorded.get("grid"), recorded.get("held_out_examples")) != (job.grid, job.held_out_examples):
            raise FusekitError(f"{out / stage.name} was tuned on another grid or held-out size than the recipe asks "
                               "(delete the folder to tune again, or change `out`)")
    if stage.kind not in ("train", "joint"):
        return
    recorded = read_yaml(out / stage.name / CONFIG, "recorded config")
    if not isinstance(recorded, dict):
        raise FusekitError(f"{out / stage.name / CONFIG} is not a mapping of settings: delete the folder to rerun")
    changed = changed_settings(recorded, stage.config)
    if changed:
        raise FusekitError(f"{out / stage.name} was run with different {', '.join(changed)} than the recipe asks "
                           "(delete the folder to rerun it, or change `out`)")


def selected(name: str, only: str | None) -> bool:
    """`only`: comma-separated prefixes or glob patterns of stage names, e.g. `train/,merge/lora-*`."""
    return only is None or any(name.startswith(p) or fnmatch(name, p) for p in only.split(","))


def run_study(recipe: Path, only: str | None = None) -> list[Stage]:
    """Run every unfinished stage of the recipe that `only` selects: the tune stages first, then the rest as
    planned again, so that training uses what the tunes chose."""
    study = load_study(recipe)
    stages = plan(study, str(recipe))
    out = Path(study.out)
    procs = processes()  # training stages run data parallel; merges on the main process alone
    inputs = [recipe, study.train.get("data"), study.train.get("model")]
    if procs.is_main:
        lock = claim_output(out, overwrite=False, inputs=inputs, what="study folder", resumable=True)
    else:
        check_output(out, False, inputs, "study folder", resumable=True)
    try:
        for stage in stages:  # a changed recipe is refused before it replaces the recorded one
            if selected(stage.name, only) and is_done(stage, out):
                check_unchanged(stage, out)
        if procs.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if not (out / MARKER).is_file():
                mark(out, "study")
            atomic_write_text(out / STUDY_RECIPE, read_text(recipe, "recipe"))
        procs.barrier()
        if study.tune is not None:
            _run_stages([s for s in stages if s.kind == "tune"], out, only)
            stages = plan(study, str(recipe))
            if procs.is_main:
                atomic_write_text(out / TUNED_RECIPE, tuned_recipe(study, stages))
            waiting_for_tunes(study, stages, out, only)
        _run_stages([s for s in stages if s.kind != "tune"], out, only)
    finally:
        if procs.is_main:
            lock.release()
    return stages


def _run_stages(stages: list[Stage], out: Path, only: str | None) -> None:
    procs = processes()
    todo = [s for s in stages if selected(s.name, only)]
    for stage in todo:
        if is_done(stage, out):
            check_unchanged(stage, out)
    pending = [s for s in todo if not is_done(s, out)]
    console.print(f"study {out}: {len(todo)} stages, {len(todo) - len(pending)} finished, {len(pending)} to run")
    log = JsonlLog(out / STAGES) if procs.is_main else None
    try:
        for number, stage in enumerate(pending, 1):
            console.rule(f"[{number}/{len(pending)}] {stage.name}")
            with measure() as usage:
                if stage.kind != "merge" or procs.is_main:
                    RUNNERS[stage.kind](stage, out)
            procs.barrier()
            if log:
                log.write({"stage": stage.name, "kind": stage.kind, **usage})
    finally:
        if log:
            log.close()


def _tune(stage: Stage, out: Path) -> None:
    job: TuneJob = stage.config
    tune(job.config, job.grid, out / stage.name, job.held_out_examples)


def _baseline(stage: Stage, out: Path) -> None:
    from fusekit.evaluation.baselines import run_baselines

    run_baselines(stage.config, out / stage.name / BASELINE)


def _train(stage: Stage, out: Path) -> None:
    from fusekit.training.train import train

    train(stage.config)


def _merge(stage: Stage, out: Path) -> None:
    from fusekit.evaluation.eval import score_folders
    from fusekit.merging.merge import run_merge

    job: MergeJob = stage.config
    folder = out / stage.name
    run_merge(job.config, [Path(r) for r in job.runs], folder, overwrite=True)
    score_folders([folder], None, None, None, 128, "auto", None)


def _disentangle(stage: Stage, out: Path) -> None:
    from fusekit.study.disentangle import disentangle_folders

    job: DisentangleJob = stage.config
    disentangle_folders([Path(r) for r in job.runs], out / stage.name, job.alphas, job.examples, job.space, "auto",
                        job.seed, None, overwrite=True)


def _joint(stage: Stage, out: Path) -> None:
    from fusekit.training.joint import train_joint

    train_joint(stage.config)


RUNNERS: dict[str, Callable[[Stage, Path], None]] = {"tune": _tune, "baseline": _baseline, "train": _train,
                                                     "merge": _merge, "joint": _joint,
                                                     "disentangle": _disentangle}


def describe(stages: list[Stage]) -> str:
    """The plan as YAML, for `fusekit run --dry-run`."""
    return "\n".join(f"{s.name}:\n" + "\n".join("  " + line for line in (
        to_yaml(s.config) if s.kind in ("train", "baseline", "joint")
        else yaml.safe_dump(dataclasses.asdict(s.config), sort_keys=False)
    ).splitlines()) for s in stages)
