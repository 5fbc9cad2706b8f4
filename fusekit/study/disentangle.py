"""`fusekit disentangle`: the weight disentanglement of two task vectors (Ortiz-Jiménez et al., NeurIPS 2023), as
the L-LoRA paper (Tang et al., ICLR 2024) measures it:

    ξ(α1, α2) = Σ_{i=1,2} E_{x ∈ D_i} [ dist( f_i(x; φ0 + α_i τ_i), f_i(x; φ0 + α1 τ1 + α2 τ2) ) ]

f_i is the model with task i's own head (an L-LoRA vector with its linearized forward). dist is prediction
disagreement (a different argmax) for classification; for STS-B it is |Δ| / 5, the absolute difference of the two
predicted similarities divided by the range of the 0–5 scale, so that it lies in [0, 1] like a disagreement rate.
ξ = 0 means that adding the other task's vector changes nothing on this task's inputs: the vectors are
disentangled. D_i: `examples` validation examples of task i — an analysis, so nothing is chosen on them.

Vectors combine as `fusekit merge` would with task arithmetic at λ = 1 and weights (α1, α2): in `factors` space
(the adapter parameters φ, as in the paper; the only space of L-LoRA) or, for LoRA, in `delta-w` space (exact ΔW).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from fusekit.artifacts.run_folder import Run
from fusekit.artifacts.task_vector import TaskVector
from fusekit.data.loading import load_split
from fusekit.data.tasks import TaskSpec, get_task
from fusekit.errors import FusekitError
from fusekit.evaluation.eval import TaskScorer
from fusekit.merging.methods.task_arithmetic import TaskArithmetic
from fusekit.merging.stream import merge_vectors
from fusekit.progress import console, progress_bar

SIMILARITY_RANGE = 5.0  # STS-B's 0–5 scale
ALPHAS = tuple(float(a) for a in np.linspace(-2.0, 2.0, 9))


def distance(task: TaskSpec, reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean disagreement of two models' predictions on the same examples (see the module docstring)."""
    if task.is_regression:
        return float(np.mean(np.abs(reference[:, 0] - logits[:, 0])) / SIMILARITY_RANGE)
    return float(np.mean(reference.argmax(axis=1) != logits.argmax(axis=1)))


def combine(runs: list[Run], coefficients: list[float], space: str) -> TaskVector:
    """φ0 + Σ c_i τ_i, merged as `fusekit merge` merges (task arithmetic at λ = 1, weights c)."""
    return merge_vectors(runs, TaskArithmetic(1.0), list(coefficients), space)[0]


@dataclass
class Disentanglement:
    tasks: tuple[str, str]
    alphas: list[float]
    per_task: np.ndarray  # 2 × G × G: task i's term at (α1, α2)
    space: str
    examples: int

    @property
    def xi(self) -> np.ndarray:
        return self.per_task.sum(axis=0)

    def mean_over(self, low: float, high: float) -> float | None:
        """Mean ξ over the grid points with both α in [low, high] (None: the grid has none there)."""
        inside = [k for k, a in enumerate(self.alphas) if low <= a <= high]
        return float(self.xi[np.ix_(inside, inside)].mean()) if inside else None

    @classmethod
    def from_json(cls, record: dict) -> Disentanglement:
        tasks = tuple(record["tasks"])
        return cls(tasks, list(record["alphas"]), np.array([record["per_task"][t] for t in tasks], dtype=float),
                   record["space"], int(record["examples"]))

    def to_json(self) -> dict:
        return {"tasks": list(self.tasks), "alphas": self.alphas, "space": self.space, "examples": self.examples,
                "xi": self.xi.tolist(), "per_task": {t: g.tolist() for t, g in zip(self.tasks, self.per_task)}}


