"""The names and layouts of every file and folder fusekit writes: the one module that knows them.

A run folder, written by `fusekit train` (fusekit.artifacts.run_folder):

    config.yaml                  resolved config (a recipe that reproduces the run)
    adapter_config.json          PEFT folder: plain `PeftModel.from_pretrained(base, run_dir)` loads it
    adapter_model.safetensors
    task_vector.safetensors      τ = φ − φ0 and φ0, with metadata (see fusekit.artifacts.task_vector)
    head.safetensors             the task's classification head
    checksums.json               sha256 of every other file (JSON and YAML too), checked when a file is first read
    metrics.jsonl                loss per step, eval per epoch
    eval.json                    latest scores per task (updated by `fusekit eval`)

A merged folder, written by `fusekit merge` and `fusekit joint` (fusekit.artifacts.merged_folder):

    manifest.json              inputs (run, task, sha256 of its task vector), method and hyperparameters,
                               space, rank, truncation error, base model and fingerprint, λ search table
    checksums.json             sha256 of every other file (older merged folders listed tensor files in the manifest)
    task_vector.safetensors    the merged vector (φ0 and τ)
    heads/<task>.safetensors   each task's own head (heads are never merged)
    peft/<task>/               plain-peft folder per task: the merged LoRA (nonlinear) with that task's head
    eval.json                  per-task scores and normalized scores (written by `fusekit eval`)
    config.yaml, metrics.jsonl, weights.png    (joint only) the config, the training log, the balancer weights

A checkpoint folder beside a run's output (fusekit.artifacts.checkpoint):

    <out>.checkpoint/manifest.json     step, file name, its sha256 and the run's config
    <out>.checkpoint/step-000120.pt    adapter and head weights, balancer, optimizer and scheduler state, RNG
                                       states, data-loader positions, training seconds, metrics.jsonl so far

Beside a run: <run>.stats/<kind>-n<examples>-seed<seed>-<φ0>.safetensors, the Gram matrices (RegMean) or Fishers
(Fisher merging) of that run on held-out training examples, cached and sealed (fusekit.merging.statistics).

A study folder, written by `fusekit run` and `fusekit report` (fusekit.study):

    <out>/recipe.yaml                      the recipe as last run
    <out>/recipe.tuned.yaml                the recipe with the tuned settings written into task_settings
    <out>/tune/<task>-<variant>/           `fusekit tune` folders: a run per grid point, tune.json
    <out>/baseline/<task>/baseline.json    majority, zero-shot and head-only scores (`fusekit baseline`)
    <out>/train/<task>-<variant>/          one run folder per task and adapter variant (`fusekit train`)
    <out>/merge/<variant>-<space>-<method>/  merged folders, scored on every task (`fusekit merge` + `eval`)
    <out>/scaling/<variant>-<space>-<method>-k<k>-<task+task...>/  merged folders of task subsets (fusion vs k)
    <out>/joint/<variant>-<balancer>/      joint baselines (`fusekit joint`)
    <out>/stages.jsonl                     wall time and peak memory of each stage, one line per stage run
    <out>/report.md, <out>/report/*.png    the report (`fusekit report`): lambda-sweep.png, weights-<joint>.png

A published results folder, written by `fusekit report --publish DIR` (fusekit.study.publish), for git to keep:

    report.md, report/*.png, recipe.yaml, stages.jsonl    copies of the study's
    scores.json                            every stage's scores: stage name → its eval.json or baseline.json

Folders are written under a temporary sibling `<name>.tmp-*` and renamed into place when complete; each holds
`.fusekit.json` (what wrote it), and `<name>.lock` exists beside a folder while a command writes it.
"""

from __future__ import annotations

from pathlib import Path

# run folders
CONFIG = "config.yaml"  # a folder holding this file holds a finished run
TASK_VECTOR = "task_vector.safetensors"
HEAD = "head.safetensors"
CHECKSUMS = "checksums.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"  # peft's own names: a folder holding both loads with PeftModel.from_pretrained

# merged and joint folders
MANIFEST = "manifest.json"
PEFT = "peft"
BALANCER_PLOT = "weights.png"


def head_file(task: str) -> str:
    """A task's head in a merged folder, relative to the folder."""
    return f"heads/{task}.safetensors"


# checkpoint folders (their manifest is MANIFEST too)
CHECKPOINT_GLOB = "step-*.pt"


def checkpoint_dir(out: Path) -> Path:
    return out.with_name(f"{out.name}.checkpoint")


def checkpoint_file(step: int) -> str:
    return f"step-{step:06d}.pt"


def statistics_dir(run: Path) -> Path:
    """Cached per-run statistics for data-aware merges (Gram matrices, Fishers), beside the run folder."""
    return run.with_name(f"{run.name}.stats")


def is_checkpoint_dir(folder: Path) -> bool:
    return folder.name.endswith(".checkpoint")


# staging: a folder being written is a sibling `<name>.tmp-*` until it is renamed into place
STAGING = ".tmp-"

# every folder fusekit writes holds MARKER (what wrote it); `<out>.lock` exists while a command writes `out`
MARKER = ".fusekit.json"
LOCK_SUFFIX = ".lock"

# tune folders (`fusekit tune`): one run folder per grid point, and the table
TUNE = "tune.json"

# disentanglement folders (`fusekit disentangle`)
DISENTANGLEMENT = "disentanglement.json"
DISENTANGLEMENT_PLOT = "disentanglement.png"

# baselines (`fusekit baseline`)
BASELINE = "baseline.json"

# study folders
STUDY_RECIPE = "recipe.yaml"
TUNED_RECIPE = "recipe.tuned.yaml"  # the recipe with the settings its tune stages chose, ready to rerun
STAGES = "stages.jsonl"
PUBLISHED_SCORES = "scores.json"
PUBLISHED_VERBALIZERS = "verbalizers.json"  # a text study's prompt and answer words per task, as its runs used
PUBLISHED_RECORDS = "records.json"  # the other records a report reads: merge manifests, disentanglement grids
RESTORED_SCORES = "restored-scores.json"  # in a study continued with --restore: the published training scores
REPORT = "report.md"
REPORT_FIGURES = "report"
SWEEP_PLOT = "lambda-sweep.png"
SCALING_PLOT = "scaling.png"
SIMILARITY_PLOT = "similarity.png"


def joint_plot(name: str) -> str:
    """The report's figure of one joint baseline's balancer weights."""
    return f"weights-{name}.png"
