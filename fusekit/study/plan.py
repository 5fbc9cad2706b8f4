"""A study's plan: the recipe expanded into stages, each with its identity and its fully validated settings.

A stage's identity (`StageId`: kind, task, variant, seed, space, method, subset …) is the one place its folder name
is made; the report and `fusekit disentangle --study` read identities from the plan, never by parsing a name.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from fusekit.artifacts.layout import STUDY_RECIPE
from fusekit.artifacts.output import written_by_fusekit
from fusekit.config import (
    SAFE_NAME,
    JointConfig,
    TrainConfig,
    from_mapping,
    short,
    to_yaml,
)
from fusekit.data.tasks import parse_tasks
from fusekit.errors import FusekitError
from fusekit.merging.config import MergeConfig
from fusekit.merging.search import searched
from fusekit.study.disentangle import task_pairs
from fusekit.study.recipe import (
    DisentangleSettings,
    JointSettings,
    MergeSettings,
    ScalingSettings,
    StudyConfig,
    TuneSettings,
    load_study,
)
from fusekit.training.tune import chosen_settings, point_configs


@dataclass(frozen=True)
class StageId:
    """Who a stage is. `folder`: tune | baseline | train | merge | scaling | joint | disentangle; `seed` is set in
    multi-seed studies only (their names end in -seed<N>); `tasks`: a scaling subset or a disentangle pair."""

    folder: str
    task: str | None = None
    variant: str | None = None
    seed: int | None = None
    space: str | None = None
    method: str | None = None
    per_task: bool = False
    calibrated: bool = False
    tasks: tuple[str, ...] = ()
    balancer: str | None = None

    @property
    def name(self) -> str:
        """The stage's folder under the study, e.g. `merge/lora-delta-w-ties-seed1`."""
        return f"{self.folder}/{self.leaf}"

    @property
    def leaf(self) -> str:
        seed = "" if self.seed is None else f"-seed{self.seed}"
        if self.folder == "baseline":
            return self.task
        if self.folder == "tune" and self.task is None:  # a joint run's settings
            return f"joint-{self.variant}"
        if self.folder in ("tune", "train"):
            return f"{self.task}-{self.variant}{seed}"
        if self.folder == "joint":
            return f"{self.variant}-{self.balancer}{seed}"
        if self.folder == "disentangle":
            return f"{self.variant}-{self.space}-{'+'.join(self.tasks)}{seed}"
        subset = f"-k{len(self.tasks)}-{'+'.join(self.tasks)}" if self.tasks else ""
        kind = ("-per-task" if self.per_task else "") + ("-calibrated" if self.calibrated else "")
        return f"{self.variant}-{self.space}-{self.method}{kind}{subset}{seed}"

    @property
    def setting(self) -> str:
        """The leaf shared by every seed (and, in scaling, every subset) of this stage: what the report groups."""
        return dataclasses.replace(self, seed=None, tasks=() if self.folder == "scaling" else self.tasks).leaf

    @property
    def family(self) -> str:
        """The stage name without seed or subset: stages of one family cost about the same."""
        return f"{self.folder}/{self.setting}"


@dataclass
class Stage:
    id: StageId
    kind: str  # what runs it: tune | baseline | train | merge | joint | disentangle
    config: object  # TuneJob | TrainConfig | MergeJob | JointConfig | DisentangleJob
    needs: tuple[str, ...] = ()  # the stages that write its inputs (a merge's runs), by name

    @property
    def name(self) -> str:
        return self.id.name


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
    config: TrainConfig  # the train (or joint) stage's settings before tuning; `out` is the tune folder
    variant: str
    grid: dict
    held_out_examples: int


