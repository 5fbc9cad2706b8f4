"""`fusekit tune`: choose training settings on held-out training examples, never on the dev split.

Every point of a small grid (e.g. lr × head_lr × epochs) trains one adapter on the run's training subset and is
scored on `held_out_examples` training examples outside that subset (`eval_on: held-out`: the dev split is not
read). The best point by the task's score wins (a joint run's: the mean of its tasks' scores, each on its own
held-out examples); ties go to the earlier point. Each point is an ordinary run (or joint) folder, so an
interrupted tune resumes where it stopped.

    <out>/<key>=<value>-.../   one run folder per grid point
    <out>/tune.json            the grid, one row per point (settings, held-out score, training time), the choice
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from fusekit.artifacts.atomic import atomic_write_json
from fusekit.artifacts.layout import CONFIG, EVAL, MARKER, METRICS, TUNE
from fusekit.artifacts.output import claim_output, mark
from fusekit.artifacts.reading import read_json, read_jsonl, read_yaml
from fusekit.config import JointConfig, TrainConfig, from_mapping
from fusekit.data.loading import Split, load_split
from fusekit.data.tasks import get_task, parse_tasks
from fusekit.errors import FusekitError
from fusekit.evaluation.metrics import chance_score
from fusekit.models.defaults import changed_settings, resolve_defaults
from fusekit.progress import console


def grid_points(grid: dict[str, list], source: str = "tune grid", kind: type[TrainConfig] = TrainConfig) -> list[dict]:
    """Every combination of the grid's values, in the order the grid lists them."""
    known = {f.name for f in fields(kind)}
    for key, values in grid.items():
        if key not in known:
            command = "fusekit joint" if kind is JointConfig else "fusekit train"
            raise FusekitError(f"{source}: unknown setting {key!r} (expected keys of {command})")
        if not isinstance(values, list) or not values:
            raise FusekitError(f"{source}: {key} must be a non-empty list of values, got {values!r}")
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def point_configs(cfg: TrainConfig, grid: dict[str, list], out: Path, held_out_examples: int,
                  source: str = "tune grid") -> list[TrainConfig]:
    """One run config per grid point, each checked as a run checks it (a dry run refuses what the run would)."""
    return [from_mapping(type(cfg), {**asdict(cfg), **point, "out": str(out / point_name(point)),
                                     "eval_on": "held-out", "held_out_examples": held_out_examples},
                         f"{source} point {point_name(point)}") for point in grid_points(grid, source, type(cfg))]


def parse_grid(items: list[str]) -> dict[str, list]:
    """`KEY=V1,V2,...` strings (the CLI's --grid) as a grid; numbers read as numbers."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values.strip():
            raise FusekitError(f"--grid {item!r}: expected KEY=V1,V2,... such as lr=1e-4,3e-4")
        grid[key.strip().replace("-", "_")] = [_value(v.strip()) for v in values.split(",") if v.strip()]
    return grid


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def point_name(point: dict) -> str:
    """The grid point's folder name, e.g. lr=0.001-epochs=3; refused if a value would make it a path."""
    name = "-".join(f"{key}={value}" for key, value in point.items()) or "default"
    if "/" in name or "\\" in name or name.startswith(".") or len(name) > 200:
        raise FusekitError(f"grid point {name[:80]!r} cannot name a folder: grid values must not hold '/' or '\\'")
    return name


