"""GLUE's official metrics, and the single score per task that GLUE's leaderboard averages."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from fusekit.data.tasks import TaskSpec

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda y, p: float(accuracy_score(y, p)),
    "f1": lambda y, p: float(f1_score(y, p)),
    "matthews_correlation": lambda y, p: float(matthews_corrcoef(y, p)),
    "pearson": lambda y, p: float(pearsonr(y, p)[0]),
    "spearman": lambda y, p: float(spearmanr(y, p)[0]),
}


def predictions(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Class ids for classification, the single output for regression."""
    return logits[:, 0] if task.is_regression else logits.argmax(axis=-1)


def compute_metrics(task: TaskSpec, labels: Sequence[float], preds: Sequence[float]) -> dict[str, float]:
    """The task's official metrics plus `score`, their mean (GLUE's per-task number)."""
    y, p = np.asarray(labels), np.asarray(preds)
    with warnings.catch_warnings():  # a constant prediction (the majority baseline) has no correlation: it scores 0
        warnings.simplefilter("ignore")
        values = {name: METRICS[name](y, p) for name in task.metrics}
    values = {k: (0.0 if np.isnan(v) else v) for k, v in values.items()}
    values["score"] = float(np.mean([values[name] for name in task.metrics]))
    return values


def normalized_score(score: float, own: float) -> float | None:
    """Merged score / the task's own adapter's score (the fusion papers' measure); undefined (None) when the own
    adapter has no skill to normalize by (MCC or correlation ≤ 0), rather than a division that means nothing."""
    return score / own if own > 0 else None


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the defined normalized scores (None when none is)."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def bootstrap_standard_error(tasks: Sequence[TaskSpec], labels: Sequence[np.ndarray], own: Sequence[np.ndarray],
                             merged: Sequence[np.ndarray], resamples: int = 200, seed: int = 0,
                             value: Callable | None = None) -> float | None:
    """Standard error of the score a held-out search maximises (by default the average normalized score; `value`
    maps (tasks, labels, own scores, merged scores) of a resample to another criterion): each task's examples are
    resampled with replacement (the own adapter's and the merge's predictions together, as they are paired), the
    score recomputed, and half the width of the central 68% of those scores returned — the standard error of a
    normal distribution, but not decided by the few resamples where a task's own score nears 0 and its ratio
    explodes (their standard deviation can exceed 1). None when no resample defines it."""
    rng = np.random.default_rng(seed)
    value = value or _average_normalized
    with warnings.catch_warnings():  # a resample may hold one class only; compute_metrics scores that 0
        warnings.simplefilter("ignore")
        draws = [_resampled(rng, tasks, labels, own, merged, value) for _ in range(resamples)]
    defined = [d for d in draws if d is not None]
    if len(defined) < 2:
        return None
    low, high = np.percentile(defined, [15.865, 84.135])
    return float(high - low) / 2


def _average_normalized(tasks, labels, own: list[float], merged: list[float]) -> float | None:
    return mean_defined([normalized_score(m, o) for m, o in zip(merged, own)])


def bootstrap_draw(rng: np.random.Generator, labels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One resample with replacement of each task's examples (their indices)."""
    return [rng.integers(0, len(y), len(y)) for y in labels]


def scores_on(tasks, labels: Sequence[np.ndarray], preds: Sequence[np.ndarray], draw: list[np.ndarray]) -> list[float]:
    """Each task's score on the resampled examples `draw` picks (labels and predictions resampled together)."""
    return [compute_metrics(t, y[i], p[i])["score"] for t, y, p, i in zip(tasks, labels, preds, draw)]


def _resampled(rng: np.random.Generator, tasks, labels, own, merged, value: Callable) -> float | None:
    draw = bootstrap_draw(rng, labels)
    ys = [y[i] for y, i in zip(labels, draw)]
    return value(tasks, ys, scores_on(tasks, labels, own, draw), scores_on(tasks, labels, merged, draw))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None from a single value): over seeds, the
    spread a reader needs to tell a difference from noise."""
    from scipy.stats import t

    data = np.asarray(values, dtype=np.float64)
    if len(data) < 2:
        return float(data.mean()), None
    half = t.ppf(0.5 + level / 2, len(data) - 1) * data.std(ddof=1) / np.sqrt(len(data))
    return float(data.mean()), float(half)


def format_ci(values: Sequence[float]) -> str:
    """`0.869 ± 0.012` over several values, `0.869` for one."""
    mean, half = mean_ci(values)
    return f"{mean:.3f}" if half is None else f"{mean:.3f} ± {half:.3f}"


def chance_score(task: TaskSpec, labels: np.ndarray) -> float:
    """The task's score of one constant answer: the majority label (classification) or the mean (regression:
    a constant correlates with nothing, 0)."""
    if task.is_regression:
        guess = np.full(len(labels), float(np.mean(labels)))
    else:
        guess = np.full(len(labels), Counter(labels.tolist()).most_common(1)[0][0])
    return compute_metrics(task, labels, guess)["score"]