def plan(study: StudyConfig, source: str) -> list[Stage]:
    """Every stage of the study, each config fully validated (a bad key fails here, before any work)."""
    tasks = [t.name for t in parse_tasks(",".join(study.tasks))]
    _check_sections(study, tasks, source)
    stages = []
    if study.tune is not None:
        stages += _tune_stages(from_mapping(TuneSettings, dict(study.tune), f"{source}: tune"), study, tasks, source)
    if study.joint is not None:
        stages += _joint_tune_stages(joint_settings(study, source), study, source)
    if study.baselines:
        first = next(iter(study.adapters))
        for task in tasks:
            keys = {**_train_keys(study, task, first, study.seeds[0]), "out": None}
            stages.append(Stage(StageId("baseline", task), "baseline",
                                from_mapping(TrainConfig, keys, f"{source}: baseline")))
    for seed in study.seeds:
        stages += _seed_stages(study, tasks, seed, source)
    return _linked(stages, study)


def _linked(stages: list[Stage], study: StudyConfig) -> list[Stage]:
    """Each stage's `needs`: the training stages whose folders it reads (merges and disentangle pairs their
    runs, joint runs their references), so that an executor can start it as soon as those are finished."""
    writers = {str(Path(study.out) / s.name): s.name for s in stages if s.kind == "train"}
    for stage in stages:
        reads = stage.config.references if stage.kind == "joint" else getattr(stage.config, "runs", None)
        stage.needs = tuple(writers[r] for r in reads or [] if r in writers)
    return stages


def recorded_study(folder: Path) -> StudyConfig:
    """The recipe the study in `folder` ran."""
    path = folder / STUDY_RECIPE
    if not path.is_file() or not written_by_fusekit(folder):
        raise FusekitError(f"{folder} is not a study folder (expected {STUDY_RECIPE} written by fusekit run)")
    return load_study(path)


def recorded_plan(folder: Path) -> list[Stage]:
    """The stages of the study in `folder`, planned from the recipe it ran (what the report reads identities from)."""
    return plan(recorded_study(folder), str(folder / STUDY_RECIPE))


def study_pairs(folder: Path, pairs: str) -> tuple[list[Path], int]:
    """Run folders in pairs for every task pair (`all`, or `sst2+rte,mrpc+cola`) of a study, each pair once per
    adapter variant (the recipe's order, its first seed): the folders and the number of variants."""
    study = recorded_study(folder)
    chosen = task_pairs(study.tasks, None if pairs == "all" else pairs.split(","))
    runs = [folder / train_id(study, task, variant, study.seeds[0]).name
            for pair in chosen for variant in study.adapters for task in pair]
    missing = next((run for run in runs if not run.is_dir()), None)
    if missing:
        raise FusekitError(f"{missing} is missing: run the study's train stages first (or choose --pairs)")
    return runs, len(study.adapters)


def _check_sections(study: StudyConfig, tasks: list[str], source: str) -> None:
    for key, settings in study.task_settings.items():
        task, _, variant = key.partition(":")
        if task not in tasks or (variant and variant not in study.adapters):
            raise FusekitError(f"{source}: task_settings key {key!r} names no task (or task:variant) of the study")
        if not isinstance(settings, dict):
            raise FusekitError(f"{source}: task_settings.{key} is {short(settings)}, expected a mapping of train keys")
    for variant, settings in study.adapters.items():
        if not isinstance(variant, str) or not SAFE_NAME.fullmatch(variant):
            raise FusekitError(f"{source}: adapters: variant name {short(variant)} must be letters, digits, '.', "
                               "'_' and '-' (it names the stage folders)")
        if not isinstance(settings, dict):
            raise FusekitError(f"{source}: adapters.{variant} must be a mapping of train keys")


