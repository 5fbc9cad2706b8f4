"""Choosing merge hyperparameters (λ, TIES density, DARE drop rate) on held-out training data.

The held-out examples are training examples the runs never saw (the complement of their `max_train`
subset), never the validation split that results are reported on. Each grid point records every criterion of
fusekit.merging.criteria (the average normalized score, the average share of each adapter's skill above chance,
the raw average, the worst task's normalized score) and the search chooses by one of them.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from fusekit.artifacts.run_folder import Run
from fusekit.data.loading import Split, load_split
from fusekit.data.tasks import get_task
from fusekit.evaluation.calibration import held_out_calibration
from fusekit.evaluation.eval import TaskScorer
from fusekit.evaluation.metrics import (
    bootstrap_draw,
    bootstrap_standard_error,
    chance_score,
    compute_metrics,
    normalized_score,
    predictions,
    scores_on,
)
from fusekit.merging.criteria import CRITERIA, criterion_values, preferred_index
from fusekit.merging.methods import make_method, method_parameters
from fusekit.merging.stream import merge_vectors
from fusekit.progress import console, progress_bar


@dataclass
class SearchResult:
    best: dict[str, float]
    rows: list[dict]  # one per grid point: hyperparameters, per-task scores, every criterion
    examples: dict[str, int]  # held-out examples per task
    own: dict[str, float]  # each task's own adapter on them: the denominators of the normalized scores
    standard_error: float | None  # of the selection score at the chosen point (bootstrap over the examples)
    weights: list[float] | None = None  # per-task search: each run's weight (its coefficient is λ · weight)
    task_rows: list[dict] = field(default_factory=list)  # per-task search: one row per task and λ tried
    calibration: dict[str, list[float]] | None = None  # calibrated search: the chosen point's answer offsets
    # each criterion's chosen settings' standard errors (bootstrap): {criterion: {setting: standard error}}
    choice_standard_error: dict[str, dict[str, float]] = field(default_factory=dict)


def searched(method: str) -> tuple[str, ...]:
    """The names of the hyperparameters `method` has, which a search may vary (in table order)."""
    return tuple(p.name for p in method_parameters(method))


def grid_points(method: str, grid: dict[str, list[float]]) -> list[dict[str, float]]:
    names = searched(method)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def nothing_held_out(run: Run) -> str | None:
    """Why the run left no training example of its task unseen (none is left to select on), or None."""
    cfg = run.config
    train = load_split(get_task(run.head_task), "train", cfg.data)
    empty = len(train.held_out(cfg.max_train, cfg.seed, cfg.subset_from)) == 0
    return train.why_none_held_out(cfg.max_train, cfg.subset_from) if empty else None


def held_out_split(run: Run, examples: int, seed: int) -> Split:
    """`examples` training examples of the run's task that it never trained on (all of them, with a warning, when
    it left none unseen and the merge was told `select_on_seen`): what searches and data-aware merges may look at,
    never the reported split."""
    cfg = run.config
    train = load_split(get_task(run.head_task), "train", cfg.data)
    unseen = train.held_out(cfg.max_train, cfg.seed, cfg.subset_from)
    if len(unseen) == 0:
        why = train.why_none_held_out(cfg.max_train, cfg.subset_from)
        console.print(f"warning: {run.folder}: {why}; selecting on a sample of all of them (biased towards the "
                      "finetuned adapters, still not the reported split)")
        unseen = train
    return unseen.capped(examples, seed)


def held_out_scorers(runs: list[Run], examples: int, device: torch.device, seed: int,
                     precision: str = "auto") -> list[TaskScorer]:
    return [TaskScorer(run.config.model, run.config.max_length, held_out_split(run, examples, seed), run.head,
                       device, source=str(run.folder), precision=precision) for run in runs]


class HeldOut:
    """The runs' held-out examples, their own adapters' scores and the chance scores: what every candidate merge is
    scored against, each task on its own examples; with `calibrate`, each candidate's answers calibrated out of
    fold where that scores better (the merge the search chooses is the calibrated one), the own adapters' as they
    are."""

    def __init__(self, runs: list[Run], examples: int, device: torch.device, seed: int, bar, job,
                 calibrate: bool = False, precision: str = "auto"):
        self.runs, self.bar, self.job = runs, bar, job
        self.scorers = held_out_scorers(runs, examples, device, seed, precision)
        self.calibrate = calibrate
        self.own_preds, self.own, self.labels, _ = self.outputs([run.vector for run in runs])
        self.chance = [chance_score(scorer.task, y) for scorer, y in zip(self.scorers, self.labels)]
        # the even- and the odd-numbered examples (none when too few to halve: a correlation needs two a half), with
        # each task's own and chance scores on them, the same at every grid point
        self.half_indices = [] if min(len(y) for y in self.labels) < 4 else [slice(0, None, 2), slice(1, None, 2)]
        self.half_own = [[compute_metrics(s.task, y[h], o[h])["score"]
                          for s, y, o in zip(self.scorers, self.labels, self.own_preds)] for h in self.half_indices]
        self.half_chance = [[chance_score(s.task, y[h]) for s, y in zip(self.scorers, self.labels)]
                            for h in self.half_indices]

    def outputs(self, vectors: list, calibrate: bool = False) -> tuple[list[np.ndarray], list[float],
                                                                       list[np.ndarray], list[list[float] | None]]:
        """Each task's predictions, score, labels and answer offsets under its vector (with `calibrate`, its answers
        calibrated out of fold where that scores better, and the offsets to keep; None elsewhere)."""
        preds, scores, labels, offsets = [], [], [], []
        for scorer, vector in zip(self.scorers, vectors):
            logits, y = scorer.outputs(vector)
            logits, kept = held_out_calibration(scorer.task, logits, y) if calibrate else (logits, None)
            preds.append(predictions(scorer.task, logits))
            scores.append(compute_metrics(scorer.task, y, preds[-1])["score"])
            labels.append(y)
            offsets.append(kept)
            self.bar.update(self.job, advance=1, status=f"{scorer.task.name} {scores[-1]:.3f}")
        return preds, scores, labels, offsets

    def row(self, vector, settings: dict) -> tuple[dict, list[np.ndarray]]:
        """A merged vector's grid row (settings, per-task scores, every criterion, and both on each half of the
        examples; calibrated, the answer offsets it would keep) and its predictions."""
        preds, scores, _, offsets = self.outputs([vector] * len(self.scorers), self.calibrate)
        values = criterion_values(scores, self.own, self.chance)
        kept = {run.head_task: o for run, o in zip(self.runs, offsets) if o is not None}
        return {**settings, **{run.head_task: s for run, s in zip(self.runs, scores)},
                "normalized": values["normalized"], "criteria": values, "halves": self.halves(preds),
                **({"calibration": kept} if self.calibrate else {})}, preds

    def halves(self, preds: list[np.ndarray]) -> list[dict]:
        """Every criterion and each task's normalized score on the even-numbered and on the odd-numbered examples:
        what `fusekit report` cross-fits the choice of a criterion on (choose on one half, score on the other)."""
        found = []
        for half, own, chance in zip(self.half_indices, self.half_own, self.half_chance):
            scores = [compute_metrics(s.task, y[half], p[half])["score"]
                      for s, y, p in zip(self.scorers, self.labels, preds)]
            found.append({"criteria": criterion_values(scores, own, chance),
                          "normalized": {run.head_task: normalized_score(s, o)
                                         for run, s, o in zip(self.runs, scores, own)}})
        return found

    def standard_error(self, predicted: list[np.ndarray], criterion: str, seed: int) -> float | None:
        def selection_score(tasks, ys, own_scores, merged_scores):
            chance = [chance_score(t, y) for t, y in zip(tasks, ys)]
            return criterion_values(merged_scores, own_scores, chance)[criterion]

        return bootstrap_standard_error([s.task for s in self.scorers], self.labels, self.own_preds, predicted,
                                        seed=seed, value=selection_score)


def choice_standard_error(tasks: list, labels: list[np.ndarray], own_preds: list[np.ndarray],
                          predicted: list[list[np.ndarray]], points: list[dict[str, float]], seed: int,
                          resamples: int = 200) -> dict[str, dict[str, float]]:
    """How firmly the held-out examples choose each setting, for every criterion: the setting's standard deviation,
    over bootstrap resamples of the examples, at the point the criterion prefers on each resample (every point
    scored on the same resample, as the search compares them on the same examples). Near 0: another draw of held-out
    examples would choose the same. One set of resamples serves every criterion."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[dict]] = {criterion: [] for criterion in CRITERIA}
    with warnings.catch_warnings():  # a resample may hold one class only; compute_metrics scores that 0
        warnings.simplefilter("ignore")
        for _ in range(resamples):
            draw = bootstrap_draw(rng, labels)
            own = scores_on(tasks, labels, own_preds, draw)
            chance = [chance_score(t, y[i]) for t, y, i in zip(tasks, labels, draw)]
            rows = [{"criteria": criterion_values(scores_on(tasks, labels, preds, draw), own, chance)}
                    for preds in predicted]
            for criterion, picks in chosen.items():
                picks.append(points[preferred_index(rows, criterion)])
    return {criterion: {name: float(np.std([point[name] for point in picks], ddof=1)) for name in points[0]}
            for criterion, picks in chosen.items()}


