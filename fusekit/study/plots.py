"""PNG plots of training logs (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path


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


def plot_joint(metrics: Path, tasks: list[str], out: Path) -> None:
    """Balancer weights ω_i(t) and, where logged, each task's validation loss over training."""
    plt = _pyplot()

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if "weights" in r]
    validation = [r for r in records if "validation_losses" in r]
    figure, axes = plt.subplots(1, 2 if validation else 1, figsize=(11 if validation else 6, 4), squeeze=False)
    for i, task in enumerate(tasks):
        axes[0][0].plot([r["step"] for r in steps], [r["weights"][i] for r in steps], label=task)
        if validation:
            axes[0][1].plot([r["step"] for r in validation], [r["validation_losses"][i] for r in validation],
                            label=task)
    axes[0][0].set(title="task weights ω_i", xlabel="step")
    axes[0][0].legend()
    if validation:
        axes[0][1].set(title="validation loss (held-out training examples)", xlabel="step")
        axes[0][1].legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