def _seed_stages(study: StudyConfig, tasks: list[str], seed: int, source: str) -> list[Stage]:
    """One seed's training stages, then the merges, scaling subsets, joint baselines and disentangle pairs of
    its runs."""
    stages, runs = [], {}
    for variant in study.adapters:
        for task in tasks:
            stage_id = train_id(study, task, variant, seed)
            keys = {**_train_keys(study, task, variant, seed), "out": str(Path(study.out) / stage_id.name)}
            stages.append(Stage(stage_id, "train", from_mapping(TrainConfig, keys, f"{source}: {stage_id.name}")))
            runs.setdefault(variant, []).append(keys["out"])
    if study.merge is not None:
        merge = from_mapping(MergeSettings, dict(study.merge), f"{source}: merge")
        stages += _merge_stages(merge, study, runs, seed, source)
    if study.scaling is not None:
        scaling = from_mapping(ScalingSettings, dict(study.scaling), f"{source}: scaling")
        if any(k > len(tasks) for k in scaling.sizes or []):
            raise FusekitError(f"{source}: scaling.sizes: a subset cannot hold more than the {len(tasks)} tasks")
        subsets = [s for k in scaling.sizes or range(2, len(tasks) + 1)
                   for s in task_subsets(tasks, k, scaling.max_subsets, seed)]
        if on_seed(scaling.seeds, study, seed, f"{source}: scaling"):
            stages += _merge_stages(scaling, study, runs, seed, source, "scaling", tasks, subsets)
    if study.joint is not None:
        joint = joint_settings(study, source)
        if on_seed(joint.seeds, study, seed, f"{source}: joint"):
            stages += _joint_stages(joint, study, runs, seed, source)
    if study.disentangle is not None and seed == study.seeds[0]:
        settings = from_mapping(DisentangleSettings, dict(study.disentangle), f"{source}: disentangle")
        stages += _disentangle_stages(settings, study, runs, tasks, seed, source)
    return stages


def on_seed(seeds: list[int] | None, study: StudyConfig, seed: int, where: str) -> bool:
    """Whether a section that names `seeds` runs on `seed` (every seed when it names none)."""
    stray = next((s for s in seeds or [] if s not in study.seeds), None)
    if stray is not None:
        raise FusekitError(f"{where}.seeds: {stray} is not one of the study's seeds {study.seeds}")
    return seeds is None or seed in seeds


def _seed(study: StudyConfig, seed: int) -> int | None:
    """The seed a stage's identity carries: only a multi-seed study names its stages by seed."""
    return seed if len(study.seeds) > 1 else None


def train_id(study: StudyConfig, task: str, variant: str, seed: int) -> StageId:
    return StageId("train", task, variant, _seed(study, seed))


def task_subsets(tasks: list[str], k: int, limit: int | None, seed: int) -> list[tuple[str, ...]]:
    """Every subset of k tasks (in the study's order), or a seeded sample of `limit` of them."""
    every = list(itertools.combinations(tasks, k))
    if limit is None or len(every) <= limit:
        return every
    return sorted(random.Random(seed).sample(every, limit), key=every.index)


def tune_folder(study: StudyConfig, task: str, variant: str) -> Path:
    return Path(study.out) / StageId("tune", task, variant).name


def _train_keys(study: StudyConfig, task: str, variant: str, seed: int, tuned: bool = True) -> dict:
    """A train stage's keys: train < variant < task < task:variant < what a finished tune chose (if `tuned`)."""
    chosen = (chosen_settings(tune_folder(study, task, variant)) if tuned else None) or {}
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
            stage_id, folder = StageId("tune", task, variant), tune_folder(study, task, variant)
            keys = {**_train_keys(study, task, variant, study.seeds[0], tuned=False), "out": str(folder)}
            config = from_mapping(TrainConfig, keys, f"{source}: {stage_id.name}")
            grid = {**tune.grid, **tune.task_grids.get(task, {}), **tune.task_grids.get(f"{task}:{variant}", {})}
            point_configs(config, grid, folder, tune.held_out_examples, f"{source}: tune grid of {task}")
            stages.append(Stage(stage_id, "tune", TuneJob(config, variant, grid, tune.held_out_examples)))
    return stages


def tuned_recipe(study: StudyConfig, stages: list[Stage]) -> str:
    """The recipe with every finished tune's choice written into task_settings, a joint's into joint.settings (and
    no tune section or joint grid)."""
    settings = {k: dict(v) for k, v in study.task_settings.items()}
    joint = dict(study.joint) if study.joint is not None else None
    for stage in stages:
        if stage.kind == "tune":
            chosen = chosen_settings(Path(study.out) / stage.name)
            if chosen and stage.id.task is None:
                joint = {**joint, "settings": {**joint.get("settings", {}), **chosen}}
                joint.pop("grid", None)
            elif chosen:
                settings.setdefault(f"{stage.id.task}:{stage.id.variant}", {}).update(chosen)
    recipe = {**dataclasses.asdict(study), "task_settings": settings, "joint": joint}
    recipe.pop("tune")
    return yaml.safe_dump(recipe, sort_keys=False)


