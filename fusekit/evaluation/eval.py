"""`fusekit eval`: score run folders and merged folders on validation splits, print a table, record results.

TaskScorer scores many task vectors on one task's examples, building the model once per adapter shape; the
hyperparameter search uses it too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from fusekit.artifacts.atomic import atomic_write_json
from fusekit.artifacts.layout import MANIFEST
from fusekit.artifacts.merged_folder import individual_score, input_max_length, is_merged, load_merged
from fusekit.artifacts.output import check_output_file
from fusekit.artifacts.run_folder import load_run, model_for_vector, record_eval
from fusekit.artifacts.task_vector import TaskVector
from fusekit.config import PRECISIONS
from fusekit.data.loading import EncodedSplit, Split, load_split
from fusekit.data.tasks import get_task, parse_tasks
from fusekit.errors import FusekitError
from fusekit.evaluation.calibration import answer_count, check_offsets
from fusekit.evaluation.loop import predict, scored
from fusekit.evaluation.metrics import mean_defined, normalized_score
from fusekit.models.adapters import AdaptedModel, AdapterSpec
from fusekit.models.base import fingerprint, resolve_device
from fusekit.models.heads import TaskHead
from fusekit.progress import console

# (scorer, forward, vector) → logits, labels, mean loss: what this process has predicted already
PREDICTED: dict[tuple, tuple[np.ndarray, np.ndarray, float]] = {}
PREDICTED_LIMIT = 4096  # entries are a few thousand logits each


class TaskScorer:
    """Scores vectors on `split` with one task head and base model; λ searches call it once per grid point.

    A vector is predicted once per process, keyed by its content: a study's merges of the same runs score the same
    vectors again (each input adapter on its held-out examples in every merge; a calibrated or per-task merge its
    twin's grid points and, when it chooses the same one, its dev examples)."""

    def __init__(self, model_name: str | None, max_length: int, split: Split, head: TaskHead,
                 device: torch.device, batch_size: int = 128, source: str = "", precision: str = "auto"):
        self.model_name, self.max_length, self.source, self.precision = model_name, max_length, source, precision
        self.split, self.head, self.device, self.batch_size = split, head, device, batch_size
        self.task = split.task
        self.examples = split.fingerprint()
        self.identity = (model_name, max_length, self.examples, fingerprint(head.weights), repr(head.spec),
                         str(device), batch_size, precision)
        self._cache: dict[tuple, tuple[AdaptedModel, EncodedSplit]] = {}

    def score(self, vector: TaskVector, nonlinear: bool = False, progress: str | None = None,
              offsets: list[float] | None = None) -> dict[str, float]:
        return scored(self.task, *self._predicted(vector, nonlinear, progress), self.examples, offsets)

    def logits(self, vector: TaskVector) -> np.ndarray:
        """The head's outputs on every example (in a fixed order), for comparing two vectors' predictions."""
        return self.outputs(vector)[0]

    def outputs(self, vector: TaskVector) -> tuple[np.ndarray, np.ndarray]:
        """The head's outputs and the labels of every example, in a fixed order."""
        return self._predicted(vector, False)[:2]

    def _predicted(self, vector: TaskVector, nonlinear: bool,
                   progress: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        key = (self.identity, nonlinear, fingerprint(vector.delta), fingerprint(vector.init),
               json.dumps(vector.meta, sort_keys=True, default=str))
        if key not in PREDICTED:
            if len(PREDICTED) >= PREDICTED_LIMIT:
                PREDICTED.clear()
            model, data = self._model(vector, nonlinear)
            PREDICTED[key] = predict(model, data, self.task, self.device, self.batch_size, progress, self.precision)
        logits, labels, loss = PREDICTED[key]
        return logits.copy(), labels.copy(), loss  # callers may change theirs

    def _model(self, vector: TaskVector, nonlinear: bool) -> tuple[AdaptedModel, EncodedSplit]:
        """The adapted model at `vector` with this head, built once per adapter setup and reloaded after."""
        spec = AdapterSpec.from_meta(vector.meta, self.source)
        # A nonzero init shifted the base weights by −s·B0·A0: another φ0 needs another model.
        key = (spec, nonlinear, vector.meta["init_fingerprint"] if spec.lora_init == "nonzero" else None)
        if key in self._cache:
            model, data = self._cache[key]
            model.load_init_state(vector.init)
            model.load_adapter_state(vector.weights())
        else:
            base, model = model_for_vector(self.model_name, vector, self.head, self.task, self.source, nonlinear)
            data = base.encode(self.split, self.max_length)
            model = model.to(self.device)
            self._cache[key] = (model, data)
        return model, data


def score_folders(folders: list[Path], tasks: str | None, data: str | None, max_eval: int | None,
                  batch_size: int, device: str, out: Path | None, nonlinear: bool = False,
                  precision: str | None = None) -> list[dict]:
    """Score each folder (a run on its own task or on `tasks`; a merged folder on every task it holds), in
    `precision` (None: the one each folder was made in, as its adapters were trained and its merge searched)."""
    target = resolve_device(device)
    if out is not None:
        check_output_file(out, folders)
    for folder in folders:  # every bad folder is reported before any work
        _load_merged(Path(folder)) if is_merged(folder) else load_run(Path(folder))
    rows = []
    for folder in map(Path, folders):
        score = _score_merged if is_merged(folder) else _score_run
        rows += score(folder, tasks, data, max_eval, batch_size, target, nonlinear, precision)
    _print_table(rows)
    if out:
        atomic_write_json(out, rows)
    return rows


def _score_run(folder, tasks, data, max_eval, batch_size, device, nonlinear, precision) -> list[dict]:
    """`nonlinear` scores an L-LoRA run with the plain LoRA forward at φ (what its PEFT folder holds)."""
    run = load_run(folder)
    rows = []
    for task in parse_tasks(tasks) if tasks else parse_tasks(run.config.task):
        if get_task(run.head_task).family != task.family and not run.head.spec.text:  # text: any task's prompt
            raise FusekitError(f"{run.folder} holds a head for {run.head_task}, not for {task.name}")
        split = load_split(task, "validation", data or run.config.data).capped(max_eval, 0)
        scorer = TaskScorer(run.config.model, run.config.max_length, split, run.head, device, batch_size, str(folder),
                            precision or run.config.precision)
        metrics = scorer.score(run.vector, nonlinear, progress=f"eval {folder.name} {task.name}")
        forward = "nonlinear" if nonlinear else run.vector.meta["kind"]
        record_eval(folder, f"{task.name}:nonlinear" if nonlinear else task.name, metrics)
        rows.append({"folder": str(folder), "task": task.name, "forward": forward, **metrics})
    return rows


def _score_merged(folder, tasks, data, max_eval, batch_size, device, nonlinear, precision) -> list[dict]:
    """Every task of the merge with its own head, and its normalized score: merged / its own adapter's."""
    manifest, vector, heads = _load_merged(folder)
    rows = merged_scores(folder, manifest, vector, heads, tasks, data, max_eval, batch_size, device, nonlinear,
                         precision or made_in(manifest, folder))
    for row in rows:
        record_eval(folder, f"{row['task']}:nonlinear" if nonlinear else row["task"],
                    {k: v for k, v in row.items() if k not in ("folder", "task", "forward")})
    if rows and all("normalized" in r for r in rows):
        average = mean_defined([r["normalized"] for r in rows])
        defined = sum(r["normalized"] is not None for r in rows)
        record_eval(folder, "average_normalized", {"normalized": average, "tasks": defined})
        rows.append({"folder": str(folder), "task": "average", "forward": rows[0]["forward"], "normalized": average,
                     "score": sum(r["score"] for r in rows) / len(rows)})
    return rows


def merged_scores(folder: Path, manifest: dict, vector: TaskVector, heads: dict[str, TaskHead], tasks: str | None,
                  data: str | None, max_eval: int | None, batch_size: int, device: torch.device, nonlinear: bool,
                  precision: str) -> list[dict]:
    """A merged vector's scores on each task of `manifest` (with the manifest's answer offsets), normalized by
    each input run's own score where that run is known; recorded nowhere."""
    wanted = {t.name for t in parse_tasks(tasks)} if tasks else None
    rows = []
    for item in manifest["inputs"]:
        if wanted is not None and item["task"] not in wanted:
            continue
        task = get_task(item["task"])
        split = load_split(task, "validation", data or manifest["data"]).capped(max_eval, 0)
        max_length = input_max_length(manifest, item)

        def scorer_for(head):
            return TaskScorer(manifest["model"], max_length, split, head, device, batch_size, str(folder), precision)

        metrics = scorer_for(heads[task.name]).score(vector, nonlinear, progress=f"eval {folder.name} {task.name}",
                                                     offsets=manifest.get("calibration", {}).get(task.name))
        if item.get("run"):  # the individually finetuned adapter of this task, when known
            own = individual_score(Path(item["run"]), task.name, split.fingerprint(),
                                   lambda run: scorer_for(run.head).score(run.vector, nonlinear,
                                                                          progress=f"eval {run.folder.name}"))
            metrics["normalized"] = normalized_score(metrics["score"], own)
        forward = "nonlinear" if nonlinear else vector.meta["kind"]
        rows.append({"folder": str(folder), "task": task.name, "forward": forward, **metrics})
    return rows


def made_in(manifest: dict, folder: Path) -> str:
    """The precision a merged or jointly trained folder was made in (its merge settings, or its joint run's config;
    `auto` before either recorded it)."""
    made = manifest.get("settings") or manifest.get("config") or {}
    precision = made.get("precision", "auto") if isinstance(made, dict) else "auto"
    if precision not in PRECISIONS:
        raise FusekitError(f"{folder / MANIFEST}: precision {precision!r}, expected one of {', '.join(PRECISIONS)}")
    return precision


def _load_merged(folder: Path) -> tuple[dict, TaskVector, dict[str, TaskHead]]:
    """A merged folder, its precision and its answer offsets (`fusekit merge --calibrate`) checked: a mapping of
    the merge's tasks to one offset per answer."""
    manifest, vector, heads = load_merged(folder)
    made_in(manifest, folder)
    calibration = manifest.get("calibration", {})
    if not isinstance(calibration, dict) or not set(calibration) <= set(heads):
        raise FusekitError(f"{folder / MANIFEST}: calibration: expected a mapping of the merge's tasks "
                           f"({', '.join(heads)}) to answer offsets")
    for task, offsets in calibration.items():
        check_offsets(offsets, answer_count(get_task(task), heads[task].spec.text),
                      f"{folder / MANIFEST}: calibration.{task}")
    return manifest, vector, heads


def _print_table(rows: list[dict]) -> None:
    table = Table(title="GLUE validation")
    for column in ("folder", "task", "forward", "metrics", "score", "normalized", "examples"):
        table.add_column(column)
    for row in rows:
        official = get_task(row["task"]).metrics if row["task"] != "average" else ()
        normalized = "" if row.get("normalized") is None else f"{row['normalized']:.4f}"
        table.add_row(row["folder"], row["task"], row["forward"], " ".join(f"{m}={row[m]:.4f}" for m in official),
                      f"{row['score']:.4f}", normalized, str(row.get("examples", "")))
    console.print(table)
