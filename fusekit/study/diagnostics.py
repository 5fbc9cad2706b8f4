"""How much of a balancer's weight curve is step-to-step noise rather than a trend.

For a series ω_i(t) observed at the balancer's own update points, the noise fraction is

    Σ_i Var_t(ω_i(t+1) − ω_i(t)) / (2 · Σ_i Var_t(ω_i(t)))

White noise scores about 1 (the variance of a difference of two independent draws is twice their variance); a
smooth trend scores near 0. It is the share of the weights' variance that lives at the highest frequency.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusekit.artifacts.reading import read_jsonl


def noise_fraction(weights: np.ndarray) -> float | None:
    """The statistic above for a (T × K) array; None when the weights never move or there are < 3 points."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) < 3:
        return None
    total = weights.var(axis=0).sum()
    if total < 1e-12:
        return None
    return float(np.diff(weights, axis=0).var(axis=0).sum() / (2 * total))


def balancer_curves(metrics: Path) -> tuple[list[int], np.ndarray, list[int], np.ndarray]:
    """(steps, weights T × K, validation steps, validation losses V × K) from a joint run's metrics.jsonl."""
    records = read_jsonl(metrics, "training log")
    steps = [r for r in records if "weights" in r]
    validation = [r for r in records if "validation_losses" in r]
    return ([r["step"] for r in steps], np.array([r["weights"] for r in steps]),
            [r["step"] for r in validation], np.array([r["validation_losses"] for r in validation]))


def weight_updates(steps: list[int], weights: np.ndarray, update_steps: list[int]) -> np.ndarray:
    """The weights in force after each balancer update (they are logged with the next step), from the first that
    moves: the warm-up, where nothing could change, would dilute the statistic, and the jump out of it would count
    as one step of noise. Balancers that update every step (no validation steps) give back every step's weights."""
    if update_steps:
        at = dict(zip(steps, weights))
        weights = np.array([at[s + 1] for s in update_steps if s + 1 in at])
    if not len(weights):
        return weights
    moved = np.flatnonzero(np.abs(weights - weights[:1]).max(axis=1) > 1e-9)
    return weights[moved[0]:] if len(moved) else weights[:0]