def merge_space_fits(method: str, space: str) -> bool:
    """Data-aware methods merge in one space (RegMean: ΔW, Fisher: factors); the others in any."""
    from fusekit.merging.methods import make_method

    needed = make_method(method).space
    return needed is None or needed == space


def _merge_stages(merge: MergeSettings, study, runs, seed, source, folder: str = "merge",
                  tasks: list[str] | None = None, subsets: list[tuple[str, ...]] | None = None) -> list[Stage]:
    """A merge per variant, space and method of all the runs, or (`subsets` of `tasks`) of each subset's runs."""
    wrong = [m for m in merge.per_task if m not in merge.methods or "lam" not in searched(m)]
    if wrong:
        raise FusekitError(f"{source}: {folder}.per_task: {wrong[0]!r} is not one of the merge's methods with a λ")
    wrong = [m for m in merge.calibrate if m not in merge.methods]
    if wrong:
        raise FusekitError(f"{source}: {folder}.calibrate: {wrong[0]!r} is not one of the merge's methods")
    stages = []
    for variant in merge.variants or list(study.adapters):
        if variant not in runs:
            raise FusekitError(f"{source}: {folder}.variants: {variant!r} is not one of the adapters")
        for space in ["factors"] if _linearized(study, variant) else merge.spaces:
            for method in [m for m in merge.methods if merge_space_fits(m, space)]:
                precision = _train_keys(study, study.tasks[0], variant, seed, tuned=False).get("precision", "auto")
                config = _merge_config(merge, method, space, seed, precision)  # the first run's, as `fusekit merge`
                kinds = [config] + ([dataclasses.replace(config, per_task=True)] if method in merge.per_task else []) \
                    + ([dataclasses.replace(config, calibrate=True)] if method in merge.calibrate else [])
                for subset in subsets or [()]:
                    chosen = [runs[variant][tasks.index(t)] for t in subset] or runs[variant]
                    stages += [Stage(StageId(folder, None, variant, _seed(study, seed), space, method,
                                             kind.per_task, kind.calibrate, tuple(subset)), "merge",
                                     MergeJob(chosen, kind))
                               for kind in kinds]
    return stages


def _merge_config(merge: MergeSettings, method: str, space: str, seed: int, precision: str) -> MergeConfig:
    """A study merge: every hyperparameter the method takes chosen on held-out data over the recipe's grids, in
    the precision its adapters trained in."""
    taken = searched(method)
    return MergeConfig(method=method, space=space, search=True, val_examples=merge.val_examples, seed=seed,
                       lambdas=merge.lambdas if "lam" in taken else None,
                       densities=merge.densities if "density" in taken else None,
                       rates=merge.drop_rates if "rate" in taken else None, criterion=merge.criterion,
                       select_on_seen=merge.select_on_seen, precision=precision)


def _linearized(study: StudyConfig, variant: str) -> bool:
    return study.adapters[variant].get("adapter", study.train.get("adapter", "lora")) != "lora"


def _disentangle_stages(settings: DisentangleSettings, study, runs, tasks, seed, source) -> list[Stage]:
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
                stage_id = StageId("disentangle", None, variant, _seed(study, seed), space, tasks=(first, second))
                stages.append(Stage(stage_id, "disentangle", job))
    return stages


def joint_settings(study: StudyConfig, source: str) -> JointSettings:
    """The recipe's joint section, checked before any stage reads it."""
    joint = from_mapping(JointSettings, dict(study.joint), f"{source}: joint")
    for balancer, own in joint.balancer_settings.items():
        if balancer not in joint.balancers or not isinstance(own, dict):
            raise FusekitError(f"{source}: joint.balancer_settings.{balancer}: expected one of the joint's balancers "
                               f"({', '.join(joint.balancers)}) mapped to JointConfig keys")
    return joint


