"""How long a study takes on N workers (`fusekit run --executor ray`), projected from the stage times it measured.

Each stage's time comes from the study's `stages.jsonl` (its own record), else from the same stage of another seed
or of a `--like` study (same name without the seed), else from its tune's chosen grid point (a training stage
trains what the point trained), else the mean of the measured stages of its kind. The stages are then scheduled
as the Ray executor schedules them: the tunes first, then every other stage as soon as the stages it needs are
finished, each on the first free worker, a worker as fast as the machine that measured it. One worker is the
local executor (the sum of the stage times), measured in the same projection.

    python benchmarks/study_projection.py runs/smollm2-seeds --workers 1,2,8 --like runs/smollm2-glue
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path
from statistics import mean

from fusekit.artifacts.layout import STAGES, TUNE
from fusekit.study.plan import Stage, StageId, recorded_plan


def measured(study: Path) -> dict[str, float]:
    """Stage name → seconds of its latest finished record."""
    path = study / STAGES
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return {r["stage"]: r["seconds"] for r in records if "seconds" in r}


def stage_times(study: Path, stages: list[Stage], like: list[Path]) -> tuple[dict[str, float], dict[str, int]]:
    """Every stage's seconds, and how many came from each source."""
    own = measured(study)
    by_setting: dict[str, float] = {}  # folder/setting → seconds, this study's other seeds first
    by_kind: dict[str, list[float]] = {}
    for folder, planned in [(study, stages), *((other, recorded_plan(other)) for other in like)]:
        seconds = own if folder == study else measured(folder)
        for stage in planned:
            if stage.name in seconds:
                by_setting.setdefault(stage.id.family, seconds[stage.name])
                by_kind.setdefault(stage.id.folder, []).append(seconds[stage.name])
    times, sources = {}, {"measured": 0, "its tune's point": 0, "same stage, other seed or study": 0,
                          "mean of its kind": 0}
    for stage in stages:
        setting, tuned = stage.id.family, _tuned_seconds(study, stage)
        if stage.name in own:
            times[stage.name], source = own[stage.name], "measured"
        elif tuned is not None:
            times[stage.name], source = tuned, "its tune's point"
        elif setting in by_setting:
            times[stage.name], source = by_setting[setting], "same stage, other seed or study"
        else:
            kind = by_kind.get(stage.id.folder) or by_kind.get("merge") or [mean(own.values())]
            times[stage.name], source = mean(kind), "mean of its kind"
        sources[source] += 1
    return times, sources


def _tuned_seconds(study: Path, stage: Stage) -> float | None:
    """A training stage's time as its tune measured it: the chosen grid point's training seconds."""
    if stage.kind != "train":
        return None
    path = study / StageId("tune", stage.id.task, stage.id.variant).name / TUNE
    if not path.is_file():
        return None
    table = json.loads(path.read_text())
    chosen = next((r for r in table.get("rows", []) if all(r.get(k) == v for k, v in table["chosen"].items())), None)
    return chosen.get("seconds") if chosen else None


def makespan(stages: list[Stage], times: dict[str, float], workers: int) -> float:
    """Wall time on `workers` workers: tunes first, then each stage once its needs are done (list scheduling in
    plan order, as the Ray executor submits)."""
    clock = 0.0
    for batch in ([s for s in stages if s.kind == "tune"], [s for s in stages if s.kind != "tune"]):
        finish: dict[str, float] = {}
        free = [clock] * workers
        for stage in batch:  # plan order puts every stage after the stages it needs
            start = max([heapq.heappop(free)] + [finish[n] for n in stage.needs if n in finish])
            finish[stage.name] = start + times[stage.name]
            heapq.heappush(free, finish[stage.name])
        clock = max([clock, *finish.values()])
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--workers", default="1,2,8")
    parser.add_argument("--like", type=Path, action="append", default=[], help="studies with comparable stages")
    args = parser.parse_args()
    stages = recorded_plan(args.study)
    times, sources = stage_times(args.study, stages, args.like)
    print(f"{args.study}: {len(stages)} stages; times: " + ", ".join(f"{n} {k}" for k, n in sources.items()))
    serial = makespan(stages, times, 1)
    print("| workers | wall (h) | speed-up vs 1 worker | efficiency |\n|---|---|---|---|")
    for n in map(int, args.workers.split(",")):
        wall = makespan(stages, times, n)
        print(f"| {n} | {wall / 3600:.2f} | {serial / wall:.2f}× | {serial / wall / n:.0%} |")


if __name__ == "__main__":
    main()