def _candidate(method: str, seed: int, point: dict, statistics: dict | None):
    candidate = make_method(method, seed=seed, **point)
    if statistics is not None:
        candidate.stats = statistics
    return candidate


def search(runs: list[Run], method: str, grid: dict[str, list[float]], space: str, rank: int | None,
           weights: list[float] | None, examples: int, device: torch.device, seed: int = 0,
           statistics: dict | None = None, criterion: str = "normalized", per_task: bool = False,
           calibrate: bool = False, precision: str = "auto") -> SearchResult:
    """Every grid point scored on held-out examples (its answers calibrated out of fold with `calibrate`); the best
    by `criterion`. With `per_task`, then one coefficient per task (λ_i = λ·w_i) by coordinate ascent over the λ
    grid: each task in turn, the others held, one sweep."""
    points = grid_points(method, grid)
    tries = (len(grid.get("lam", [])) - 1) * len(runs) if per_task else 0
    rows, predicted = [], []  # predicted[p][t]: point p's predictions on task t's examples
    with progress_bar() as bar:
        job = bar.add_task(f"search {method}", total=(len(points) + tries + 1) * len(runs), status="")
        held = HeldOut(runs, examples, device, seed, bar, job, calibrate, precision)
        for point in points:
            vector, _ = merge_vectors(runs, _candidate(method, seed, point, statistics), weights, space, rank)
            row, preds = held.row(vector, point)
            rows.append(row)
            predicted.append(preds)
        chosen = preferred_index(rows, criterion)
        best, best_row, best_preds, task_rows = {k: rows[chosen][k] for k in searched(method)}, rows[chosen], \
            predicted[chosen], []
        if per_task:
            weights, best_row, best_preds, task_rows = _per_task(runs, held, method, best, grid["lam"], space, rank,
                                                                 weights, best_row, best_preds, criterion, seed,
                                                                 statistics)
    return SearchResult(best, rows, {run.head_task: len(y) for run, y in zip(runs, held.labels)},
                        {run.head_task: score for run, score in zip(runs, held.own)},
                        held.standard_error(best_preds, criterion, seed), weights, task_rows,
                        best_row.get("calibration"),
                        choice_standard_error([s.task for s in held.scorers], held.labels, held.own_preds, predicted,
                                              points, seed))


