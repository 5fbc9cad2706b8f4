"""A merged folder: what `fusekit merge` writes, and how `fusekit eval` scores it against its inputs.

Its files are listed in fusekit.artifacts.layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fusekit.artifacts.atomic import atomic_write_json, load_tensors, save_tensors
from fusekit.artifacts.checksums import ChecksummedFolder, sha256
from fusekit.artifacts.layout import CONFIG, EVAL, MANIFEST, PEFT, TASK_VECTOR, head_file
from fusekit.artifacts.reading import read_json
from fusekit.artifacts.run_folder import (
    Run,
    check_verbalizers,
    load_run,
    model_for_vector,
    write_peft_folder,
)
from fusekit.artifacts.staging import staged_dir
from fusekit.artifacts.task_vector import TaskVector
from fusekit.data.tasks import TASKS, get_task
from fusekit.errors import FusekitError
from fusekit.models.heads import HeadSpec, TaskHead

FORMAT = "fusekit.artifacts.merged_folder/1"


def write_multitask(stage: Path, vector: TaskVector, heads: dict[str, TaskHead],
                    model_name: str | None, manifest: dict) -> None:
    """One adapter for several tasks (merged or jointly trained): vector, heads, a PEFT folder per task, manifest."""
    vector.save(stage / TASK_VECTOR)
    for name, head in heads.items():
        save_tensors(stage / head_file(name), head.weights, {"task": name, **head.spec.meta()})
        _, model = model_for_vector(model_name, vector, head, get_task(name), str(stage), nonlinear=True)
        write_peft_folder(stage / PEFT / name, model)
    atomic_write_json(stage / MANIFEST, {
        "format": FORMAT, "kind": vector.meta["kind"], "rank": vector.meta["rank"],
        "base_model": vector.meta["base_model"], "base_fingerprint": vector.meta["base_fingerprint"],
        "model": model_name, **manifest,
    })


def write_merged(out: Path, runs: list[Run], vector: TaskVector, merge: dict, overwrite: bool) -> None:
    """The merged folder of `runs`; `merge` says what the merge did (method, params, space, weights, rank,
    truncation errors, search table), as the merging code describes it: this format does not know the methods."""
    first = runs[0]
    with staged_dir(out, overwrite, "merged") as stage:
        write_multitask(stage, vector, {run.head_task: run.head for run in runs}, first.config.model, {
            **merge,
            "inputs": [{"run": str(run.folder), "task": run.head_task, "sha256": sha256(run.folder / TASK_VECTOR),
                        "max_length": run.config.max_length} for run in runs],
            "data": first.config.data, "max_length": first.config.max_length,
        })


def input_max_length(manifest: dict, item: dict) -> int:
    """The max length a merged task is scored at: its own run's, as it trained and as the merge's search scored it
    (a joint run's, one for all its tasks). Merges written before each input recorded it hold the first run's alone:
    then the run's config, while its folder is there."""
    if isinstance(item.get("max_length"), int):
        return item["max_length"]
    run = item.get("run")
    if manifest.get("method") != "joint" and run and (Path(run) / CONFIG).is_file():
        return load_run(Path(run)).config.max_length
    return manifest["max_length"]


def is_merged(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_merged(folder: Path) -> tuple[dict, TaskVector, dict[str, dict[str, torch.Tensor]]]:
    files = ChecksummedFolder.open(folder)
    manifest = read_json(files.path(MANIFEST), "manifest")
    if manifest.get("format") != FORMAT:
        raise FusekitError(f"{folder / MANIFEST}: not a fusekit merged folder (expected format {FORMAT})")
    heads = {task: TaskHead(*_head(files.path(head_file(task)))) for task in manifest_tasks(manifest, folder)}
    vector = TaskVector.load(files.path(TASK_VECTOR))
    check_verbalizers(folder, vector.meta, list(heads))
    return manifest, vector, heads


def manifest_tasks(manifest: dict, folder: Path) -> list[str]:
    """The tasks a manifest lists, each a known GLUE task (a name read from a file never becomes a path unchecked)."""
    inputs = manifest.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise FusekitError(f"{folder / MANIFEST}: 'inputs' is missing or not a list of the merged runs")
    tasks = [item.get("task") if isinstance(item, dict) else None for item in inputs]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise FusekitError(f"{folder / MANIFEST}: input task {str(unknown[0])[:40]!r} is not a GLUE task")
    return tasks


def _head(path: Path) -> tuple[dict[str, torch.Tensor], HeadSpec]:
    weights, meta = load_tensors(path)
    return weights, HeadSpec.from_meta(meta)


def individual_score(run_folder: Path, task: str, fingerprint: str, evaluate_run) -> float:
    """The task's own adapter's score on exactly the same examples (`fingerprint`): as its run folder recorded it
    when the recorded score is on those examples, else evaluated now."""
    run = load_run(Path(run_folder))
    path = run.files.path(EVAL)
    recorded = read_json(path, "scores").get(task) if path.is_file() else None
    if isinstance(recorded, dict) and recorded.get("examples_fingerprint") == fingerprint and isinstance(
            recorded.get("score"), (int, float)):
        return float(recorded["score"])
    return float(evaluate_run(run)["score"])
