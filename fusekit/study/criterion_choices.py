"""What each selection criterion's choice scores on the dev split, for the report only.

A searched merge is made at the point its own criterion prefers on held-out training data; the other criteria
may prefer other points of the same grid. How well each criterion chooses is judged on held-out halves (the report's
cross-fitted table); the published results also show what each criterion's choice scores on dev, so that the
verdict can be read against the split everything else is reported on. Nothing is chosen here: the merged folder
stays what its criterion chose, and each other point is rebuilt from its runs, scored and recorded beside it (the
`criteria` entry of its eval.json). Only plain searches are covered: a per-task search's weights and a calibrated
search's answer offsets were fitted for the chosen criterion, so another criterion's point would need its own.
"""

from __future__ import annotations

from pathlib import Path

from fusekit.artifacts.layout import EVAL, MANIFEST
from fusekit.artifacts.reading import read_json
from fusekit.artifacts.run_folder import load_run, record_eval
from fusekit.evaluation.eval import made_in, merged_scores
from fusekit.evaluation.metrics import mean_defined
from fusekit.merging.config import MergeConfig
from fusekit.merging.criteria import CRITERIA, preferred_index
from fusekit.merging.merge import statistics_for
from fusekit.merging.methods import make_method
from fusekit.merging.search import searched
from fusekit.merging.stream import merge_vectors
from fusekit.models.base import resolve_device
from fusekit.progress import console

CHOICES = "criteria"  # the eval.json entry: criterion → its point and that point's dev scores


def plain_search(manifest: dict) -> bool:
    """A search whose grid every criterion chooses from as it stands (no per-task weights, no answer offsets)."""
    return bool(manifest.get("search")) and "calibration" not in manifest and "per_task_search" not in manifest


def missing(folder: Path) -> bool:
    """A scored, plainly searched merge whose criteria's choices are not recorded yet."""
    if not (folder / MANIFEST).is_file() or not (folder / EVAL).is_file():
        return False
    scores = read_json(folder / EVAL, "scores")
    return "average_normalized" in scores and CHOICES not in scores and plain_search(read_json(folder / MANIFEST))


def record_choices(folder: Path, config: MergeConfig) -> None:
    """Score on dev the point each criterion prefers in the folder's search (the merge's own point is read from
    its scores) and record them in its eval.json; `config` is the merge's (its seed and held-out size)."""
    manifest, scores = read_json(folder / MANIFEST, "merge manifest"), read_json(folder / EVAL, "scores")
    rows, names = manifest["search"], searched(manifest["method"])
    own_point = {n: manifest["params"][n] for n in names}
    tasks = [item["task"] for item in manifest["inputs"]]
    found: dict[int, dict] = {}
    record = {}
    for criterion in CRITERIA:
        index = preferred_index(rows, criterion)
        point = {n: rows[index][n] for n in names}
        if index not in found:
            found[index] = _summary({t: scores[t] for t in tasks}) if point == own_point else \
                _score_point(folder, manifest, config, point)
        record[criterion] = {"point": point, **found[index]}
    record_eval(folder, CHOICES, record)


def _score_point(folder: Path, manifest: dict, config: MergeConfig, point: dict[str, float]) -> dict:
    console.print(f"{folder.name}: scoring another criterion's choice on dev, "
                  + ", ".join(f"{k}={v:g}" for k, v in point.items()))
    runs = [load_run(Path(item["run"])) for item in manifest["inputs"]]
    device = resolve_device(config.device)
    seed = manifest["params"].get("seed", config.seed)  # a seeded method records the seed it drew with
    method = make_method(manifest["method"], seed=seed, **point)  # the point names every hyperparameter
    statistics = statistics_for(runs, method, config.val_examples, device, config.seed)
    if statistics is not None:
        method.stats = statistics
    vector, _ = merge_vectors(runs, method, manifest["weights"], manifest["space"], config.rank)
    heads = {run.head_task: run.head for run in runs}
    rows = merged_scores(folder, manifest, vector, heads, None, None, None, 128, device, False,
                         made_in(manifest, folder))
    return _summary({row["task"]: row for row in rows})


def _summary(scores: dict[str, dict]) -> dict:
    """Each task's dev score and normalized score, their average and the worst task's."""
    normalized = {task: s.get("normalized") for task, s in scores.items()}
    defined = [v for v in normalized.values() if v is not None]
    return {"scores": {task: s["score"] for task, s in scores.items()}, "normalized": normalized,
            "average_normalized": mean_defined(list(normalized.values())),
            "worst_normalized": min(defined) if defined else None}
