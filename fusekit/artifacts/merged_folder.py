"""A merged folder: what `fusekit merge` writes, and how `fusekit eval` scores it against its inputs.

Its files are listed in fusekit.artifacts.layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fusekit.artifacts.atomic import atomic_write_json, load_tensors, save_tensors, staged_dir
from fusekit.artifacts.checksums import ChecksummedFolder, digests, sha256
from fusekit.artifacts.layout import EVAL, MANIFEST, PEFT, TASK_VECTOR, head_file
from fusekit.artifacts.run_folder import Run, load_run, model_for_vector
from fusekit.artifacts.task_vector import TaskVector
from fusekit.data.tasks import get_task
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
        model.save_peft_folder(stage / PEFT / name)
    atomic_write_json(stage / MANIFEST, {
        "format": FORMAT, "kind": vector.meta["kind"], "rank": vector.meta["rank"],
        "base_model": vector.meta["base_model"], "base_fingerprint": vector.meta["base_fingerprint"],
        "model": model_name, "checksums": digests(stage), **manifest,
    })


def write_merged(out: Path, runs: list[Run], vector: TaskVector, merge: dict, overwrite: bool) -> None:
    """The merged folder of `runs`; `merge` says what the merge did (method, params, space, weights, rank,
    truncation errors, search table), as the merging code describes it: this format does not know the methods."""
    first = runs[0]
    with staged_dir(out, overwrite, "merged") as stage:
        write_multitask(stage, vector, {run.head_task: run.head for run in runs}, first.config.model, {
            **merge,
            "inputs": [{"run": str(run.folder), "task": run.head_task, "sha256": sha256(run.folder / TASK_VECTOR)}
                       for run in runs],
            "data": first.config.data, "max_length": first.config.max_length,
        })


def is_merged(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_merged(folder: Path) -> tuple[dict, TaskVector, dict[str, dict[str, torch.Tensor]]]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except json.JSONDecodeError as error:
        raise FusekitError(f"{folder / MANIFEST} is not JSON ({error})") from None
    if manifest.get("format") != FORMAT:
        raise FusekitError(f"{folder / MANIFEST}: not a fusekit merged folder (expected format {FORMAT})")
    files = ChecksummedFolder(folder, manifest.get("checksums", {}), MANIFEST)
    heads = {item["task"]: TaskHead(*_head(files.path(head_file(item["task"])))) for item in manifest["inputs"]}
    return manifest, TaskVector.load(files.path(TASK_VECTOR)), heads


def _head(path: Path) -> tuple[dict[str, torch.Tensor], HeadSpec]:
    weights, meta = load_tensors(path)
    return weights, HeadSpec.from_meta(meta)


def individual_score(run_folder: Path, task: str, examples: int, evaluate_run) -> float:
    """The task's own adapter's score on the same split: as its run folder recorded it, or evaluated now."""
    path = Path(run_folder) / EVAL
    recorded = json.loads(path.read_text()).get(task) if path.is_file() else None
    if recorded and recorded.get("examples") == examples:
        return float(recorded["score"])
    return float(evaluate_run(load_run(Path(run_folder)))["score"])