def tune(cfg: TrainConfig, grid: dict[str, list], out: Path, held_out_examples: int) -> dict:
    """Train every grid point (a `JointConfig`: a joint run), score each on held-out training examples, write and
    return the table."""
    from fusekit.training.joint import train_joint
    from fusekit.training.train import train

    points = grid_points(grid, kind=type(cfg))
    configs = point_configs(cfg, grid, out, held_out_examples)  # every point checked before any work
    joint = isinstance(cfg, JointConfig)
    what = f"joint {cfg.tasks}" if joint else cfg.task
    rows = []
    with claim_output(out, False, [cfg.data, cfg.model], "tune folder", resumable=True):
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MARKER).is_file():
            mark(out, "tune")
        for number, (point, run_cfg) in enumerate(zip(points, configs), 1):
            folder = run_cfg.output_dir()
            console.print(f"tune {what} [{number}/{len(points)}] {point_name(point)}")
            if not (folder / CONFIG).is_file():
                (train_joint if joint else train)(run_cfg)
            scores = point_scores(folder, run_cfg)
            score = float(np.mean([task_scores["score"] for task_scores in scores.values()]))
            held_out = scores if joint else scores[cfg.task]
            rows.append({**point, "score": score, "held_out": held_out, "seconds": _train_seconds(folder)})
        best = max(range(len(rows)), key=lambda i: (rows[i]["score"], -i))
        chance = held_out_chance(configs[best])
        tuned = {"tasks": [t.name for t in parse_tasks(cfg.tasks)]} if joint else {"task": cfg.task}
        result = {**tuned, "adapter": cfg.adapter, "grid": grid, "held_out_examples": held_out_examples,
                  "rows": rows, "chosen": points[best], "chance": chance, "learned": rows[best]["score"] > chance}
        atomic_write_json(out / TUNE, result)
    console.print(f"tune {what}: chose {point_name(points[best])} (held-out score {rows[best]['score']:.4f})")
    if not result["learned"]:
        console.print(f"warning: no grid point of {what} beat answering the majority class on the held-out "
                      f"examples (best {rows[best]['score']:.4f}, chance {chance:.4f}): the choice is a tie of no "
                      "skill; give the task more training steps or widen the grid")
    return result


def held_out_chance(cfg: TrainConfig) -> float:
    """The score of one constant answer (the majority label; a regression's mean) on the examples a grid point is
    scored on (a joint point: the mean over its tasks): what a point must beat to have learned anything."""
    return float(np.mean([chance_score(split.task, np.asarray(split.labels)) for split in _held_out(cfg).values()]))


def _held_out(cfg: TrainConfig) -> dict[str, Split]:
    """The held-out examples a grid point is scored on, per task (a joint's: each task's, outside its own cap)."""
    from fusekit.training.joint import scored_splits
    from fusekit.training.train import evaluation_split

    resolved = resolve_defaults(cfg).config
    if not isinstance(resolved, JointConfig):
        return {cfg.task: evaluation_split(resolved, load_split(get_task(cfg.task), "train", resolved.data))}
    return scored_splits(resolved, {task.name: load_split(task, "train", resolved.data)
                                    for task in parse_tasks(resolved.tasks)})


def point_scores(folder: Path, cfg: TrainConfig) -> dict[str, dict]:
    """A finished point's held-out scores per task, used only if it was trained with the settings asked now
    (defaults resolved) and scored on the examples this tune selects on (a new data folder, or a new rule for which
    examples are held out, changes them)."""
    recorded = read_yaml(folder / CONFIG, "recorded config")
    changed = changed_settings(recorded, cfg) if isinstance(recorded, dict) else []
    if not isinstance(recorded, dict) or changed:
        raise FusekitError(f"{folder} was trained with different {', '.join(changed) or 'settings'} than this tune "
                           "asks (delete it to train the point again)")
    found = read_json(folder / EVAL, "scores")
    scores = {}
    for task, split in _held_out(cfg).items():
        scores[task] = found.get(task)
        if not isinstance(scores[task], dict) or "score" not in scores[task]:
            raise FusekitError(f"{folder / EVAL} has no score of {task}: delete {folder} to rerun it")
        if scores[task].get("examples_fingerprint") != split.fingerprint():
            raise FusekitError(f"{folder / EVAL} was scored on other held-out examples than this tune selects on "
                               "(the data or the held-out rule changed): delete the point's folder to train and "
                               "score it again")
    return scores


def _train_seconds(folder: Path) -> float | None:
    for record in read_jsonl(folder / METRICS):
        if "train_seconds" in record:
            return record["train_seconds"]
    return None


def chosen_settings(out: Path) -> dict | None:
    """The settings a finished tune chose (None when it has not finished)."""
    path = out / TUNE
    if not path.is_file():
        return None
    chosen = read_json(path, "tune table").get("chosen")
    if not isinstance(chosen, dict):
        raise FusekitError(f"{path} records no chosen settings: delete it to tune again")
    return chosen
