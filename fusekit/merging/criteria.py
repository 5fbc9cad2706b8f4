"""How a held-out search ranks its grid points, from each task's merged score, its own adapter's score and the score
of always answering the majority class (chance), all on the same held-out examples.

* `normalized` (the fusion papers' measure): the mean over tasks of merged / own, over the tasks where own > 0.
  A task whose own score is small (CoLA's MCC of 0.02–0.33) divides its noise into the mean and can decide it.
* `above-chance`: the mean of (max(merged, chance) − chance) / (own − chance), over the tasks whose own adapter
  beats chance: what a merge keeps of each adapter's skill above answering the majority class, each task's loss
  bounded by losing all of it (a merge that answers one word gets 0 for that task, not a negative number).
* `raw`: the mean of the merged scores.
* `worst`: the lowest normalized score: no task is sacrificed for the others.

Every search records all four at every grid point; `--criterion` chooses by one. A criterion that is defined for
no task (every own score ≤ chance) falls back to the raw mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fusekit.evaluation.metrics import mean_defined, normalized_score

CRITERIA = ("normalized", "above-chance", "raw", "worst")


def criterion_values(scores: Sequence[float], own: Sequence[float], chance: Sequence[float]) -> dict[str, float]:
    """Every criterion of one grid point (each falling back to the raw mean where undefined)."""
    raw = float(np.mean(scores))
    ratios = [normalized_score(s, o) for s, o in zip(scores, own)]
    above = [(max(s, c) - c) / (o - c) if o > c else None for s, o, c in zip(scores, own, chance)]
    defined = [r for r in ratios if r is not None]
    values = {"normalized": mean_defined(ratios), "above-chance": mean_defined(above), "raw": raw,
              "worst": min(defined) if defined else None}
    return {name: raw if value is None else value for name, value in values.items()}


def preferred_index(rows: list[dict], criterion: str) -> int:
    """The index of the grid point `criterion` prefers (the first of equals, in grid order)."""
    return max(range(len(rows)), key=lambda k: rows[k]["criteria"][criterion])


def cross_fitted(rows: list[dict], criterion: str) -> dict[str, float] | None:
    """How well `criterion` chooses, judged on examples its choice did not read: the grid point it prefers on one
    half of the held-out examples, scored on the other half (average normalized score over the tasks and the worst
    task's), both directions averaged. None for rows recorded without halves."""
    if not rows or not all(len(row.get("halves", [])) == 2 for row in rows):
        return None
    averages, worsts = [], []
    for chooser, judge in ((0, 1), (1, 0)):
        best = max(rows, key=lambda row: row["halves"][chooser]["criteria"][criterion])
        kept = [v for v in best["halves"][judge]["normalized"].values() if v is not None]
        averages.append(float(np.mean(kept)) if kept else None)
        worsts.append(min(kept) if kept else None)
    if None in averages:
        return None
    return {"average": float(np.mean(averages)), "worst": float(np.mean(worsts))}
