"""A study's recipe: what `fusekit run` reads, each section a typed settings class with every key's default, help
and allowed values (a bad key fails before any work)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fusekit.artifacts.reading import load_recipe
from fusekit.config import AT_LEAST_ONE, NON_NEGATIVE, Allowed, registry, setting
from fusekit.study.disentangle import ALPHAS


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
    calibrate: list[str] = setting([], "methods merged once more with answer offsets fitted on the same held-out "
                                       "examples (`fusekit merge --calibrate`; stage names end in -calibrated)",
                                   Allowed(unique=True))
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
    seeds: list[int] | None = setting(None, "the study's seeds to run it on (None: every one)", Allowed(unique=True))


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
    seeds: list[int] | None = setting(None, "the study's seeds to run it on (None: every one)", Allowed(unique=True))
    settings: dict = setting({}, "JointConfig keys (sampling, temperature, lr, ...)")
    balancer_settings: dict = setting({}, "balancer → JointConfig keys for its run alone (coba: {coba_interval: 3}): "
                                          "a finished run of another balancer is not held to them")
    grid: dict = setting({}, "JointConfig keys → values, chosen on held-out training examples before any joint run "
                             "(tune/joint-<variant>: the first balancer on the first seed); every joint run of the "
                             "variant then uses the choice")
    held_out_examples: int = setting(500, "held-out training examples per task scored at each grid point",
                                     AT_LEAST_ONE)


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


def load_study(path: Path) -> StudyConfig:
    """The recipe at `path`, validated section by section when planned."""
    return load_recipe(path, StudyConfig)