def _joint_stages(joint: JointSettings, study, runs, seed, source) -> list[Stage]:
    stages = []
    for variant in joint.variants:
        if variant not in runs:
            raise FusekitError(f"{source}: joint.variants: {variant!r} is not one of the adapters")
        chosen = chosen_settings(joint_tune_folder(study, variant)) or {}
        for balancer in joint.balancers:
            stage_id = StageId("joint", None, variant, _seed(study, seed), balancer=balancer)
            keys = {**_joint_keys(joint, study, variant, seed, balancer), **chosen, "references": runs[variant],
                    "out": str(Path(study.out) / stage_id.name)}
            stages.append(Stage(stage_id, "joint", _joint_config(keys, f"{source}: {stage_id.name}")))
    return stages


def joint_tune_folder(study: StudyConfig, variant: str) -> Path:
    return Path(study.out) / StageId("tune", None, variant).name


def _joint_tune_stages(joint: JointSettings, study: StudyConfig, source: str) -> list[Stage]:
    """The joint's settings chosen on held-out examples, for its one variant: its first balancer on its first seed."""
    if not joint.grid:
        return []
    if len(joint.variants) > 1:  # the tuned recipe writes the choice into joint.settings, which every variant reads
        raise FusekitError(f"{source}: joint.grid tunes the joint run of one adapter variant: list one in "
                           f"joint.variants (got {', '.join(joint.variants)})")
    variant = joint.variants[0]
    if variant not in study.adapters:
        raise FusekitError(f"{source}: joint.variants: {variant!r} is not one of the adapters")
    stage_id, folder = StageId("tune", None, variant), joint_tune_folder(study, variant)
    keys = {**_joint_keys(joint, study, variant, (joint.seeds or study.seeds)[0], joint.balancers[0]),
            "out": str(folder)}
    config = _joint_config(keys, f"{source}: {stage_id.name}")
    point_configs(config, joint.grid, folder, joint.held_out_examples, f"{source}: joint.grid")
    return [Stage(stage_id, "tune", TuneJob(config, variant, joint.grid, joint.held_out_examples))]


def _joint_keys(joint: JointSettings, study: StudyConfig, variant: str, seed: int, balancer: str) -> dict:
    """A joint run's keys before tuning: train < variant < each task's own cap < joint settings < the balancer's."""
    keys = {**study.train, **study.adapters[variant], **_own_caps(study, variant, seed), **joint.settings,
            **joint.balancer_settings.get(balancer, {}), "tasks": ",".join(study.tasks), "balancer": balancer,
            "seed": seed, "checkpoint_every": study.checkpoint_every}
    keys.pop("task", None)
    return keys


def _joint_config(keys: dict, where: str) -> JointConfig:
    config = from_mapping(JointConfig, keys, where)
    try:
        config.task_caps()
    except FusekitError as error:
        raise FusekitError(f"{where}: {error}") from None
    return config


def _own_caps(study: StudyConfig, variant: str, seed: int) -> dict[str, list[str]]:
    """A joint trains each task on the examples its own adapter trained on: a task whose training stage is capped
    otherwise than the study's train keys keeps that cap (`task_max_train`)."""
    shared = {**study.train, **study.adapters[variant]}.get("max_train")
    own = {task: _train_keys(study, task, variant, seed).get("max_train") for task in study.tasks}
    caps = [f"{task}={cap}" for task, cap in own.items() if cap is not None and cap != shared]
    return {"task_max_train": caps} if caps else {}


def describe(stages: list[Stage]) -> str:
    """The plan as YAML, for `fusekit run --dry-run`."""
    return "\n".join(f"{s.name}:\n" + "\n".join("  " + line for line in (
        to_yaml(s.config) if s.kind in ("train", "baseline", "joint")
        else yaml.safe_dump(dataclasses.asdict(s.config), sort_keys=False)
    ).splitlines()) for s in stages)