def disentangle(runs: list[Run], alphas: list[float], examples: int, space: str, device: torch.device,
                seed: int = 0, data: str | None = None) -> Disentanglement:
    """ξ over the grid `alphas` × `alphas` for two runs of different tasks (one shared φ0)."""
    if len(runs) != 2 or runs[0].head_task == runs[1].head_task:
        raise FusekitError("disentanglement compares two runs of two different tasks")
    if runs[0].vector.meta["kind"] != "lora" and space != "factors":
        raise FusekitError(f"{runs[0].vector.meta['kind']} vectors combine in their own parameter space: "
                           "use --space factors")
    scorers = []
    for run in runs:
        task = get_task(run.head_task)
        split = load_split(task, "validation", data or run.config.data).capped(examples, seed)
        scorers.append(TaskScorer(run.config.model, run.config.max_length, split, run.head, device,
                                  source=str(run.folder), precision=run.config.precision))  # as it trained
    size = len(alphas)
    per_task = np.zeros((2, size, size))
    with progress_bar() as bar:
        job = bar.add_task(f"disentangle {runs[0].head_task}+{runs[1].head_task}", total=2 * size + size * size,
                           status="")
        own = []  # own[i][a]: f_i at φ0 + alphas[a] τ_i
        for i, (run, scorer) in enumerate(zip(runs, scorers)):
            own.append([])
            for alpha in alphas:
                own[i].append(scorer.logits(combine([run], [alpha], space)))
                bar.update(job, advance=1)
        for a, alpha1 in enumerate(alphas):
            for b, alpha2 in enumerate(alphas):
                both = combine(runs, [alpha1, alpha2], space)
                for i, (run, scorer) in enumerate(zip(runs, scorers)):
                    per_task[i, a, b] = distance(scorer.task, own[i][(a, b)[i]], scorer.logits(both))
                bar.update(job, advance=1, status=f"α = ({alpha1:g}, {alpha2:g}) ξ = {per_task[:, a, b].sum():.3f}")
    return Disentanglement((runs[0].head_task, runs[1].head_task), list(alphas), per_task, space,
                           min(len(s.split) for s in scorers))


def task_pairs(tasks: list[str], wanted: list[str] | None) -> list[tuple[str, ...]]:
    """The task pairs `wanted` (each `sst2+mrpc`, two different tasks of `tasks`), or every pair of `tasks`."""
    if not wanted:
        return list(combinations(tasks, 2))
    pairs = [tuple(p.strip().split("+")) for p in wanted]
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(tasks):
            raise FusekitError(f"pair {'+'.join(pair)!r}: expected two different tasks of {', '.join(tasks)} joined "
                               "by '+', such as sst2+rte")
    return pairs


def disentangle_folders(folders: list[Path], out: Path, alphas: list[float], examples: int, space: str,
                        device: str, seed: int, data: str | None, overwrite: bool,
                        columns: int | None = None) -> list[dict]:
    """`fusekit disentangle`: one ξ grid per pair of run folders, written as JSON and one heatmap figure (every
    pair on one colour scale, so LoRA and L-LoRA compare at a glance)."""
    from fusekit.artifacts.atomic import atomic_write_json
    from fusekit.artifacts.layout import DISENTANGLEMENT, DISENTANGLEMENT_PLOT
    from fusekit.artifacts.output import claim_output
    from fusekit.artifacts.run_folder import load_run
    from fusekit.artifacts.staging import staged_dir
    from fusekit.models.base import resolve_device
    from fusekit.study.plots import disentanglement_figure, save

    if not folders or len(folders) % 2:
        raise FusekitError(f"expected run folders in pairs (A B [A' B' ...]), got {len(folders)}")
    if not alphas or not all(np.isfinite(alphas)):
        raise FusekitError("--alphas: expected finite numbers such as -2,-1,0,1,2")
    with claim_output(out, overwrite, folders):
        runs = [load_run(folder) for folder in folders]  # every bad folder is reported before any work
        target = resolve_device(device)
        results = [disentangle(runs[i:i + 2], alphas, examples, space, target, seed, data)
                   for i in range(0, len(runs), 2)]
        labels = [f"{runs[i].vector.meta['kind']} · {runs[i].folder.name} + {runs[i + 1].folder.name}"
                  for i in range(0, len(runs), 2)]
        records = [{"runs": [str(folders[2 * k]), str(folders[2 * k + 1])], "label": label, **result.to_json()}
                   for k, (label, result) in enumerate(zip(labels, results))]
        with staged_dir(out, overwrite, "disentanglement") as stage:
            atomic_write_json(stage / DISENTANGLEMENT, records)
            save(disentanglement_figure(list(zip(labels, results)), columns), stage / DISENTANGLEMENT_PLOT)
    for label, result in zip(labels, results):
        console.print(f"{label}: mean ξ over the grid {result.xi.mean():.4f}")
    console.print(f"wrote {out}")
    return records