def _per_task(runs, held: HeldOut, method: str, best: dict, lambdas: list[float], space: str, rank: int | None,
              weights: list[float] | None, best_row: dict, best_preds, criterion: str, seed: int, statistics):
    """Coordinate ascent over each task's coefficient from the shared choice: (weights, the row and predictions
    they score, rows)."""
    current = list(weights or [1.0] * len(runs))
    score, rows = best_row["criteria"][criterion], []
    if best["lam"] == 0:  # λ_i = λ·w_i: a shared λ of 0 leaves nothing for a weight to scale
        console.print("note: the shared search chose λ = 0 (no task vector helps): no per-task coefficients")
        return current, best_row, best_preds, rows
    candidate = _candidate(method, seed, best, statistics)
    for i, run in enumerate(runs):
        start = kept = current[i]
        for lam in (value for value in lambdas if value != best["lam"]):  # the shared λ is scored already
            trial = [*current[:i], start * lam / best["lam"], *current[i + 1:]]
            vector, _ = merge_vectors(runs, candidate, trial, space, rank)
            row, preds = held.row(vector, {"task": run.head_task, "lam": lam,
                                           "coefficients": [best["lam"] * w for w in trial]})
            rows.append(row)
            if row["criteria"][criterion] > score:
                score, best_row, best_preds, kept = row["criteria"][criterion], row, preds, trial[i]
        current[i] = kept
    return current, best_row, best_preds, rows
