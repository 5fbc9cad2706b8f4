"""PNG plots of training logs (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_joint(metrics: Path, tasks: list[str], out: Path) -> None:
    """Balancer weights ω_i(t) and, where logged, each task's validation loss over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
