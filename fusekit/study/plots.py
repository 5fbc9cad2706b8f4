"""PNG figures of a study (matplotlib, headless): λ sweeps per task, and each joint run's losses and weights.

Each figure is built by a `*_figure` function (which tests inspect: titles, axis labels, legends) and written by
`save`, so that what is drawn and where it goes stay apart.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fusekit.merging.params import PARAMETERS

EXTRAS = ("density", "rate")  # hyperparameters searched besides λ


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, out: Path) -> None:
    """Write the PNG beside its final name, then rename it into place, and free the figure."""
    plt = _pyplot()
    tmp = out.with_name(f".{out.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, out)


def _best(rows: list[dict]) -> dict:
    return max(rows, key=lambda row: row["normalized"])


def _swept(rows: list[dict]) -> tuple[str, str]:
    """The hyperparameter a sweep's x axis shows (λ where searched, else the method's own, e.g. RegMean's α), and
    its label."""
    axis = next(p for p in PARAMETERS if p.name in rows[0] and p.name not in EXTRAS)
    return axis.name, axis.label


def sweeps_figure(sweeps: dict[tuple[str, str], list[dict]], tasks: list[str]):
    """One column per adapter set. Top: the average normalized held-out score against λ, one line per method (and
    density / drop rate), the chosen point starred. Below, one panel per method: each task's own held-out score
    at the chosen density / rate, with the chosen λ marked, so that a task collapsing under a merge shows even when
    the average hides it. A method that searches no λ (RegMean's α) draws its average in its own panel."""
    plt = _pyplot()
    groups = list(dict.fromkeys(group for group, _ in sweeps))
    methods = list(dict.fromkeys(method for _, method in sweeps))
    figure, axes = plt.subplots(1 + len(methods), len(groups), figsize=(4.8 * len(groups), 3.2 * (1 + len(methods))),
                                squeeze=False)
    for column, group in enumerate(groups):
        top = axes[0][column]
        for row_index, method in enumerate(methods, 1):
            panel = axes[row_index][column]
            rows = sweeps.get((group, method))
            if not rows:
                panel.set_visible(False)
                continue
            x, label = _swept(rows)
            average = top if x == "lam" else panel
            lines: dict[str, list[dict]] = {}
            for row in rows:
                extra = ", ".join(f"{k}={row[k]:g}" for k in EXTRAS if k in row)
                lines.setdefault(f"{method} {extra}".strip() + ("" if x == "lam" else " (average)"), []).append(row)
            style = {} if x == "lam" else {"color": "black", "linestyle": "--"}
            for name, points in lines.items():
                points.sort(key=lambda r: r[x])
                average.plot([r[x] for r in points], [r["normalized"] for r in points], marker="o", label=name,
                             **style)
            best = _best(rows)
            average.plot([best[x]], [best["normalized"]], marker="*", markersize=14, color="black", linestyle="none")
            chosen = sorted((r for r in rows if all(r.get(k) == best.get(k) for k in EXTRAS)), key=lambda r: r[x])
            for colour, task in enumerate(tasks):  # a task keeps its colour in every panel
                if task in best:
                    panel.plot([r[x] for r in chosen], [r[task] for r in chosen], marker=".", label=task,
                               color=f"C{colour}")
            panel.axvline(best[x], color="black", linestyle=":", label=f"chosen {label} = {best[x]:g}")
            panel.set(title=f"{group} · {method}", xlabel=label, ylabel="task score (held-out)")
            panel.legend(fontsize=7, loc="best")
        top.set(title=f"{group}: average (★ chosen)", xlabel="λ", ylabel="avg normalized score (held-out)")
        top.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def plot_sweeps(sweeps: dict[tuple[str, str], list[dict]], tasks: list[str], out: Path) -> None:
    save(sweeps_figure(sweeps, tasks), out)


def joint_figure(metrics: Path, tasks: list[str]):
    """Each task's loss and balancer weight over a joint run, and the weights' noise fraction (None: constant).

    Left: the validation losses the balancer saw (the fixed held-out sample), or for balancers without validation
    the training mini-batch losses with their moving average; log scale when the tasks' losses differ tenfold.
    Right: the weights ω_i, titled with the share of their movement that is step-to-step noise.
    """
    from fusekit.artifacts.reading import read_jsonl
    from fusekit.study.diagnostics import (
        balancer_curves,
        noise_fraction,
        weight_updates,
    )

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
    return figure, noise


def plot_joint(metrics: Path, tasks: list[str], out: Path) -> float | None:
    figure, noise = joint_figure(metrics, tasks)
    save(figure, out)
    return noise


def disentanglement_figure(results: list[tuple[str, object]], columns: int | None = None):
    """One heatmap of ξ(α1, α2) per pair (a `Disentanglement`), `columns` to a row (default: all in one row; a
    study's pairs: one row per task pair, one column per adapter variant), on one colour scale; low (dark) is
    disentangled."""
    plt = _pyplot()
    top = max(float(result.xi.max()) for _, result in results) or 1.0
    columns = columns or len(results)
    rows = -(-len(results) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.6 * rows), squeeze=False, layout="constrained")
    for axis in axes.flat[len(results):]:
        axis.set_visible(False)
    for axis, (label, result) in zip(axes.flat, results):
        alphas = result.alphas
        half = (alphas[-1] - alphas[0]) / (2 * (len(alphas) - 1)) if len(alphas) > 1 else 0.5  # cells centred
        low, high = alphas[0] - half, alphas[-1] + half
        image = axis.imshow(result.xi.T, origin="lower", cmap="viridis", vmin=0.0, vmax=top, aspect="auto",
                            extent=(low, high, low, high))
        kind, _, runs = label.partition(" · ")
        axis.set_title(f"{kind}\n{runs}\nmean ξ {float(result.xi.mean()):.3f}", fontsize=9)
        axis.set(xlabel=f"α1 ({result.tasks[0]})", ylabel=f"α2 ({result.tasks[1]})")
    figure.colorbar(image, ax=list(axes.flat), label="disentanglement error ξ")
    return figure


