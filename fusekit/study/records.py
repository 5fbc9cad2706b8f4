"""What a study folder holds, read back for the report: the plan of its recorded recipe, each finished stage's
scores (or, in a study continued with `--restore`, the published scores of the training stages not run again),
merges normalized against their own adapters, the stage log."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from fusekit.artifacts.layout import CONFIG, DISENTANGLEMENT, EVAL, MANIFEST, STAGES, STUDY_RECIPE
from fusekit.artifacts.merged_folder import manifest_tasks
from fusekit.artifacts.reading import read_json, read_jsonl
from fusekit.evaluation.metrics import normalized_score
from fusekit.study.plan import Stage, StageId, recorded_plan, recorded_study
from fusekit.study.restore import published_scores


def read_record(path: Path) -> dict:
    """A record a stage may not have written yet: empty until it has."""
    return read_json(path) if path.is_file() else {}


def planned_stages(study: Path) -> tuple[Stage, ...]:
    """The stages the study's recorded recipe plans, planned once per version of that file for all the sections
    of a report (the report reads their identities and kinds, never their settings)."""
    recipe = study / STUDY_RECIPE
    status = recipe.stat() if recipe.is_file() else None
    return _planned(study.resolve(), status and (status.st_mtime_ns, status.st_size))


@functools.lru_cache(maxsize=4)
def _planned(study: Path, version: tuple[int, int] | None) -> tuple[Stage, ...]:
    return tuple(recorded_plan(study))


def stage_ids(study: Path, folder: str) -> list[StageId]:
    """The planned stages of one folder kind (train, merge, …) that have a folder: identities from the plan of the
    recorded recipe, never parsed from a name."""
    return [s.id for s in planned_stages(study) if s.id.folder == folder and (study / s.name).is_dir()]


def finished_runs(study: Path) -> dict[StageId, dict]:
    """Each finished training stage → its recorded scores for its task (its published ones in a study continued
    with --restore, where it has not run again)."""
    found = {}
    for stage in planned_stages(study):
        if stage.kind == "train":
            scores = train_scores(study, stage.id)
            if stage.id.task in scores:
                found[stage.id] = scores[stage.id.task]
    return found


def train_scores(study: Path, stage_id: StageId) -> dict:
    """A training stage's eval.json: its folder's if it ran here, else what was published (empty if neither)."""
    folder = study / stage_id.name
    return read_record(folder / EVAL) if (folder / CONFIG).is_file() else published_scores(study, stage_id.name)


def declared_variants(study: Path) -> list[str]:
    """The adapter variants in the order the recipe declares them (the first is the reference)."""
    return list(recorded_study(study).adapters)


def declared_tasks(study: Path) -> list[str]:
    """The study's tasks in the recipe's order."""
    return list(recorded_study(study).tasks)


def in_recipe_order(study: Path, variants: list[str]) -> list[str]:
    """Adapter variants in the order the recipe declares them, others after."""
    declared = declared_variants(study)
    return [v for v in declared if v in variants] + [v for v in variants if v not in declared]


def multitask_rows(study: Path, kind: str) -> list[tuple[StageId, dict, dict]]:
    """(name, manifest, scores) of each scored merged (kind=merge) or joint (kind=joint) folder; scores hold
    each task's raw score and its normalized score against the task's own adapter (None where undefined)."""
    rows = []
    for stage_id in stage_ids(study, kind):
        folder = study / stage_id.name
        manifest, scores = read_record(folder / MANIFEST), read_record(folder / EVAL)
        if manifest and all(task in scores for task in manifest_tasks(manifest, folder)):
            rows.append((stage_id, manifest, normalize(study, manifest, scores)))
    return rows


def normalize(study: Path, manifest: dict, scores: dict) -> dict:
    """Raw and normalized score per task, from the recorded scores of each task's own adapter (same examples).

    Input runs are recorded as given to `fusekit run` (often relative to where it ran): a run not found there
    is looked up in the study's own train/ folder.
    """
    result = {}
    for item in manifest["inputs"]:
        task, mine, own = item["task"], scores[item["task"]], None
        if item.get("run"):
            run = Path(item["run"]) if Path(item["run"]).is_dir() else study / "train" / Path(item["run"]).name
            own = (read_record(run / EVAL) or published_scores(study, f"train/{run.name}")).get(task)
        same = own is not None and same_examples(own, mine)
        result[task] = {"score": mine["score"], "normalized": normalized_score(mine["score"], own["score"])
                        if same else None}
    return result


def same_examples(a: dict, b: dict) -> bool:
    """Two scores on the same examples: by fingerprint, or (records from before fingerprints) by count."""
    if "examples_fingerprint" in a or "examples_fingerprint" in b:
        return a.get("examples_fingerprint") == b.get("examples_fingerprint")
    return a.get("examples") == b.get("examples")


def scaling_points(study: Path) -> dict[str, dict[int, list[float]]]:
    """Fusion vs the number of tasks: merge setting → k → the average normalized score of each scored subset."""
    points: dict[str, dict[int, list[float]]] = {}
    for stage_id in stage_ids(study, "scaling"):
        average = read_record(study / stage_id.name / EVAL).get("average_normalized", {}).get("normalized")
        if average is not None:
            points.setdefault(stage_id.setting, {}).setdefault(len(stage_id.tasks), []).append(average)
    return points


def similarity_matrices(study: Path, tasks: list[str]) -> list[tuple[str, np.ndarray]]:
    """Each adapter variant's task-vector cosine similarities (its first seed's runs, the study's task order)."""
    from fusekit.artifacts.run_folder import load_run
    from fusekit.merging.similarity import similarity_matrix

    folders: dict[str, dict[str, Path]] = {}
    for stage_id in stage_ids(study, "train"):  # planned seed by seed: the first seed's run comes first
        if (study / stage_id.name / CONFIG).is_file():
            folders.setdefault(stage_id.variant, {}).setdefault(stage_id.task, study / stage_id.name)
    return [(variant, similarity_matrix([load_run(folders[variant][t]) for t in tasks]))
            for variant in in_recipe_order(study, list(folders))
            if len(tasks) > 1 and set(folders[variant]) >= set(tasks)]


def disentanglement_grids(study: Path) -> dict[str, dict[str, object]]:
    """Task pair → setting (`<variant>-<space>`) → its `Disentanglement`, from the study's disentangle stages."""
    from fusekit.study.disentangle import Disentanglement

    grids: dict[str, dict[str, object]] = {}
    for stage_id in stage_ids(study, "disentangle"):
        path = study / stage_id.name / DISENTANGLEMENT
        if path.is_file():
            for record in read_json(path, "disentanglement", expect=list):
                pair, setting = "+".join(stage_id.tasks), f"{stage_id.variant}-{stage_id.space}"
                grids.setdefault(pair, {})[setting] = Disentanglement.from_json(record)
    return grids


def latest_records(study: Path) -> dict[str, dict]:
    """Each stage's latest `stages.jsonl` record: its state (queued, running, done, failed, stopped)."""
    path = study / STAGES
    return {r["stage"]: r for r in (read_jsonl(path, "stage log") if path.is_file() else []) if "stage" in r}
