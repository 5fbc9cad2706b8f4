"""Choosing merge hyperparameters (λ, TIES density, DARE drop rate) on held-out training data.

The held-out examples are training examples the runs never saw (the complement of their `max_train`
subset), never the validation split that results are reported on. Each grid point records every criterion of
fusekit.merging.criteria (the average normalized score, the average share of each adapter's skill above chance,
the raw average, the worst task's normalized score) and the search chooses by one of them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from fusekit.artifacts.run_folder import Run
from fusekit.data.loading import Split, load_split
from fusekit.data.tasks import get_task
from fusekit.evaluation.eval import TaskScorer
from fusekit.evaluation.metrics import bootstrap_standard_error, compute_metrics, predictions
from fusekit.merging.criteria import chance_score, criterion_values
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


def searched(method: str) -> tuple[str, ...]:
    """The names of the hyperparameters `method` has, which a search may vary (in table order)."""
    return tuple(p.name for p in method_parameters(method))


def grid_points(method: str, grid: dict[str, list[float]]) -> list[dict[str, float]]:
    names = searched(method)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def held_out_split(run: Run, examples: int, seed: int) -> Split:
    """`examples` training examples of the run's task that it never trained on (all of them, with a warning, when
    it trained on every one): what searches and data-aware merges may look at, never the reported split."""
    task = get_task(run.head_task)
    train = load_split(task, "train", run.config.data)
    unseen = train.held_out(run.config.max_train, run.config.seed)
    if len(unseen) == 0:
        console.print(f"warning: {run.folder} trained on all of {task.name}'s training data; selecting on a "
                      "sample of it (biased towards the finetuned adapters, still not the reported split)")
        unseen = train
    return unseen.capped(examples, seed)


def held_out_scorers(runs: list[Run], examples: int, device: torch.device, seed: int) -> list[TaskScorer]:
    return [TaskScorer(run.config.model, run.config.max_length, held_out_split(run, examples, seed), run.head,
                       device, source=str(run.folder)) for run in runs]


def search(runs: list[Run], method: str, grid: dict[str, list[float]], space: str, rank: int | None,
           weights: list[float] | None, examples: int, device: torch.device, seed: int = 0,
           statistics: dict | None = None, criterion: str = "normalized") -> SearchResult:
    scorers = held_out_scorers(runs, examples, device, seed)
    points = grid_points(method, grid)
    rows, predicted = [], []  # predicted[p][t]: point p's predictions on task t's examples
    with progress_bar() as bar:
        job = bar.add_task(f"search {method}", total=(len(points) + 1) * len(runs), status="")

        def outputs(vectors: list) -> tuple[list[np.ndarray], list[float], list[np.ndarray]]:
            """Each task's predictions, score and labels under its vector."""
            preds, scores, labels = [], [], []
            for scorer, vector in zip(scorers, vectors):
                logits, y = scorer.outputs(vector)
                preds.append(predictions(scorer.task, logits))
                scores.append(compute_metrics(scorer.task, y, preds[-1])["score"])
                labels.append(y)
                bar.update(job, advance=1, status=f"{scorer.task.name} {scores[-1]:.3f}")
            return preds, scores, labels

        own_preds, own, labels = outputs([run.vector for run in runs])
        chance = [chance_score(scorer.task, y) for scorer, y in zip(scorers, labels)]
        for point in points:
            candidate = make_method(method, seed=seed, **point)
            if statistics is not None:
                candidate.stats = statistics
            vector, _ = merge_vectors(runs, candidate, weights, space, rank)
            preds, scores, _ = outputs([vector] * len(scorers))
            predicted.append(preds)
            values = criterion_values(scores, own, chance)
            rows.append({**point, **{run.head_task: s for run, s in zip(runs, scores)},
                         "normalized": values["normalized"], "criteria": values})
    chosen = max(range(len(rows)), key=lambda k: rows[k]["criteria"][criterion])

    def selection_score(tasks, ys, own_scores, merged_scores):
        return criterion_values(merged_scores, own_scores, [chance_score(t, y) for t, y in zip(tasks, ys)])[criterion]

    error = bootstrap_standard_error([s.task for s in scorers], labels, own_preds, predicted[chosen], seed=seed,
                                     value=selection_score)
    return SearchResult({k: rows[chosen][k] for k in searched(method)}, rows,
                        {run.head_task: len(y) for run, y in zip(runs, labels)},
                        {run.head_task: score for run, score in zip(runs, own)}, error)