def scaling_figure(points: dict[str, dict[int, list[float]]]):
    """Average normalized score against the number of merged tasks k, one line per merge setting (LoRA ΔW,
    LoRA factors, L-LoRA ...), the spread over subsets as error bars."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for name, by_k in points.items():
        sizes = sorted(by_k)
        axis.errorbar(sizes, [np.mean(by_k[k]) for k in sizes], yerr=[np.std(by_k[k]) for k in sizes], marker="o",
                      capsize=3, label=name)
    axis.set(title="fusion vs number of merged tasks", xlabel="tasks merged (k)",
             ylabel="avg normalized score (dev)", xticks=sorted({k for by_k in points.values() for k in by_k}))
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def plot_scaling(points: dict[str, dict[int, list[float]]], out: Path) -> None:
    save(scaling_figure(points), out)


def similarity_figure(matrices: list[tuple[str, np.ndarray]], tasks: list[str]):
    """The task vectors' cosine-similarity matrix per adapter variant, side by side on one symmetric colour scale,
    each cell annotated."""
    plt = _pyplot()
    off = [np.abs(m[~np.eye(len(m), dtype=bool)]).max() for _, m in matrices if len(m) > 1]
    top = max(off + [1e-3])
    figure, axes = plt.subplots(1, len(matrices), figsize=(4.6 * len(matrices), 4.0), squeeze=False)
    for axis, (name, matrix) in zip(axes[0], matrices):
        shown = np.where(np.eye(len(matrix), dtype=bool), np.nan, matrix)  # the diagonal (1) would swamp the scale
        image = axis.imshow(shown, cmap="coolwarm", vmin=-top, vmax=top)
        for i in range(len(matrix)):
            for j in range(len(matrix)):
                axis.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", fontsize=7)
        axis.set(title=name, xticks=range(len(tasks)), yticks=range(len(tasks)), xlabel="task")
        axis.set_xticklabels(tasks, fontsize=8)
        axis.set_yticklabels(tasks, fontsize=8)
    axes[0][0].set_ylabel("task")
    figure.colorbar(image, ax=list(axes[0]), label="cosine similarity of task vectors")
    return figure


def coefficients_figure(name: str, coefficients: dict[str, list[float]], tasks: list[str]):
    """AdaMerging's learned λ: adapter layers (rows, in model order) × tasks (columns)."""
    plt = _pyplot()
    layers = list(coefficients)
    values = np.array([coefficients[layer] for layer in layers])
    figure, axis = plt.subplots(figsize=(1.2 * len(tasks) + 3, 0.18 * len(layers) + 1.8))
    image = axis.imshow(values, aspect="auto", cmap="viridis")
    axis.set(title=f"{name}: learned λ per layer and task", xlabel="task", ylabel="adapter layer",
             xticks=range(len(tasks)), yticks=range(len(layers)))
    axis.set_xticklabels(tasks, fontsize=8)
    axis.set_yticklabels([layer.removeprefix("base_model.model.") for layer in layers], fontsize=5)
    figure.colorbar(image, ax=axis, label="λ")
    figure.tight_layout()
    return figure
