"""`fusekit eval`: score run folders on validation splits, print a table, record the results."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from fusekit.data import EncodedSplit, load_split
from fusekit.evaluate import evaluate
from fusekit.io import atomic_write_json
from fusekit.modeling import resolve_device
from fusekit.progress import console
from fusekit.runs import load_run, model_for_run, record_eval
from fusekit.tasks import parse_tasks


def score_runs(folders: list[Path], tasks: str | None, data: str | None, max_eval: int | None,
               batch_size: int, device: str, out: Path | None, nonlinear: bool = False) -> list[dict]:
    """Evaluate each run on its own task (or on `tasks`), record eval.json in the run, return result rows.

    `nonlinear` scores the plain LoRA forward at φ (for L-LoRA runs: what their PEFT folder holds); its results
    are recorded under `<task>:nonlinear`.
    """
    target = resolve_device(device)
    loaded = [load_run(folder) for folder in folders]  # every bad folder is reported before any work
    rows = []
    for run in loaded:
        for task in parse_tasks(tasks) if tasks else parse_tasks(run.config.task):
            split = load_split(task, "validation", data or run.config.data).capped(max_eval, 0)
            base, model = model_for_run(run, task, nonlinear=nonlinear)
            encoded = EncodedSplit(split, base.tokenizer, run.config.max_length)
            metrics = evaluate(model.to(target), encoded, task, target, batch_size)
            forward = "nonlinear" if nonlinear else model.spec.kind
            record_eval(run.folder, f"{task.name}:nonlinear" if nonlinear else task.name, metrics)
            rows.append({"run": str(run.folder), "task": task.name, "forward": forward, **metrics})
    table = Table(title="GLUE validation")
    for column in ("run", "task", "forward", "metrics", "score", "examples"):
        table.add_column(column)
    for row in rows:
        official = parse_tasks(row["task"])[0].metrics
        table.add_row(row["run"], row["task"], row["forward"], " ".join(f"{m}={row[m]:.4f}" for m in official),
                      f"{row['score']:.4f}", str(row["examples"]))
    console.print(table)
    if out:
        atomic_write_json(out, rows)
    return rows
