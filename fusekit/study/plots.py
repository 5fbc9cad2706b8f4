"""PNG plots of training logs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweeps(sweeps: dict[tuple[str, str], list[dict]], out: Path) -> None:
    """Average normalized score on held-out data against λ: one panel per adapter set, one line per method
    (and per density / drop rate where those were searched too)."""
    plt = _pyplot()
    groups = list(dict.fromkeys(group for group, _ in sweeps))
    figure, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), squeeze=False, sharey=True)
    for axis, group in zip(axes[0], groups):
        for (other, method), rows in sweeps.items():
            if other != group:
                continue
            lines: dict[str, list[dict]] = {}
            for row in rows:
                extra = ", ".join(f"{k}={row[k]:g}" for k in ("density", "rate") if k in row)
                lines.setdefault(f"{method} {extra}".strip(), []).append(row)
            for label, points in lines.items():
                points.sort(key=lambda r: r["lam"])
                axis.plot([r["lam"] for r in points], [r["normalized"] for r in points], marker="o", label=label)
        axis.set(title=group, xlabel="λ")
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("avg normalized score (held-out)")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def plot_joint(metrics: Path, tasks: list[str], out: Path) -> float | None:
    """Each task's loss and balancer weight over a joint run; returns the weights' noise fraction (None: constant).

    Left: the validation losses the balancer saw (the fixed held-out sample), or for balancers without validation
    the training mini-batch losses with their moving average; log scale when the tasks' losses differ tenfold.
    Right: the weights ω_i, titled with the share of their movement that is step-to-step noise.
    """
    from fusekit.artifacts.reading import read_jsonl
    from fusekit.study.diagnostics import balancer_curves, noise_fraction, weight_updates

    plt = _pyplot()
    steps, weights, val_steps, val = balancer_curves(metrics)
    noise = noise_fraction(weight_updates(steps, weights, val_steps))
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    if len(val):
        for i, task in enumerate(tasks):
            axes[0].plot(val_steps, val[:, i], marker=".", label=task)
        axes[0].set(title="validation loss (fixed held-out sample)", ylabel="mean loss")
        values = val
    else:
        rows = [r for r in read_jsonl(metrics, "training log") if "losses" in r]
        losses = np.array([r["losses"] for r in rows])
        span = max(1, len(rows) // 20)
        for i, task in enumerate(tasks):
            line, = axes[0].plot([r["step"] for r in rows], losses[:, i], alpha=0.25)
            smooth = np.convolve(losses[:, i], np.ones(span) / span, mode="valid")
            axes[0].plot([r["step"] for r in rows][span - 1:], smooth, color=line.get_color(), label=task)
        axes[0].set(title=f"training batch loss (faint) and its {span}-step mean", ylabel="loss")
        values = losses
    positive = values[values > 0]
    if len(positive) and positive.max() / positive.min() > 10:
        axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=8, loc="best")
    for i, task in enumerate(tasks):
        axes[1].plot(steps, weights[:, i], label=task)
    moved = "weights never moved" if noise is None else f"noise fraction {noise:.2f}"
    axes[1].set(title=f"task weights ω_i ({moved})", xlabel="step", ylabel="ω_i (Σ ω = K)")
    axes[1].legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return noise
