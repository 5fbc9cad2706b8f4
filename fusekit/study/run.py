"""`fusekit run`: a whole study from one recipe — per-task adapters, merges, joint baselines — resumable.

The recipe (study/recipe.py) is validated and expanded into a plan of stages (study/plan.py) before any work
starts. Each stage writes its own folder under the study directory (atomically, so a folder that exists is
finished); running the same command again skips finished stages, and a training stage killed midway resumes from
its last checkpoint.

The study folder's layout is listed in fusekit.artifacts.layout.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

from fusekit.artifacts.atomic import atomic_write_text
from fusekit.artifacts.layout import (
    BASELINE,
    CONFIG,
    DISENTANGLEMENT,
    EVAL,
    MANIFEST,
    MARKER,
    STAGES,
    STUDY_RECIPE,
    TUNE,
    TUNED_RECIPE,
)
from fusekit.artifacts.output import check_output, claim_output, mark
from fusekit.artifacts.reading import read_json, read_text, read_yaml
from fusekit.artifacts.run_folder import check_recorded_words
from fusekit.errors import FusekitError
from fusekit.models.defaults import changed_settings
from fusekit.progress import JsonlLog, console
from fusekit.study.executors import Executor, LocalExecutor
from fusekit.study.plan import (
    DisentangleJob,
    MergeJob,
    Stage,
    StageId,
    TuneJob,
    plan,
    train_id,
    tuned_recipe,
)
from fusekit.study.recipe import StudyConfig, load_study
from fusekit.study.resources import measure
from fusekit.study.restore import restore as restore_published
from fusekit.training.parallel import processes
from fusekit.training.tune import point_configs, point_scores, tune


def waiting_for_tunes(study: StudyConfig, stages: list[Stage], out: Path, only: str | None) -> None:
    """Refuse to train (or score a baseline) with settings a selected stage's tune has not chosen yet: it would
    train at the defaults, and the finished tune would then find the stage run with other settings."""
    first = next(iter(study.adapters))
    chosen = {s.name for s in with_needs([s for s in stages if selected(s.name, only)], stages, out)}
    for stage in stages:
        if stage.kind != "tune" or is_done(stage, out):
            continue
        task, variant = stage.id.task, stage.id.variant
        if task is None:  # a joint's tune: every joint run of the variant waits
            waiting = [s.id for s in stages if s.kind == "joint" and s.id.variant == variant]
        else:
            waiting = [train_id(study, task, variant, seed) for seed in study.seeds]
            waiting += [StageId("baseline", task)] if variant == first else []
        blocked = next((w.name for w in waiting if w.name in chosen), None)
        if blocked:
            raise FusekitError(f"{blocked} waits for {stage.name} to choose its settings: run that first "
                               f"(--only {stage.name}) or select both")



FINISHED_FILE = {"tune": TUNE, "baseline": BASELINE, "disentangle": DISENTANGLEMENT}  # train, joint: CONFIG


def is_done(stage: Stage, out: Path) -> bool:
    """Finished stages leave their folder (written atomically); a merge is finished once it is scored."""
    folder = out / stage.name
    if stage.kind == "merge":
        path = folder / EVAL
        return path.is_file() and "average_normalized" in read_json(path, "scores")
    return (folder / FINISHED_FILE.get(stage.kind, CONFIG)).is_file()


def check_unchanged(stage: Stage, out: Path) -> None:
    """A finished stage is reused only if the recipe still asks for the same one."""
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
        for point in point_configs(job.config, job.grid, Path(job.config.out), job.held_out_examples):
            if (point.output_dir() / CONFIG).is_file():  # trained with settings the recipe has changed since,
                point_scores(point.output_dir(), point)  # or scored on other held-out examples
                check_recorded_words(point.output_dir())  # or asked in other words than fusekit asks now
    if stage.kind == "merge":
        changed = changed_merge(read_json(out / stage.name / MANIFEST, "merge manifest"), stage.config)
        if changed:
            raise FusekitError(f"{out / stage.name} was merged with different {', '.join(changed)} than the recipe "
                               "asks (delete the folder to merge again, or change `out`)")
    if stage.kind == "baseline":  # files from before baselines recorded settings: held to the settings' defaults
        recorded = read_json(out / stage.name / BASELINE, "baselines").get("settings", {})
        changed = changed_settings(recorded, stage.config) if isinstance(recorded, dict) else ["settings"]
        if changed:
            raise FusekitError(f"{out / stage.name} was computed with different {', '.join(changed)} than the "
                               "recipe asks (delete the folder to rerun it, or change `out`)")
    if stage.kind not in ("train", "joint"):
        return
    recorded = read_yaml(out / stage.name / CONFIG, "recorded config")
    if not isinstance(recorded, dict):
        raise FusekitError(f"{out / stage.name / CONFIG} is not a mapping of settings: delete the folder to rerun")
    changed = changed_settings(recorded, stage.config)
    if changed:
        raise FusekitError(f"{out / stage.name} was run with different {', '.join(changed)} than the recipe asks "
                           "(delete the folder to rerun it, or change `out`)")
    check_recorded_words(out / stage.name)  # asked in the words fusekit asks now


def changed_merge(manifest: dict, job: MergeJob) -> list[str]:
    """The settings (and inputs) of a finished merge that differ from what the recipe asks now. Manifests from
    before merges recorded their settings are held to what they did record: method, space, criterion, answer
    offsets and inputs (and were all made at precision auto)."""
    wanted = job.config.recorded()
    recorded = manifest.get("settings")
    if not isinstance(recorded, dict):
        recorded = {"method": manifest.get("method"), "calibrate": "calibration" in manifest, "precision": "auto"}
        if "search_criterion" in manifest:
            recorded["criterion"] = manifest["search_criterion"]
        if job.config.space is not None:
            recorded["space"] = manifest.get("space")
    changed = sorted(k for k in wanted if k in recorded and recorded[k] != wanted[k])
    runs = [item.get("run") for item in manifest.get("inputs", []) if isinstance(item, dict)]
    return changed + (["inputs"] if runs != list(job.runs) else [])


def selected(name: str, only: str | None) -> bool:
    """`only`: comma-separated prefixes or glob patterns of stage names, e.g. `train/,merge/lora-*`."""
    return only is None or any(name.startswith(p) or fnmatch(name, p) for p in only.split(","))


# every module a stage imports when it first runs (tests/test_study.py checks that they cover all such imports)
STAGE_MODULES = ("fusekit.training.train", "fusekit.training.joint", "fusekit.training.tune", "fusekit.merging.merge",
                 "fusekit.merging.statistics", "fusekit.merging.similarity", "fusekit.evaluation.eval",
                 "fusekit.evaluation.baselines", "fusekit.study.disentangle", "fusekit.study.plots",
                 "fusekit.study.diagnostics", "fusekit.study.criterion_choices")


def load_stage_code() -> None:
    """Import all the code the stages run before the first starts: a study of hours then runs one version of
    fusekit throughout, even while its files are edited (a module first imported mid-study would be the new
    one, beside old ones already loaded)."""
    for name in STAGE_MODULES:
        importlib.import_module(name)


def run_study(recipe: Path, only: str | None = None, executor: Executor | None = None,
              restore: Path | None = None) -> list[Stage]:
    """Run every unfinished stage of the recipe that `only` selects (and the unfinished ones they need), with
    `executor` (default: here, one after another): the tune stages first, then the rest as planned again, so that
    training uses what the tunes chose. `restore`: a folder this study published, to continue from."""
    study = load_study(recipe)
    load_stage_code()
    stages = plan(study, str(recipe))
    if only is not None and restore is None and not any(selected(s.name, only) for s in stages):
        raise FusekitError(f"--only {only!r}: no stage of {recipe} matches it (`fusekit run {recipe} --dry-run` "
                           "lists them)")
    out = Path(study.out)
    executor = executor or LocalExecutor()
    procs = processes()  # training stages run data parallel; merges on the main process alone
    if procs.active and not isinstance(executor, LocalExecutor):
        raise FusekitError("a study under torchrun runs its stages here (--executor local): each process is one "
                           "of a stage's data-parallel workers")
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
            if restore is not None:
                restored = restore_published(study, str(recipe), restore)
                console.print(f"restored {len(restored)} finished stages from {restore}")
        procs.barrier()
        if any(s.kind == "tune" for s in stages):
            _run_stages([s for s in stages if s.kind == "tune"], out, only, executor)
            stages = plan(study, str(recipe))
            if procs.is_main:
                atomic_write_text(out / TUNED_RECIPE, tuned_recipe(study, stages))
            waiting_for_tunes(study, stages, out, only)
        _run_stages([s for s in stages if s.kind != "tune"], out, only, executor)
    finally:
        if procs.is_main:
            lock.release()
    return stages


def _run_stages(stages: list[Stage], out: Path, only: str | None, executor: Executor) -> None:
    procs = processes()
    todo = with_needs([s for s in stages if selected(s.name, only)], stages, out)
    if not todo:  # e.g. the tune pass of a piece that selects no tune
        return
    for stage in todo:
        if is_done(stage, out):
            check_unchanged(stage, out)
    pending = [s for s in todo if not is_done(s, out)]
    console.print(f"study {out}: {len(todo)} stages, {len(todo) - len(pending)} finished, {len(pending)} to run")
    log = JsonlLog(out / STAGES) if procs.is_main else None
    try:
        executor.run(pending, out, run_stage, log)
    finally:
        if log:
            log.close()
    if procs.is_main:
        _record_criterion_choices([s for s in todo if s.id.folder == "merge" and s not in pending], out)


def _record_criterion_choices(finished: list[Stage], out: Path) -> None:
    """Finished merges from before each criterion's choice was scored on dev: scored now, where their runs are
    here (a merge restored from published results without its runs keeps what was published)."""
    from fusekit.study.criterion_choices import missing, record_choices

    for stage in finished:
        job: MergeJob = stage.config
        if missing(out / stage.name):
            if all((Path(run) / CONFIG).is_file() for run in job.runs):
                record_choices(out / stage.name, job.config)
            else:
                console.print(f"note: {stage.name}: its runs are not here, so its selection criteria's choices "
                              "are not scored on dev")


def with_needs(chosen: list[Stage], stages: list[Stage], out: Path) -> list[Stage]:
    """The chosen stages and the unfinished stages the unfinished ones need, in plan order: a piece of a study
    runs whole."""
    by_name, wanted = {s.name: s for s in stages}, {s.name for s in chosen}
    pending = [s.name for s in chosen if not is_done(s, out)]
    while pending:
        for need in by_name[pending.pop()].needs:
            if need not in wanted and need in by_name and not is_done(by_name[need], out):
                wanted.add(need)
                pending.append(need)
    return [s for s in stages if s.name in wanted]


def run_stage(stage: Stage, out: Path) -> dict:
    """One stage, wherever the executor runs it; returns its wall time and peak memory. Training stages run data
    parallel under torchrun; merges on the main process alone."""
    procs = processes()
    with measure() as usage:
        if stage.kind != "merge" or procs.is_main:
            RUNNERS[stage.kind](stage, out)
    procs.barrier()
    return usage


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
    from fusekit.study.criterion_choices import missing, record_choices

    job: MergeJob = stage.config
    folder = out / stage.name
    run_merge(job.config, [Path(r) for r in job.runs], folder, overwrite=True)
    score_folders([folder], None, None, None, 128, "auto", None)
    if stage.id.folder == "merge" and missing(folder):  # the other criteria's choices, on dev for the report
        record_choices(folder, job.config)


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
