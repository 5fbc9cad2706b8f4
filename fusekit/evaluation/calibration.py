"""Answer calibration: one offset per answer of a task, added to its scores before the answer is read.

A merge of text adapters keeps most of each task's ranking of its examples but moves where it puts the boundary
between its answers: all tasks answer in the same few words, and the summed vectors pull those words' priors in
different directions (docs/results/smollm2.md). Classifier heads are per task and hold a bias for this; a text
model's head is the shared vocabulary. The offsets b are that bias for one task: fitted on held-out training
examples by minimizing the cross-entropy of softmax(s + b) over the answers (convex in b; at the optimum the mean
calibrated distribution equals the labels' frequencies, the condition the tests check by hand), the prior
correction of "Calibrate Before Use" (Zhao et al., 2021) learned from labelled examples instead of a content-free
prompt. Offsets are defined up to a constant: stored with the first answer's at 0. A regression task asked as text
(STS-B writes a number) has its answers' weights moved and its expected value recomputed; a regression head's one
output has nothing to calibrate (a shift changes no correlation).

The cross-entropy is not the task's metric: on a merge that lost a task's ranking rather than its threshold
(CoLA's MCC, STS-B's correlation) the fitted offsets can score worse. A task is calibrated only where its
held-out examples, calibrated out of fold, score better than not calibrated.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fusekit.data.tasks import TaskSpec
from fusekit.data.text import split_targets
from fusekit.errors import FusekitError
from fusekit.evaluation.metrics import compute_metrics, predictions

LIMIT = 20.0  # an answer no held-out label uses would be pushed to −∞: bounded, it is never chosen anyway


def answer_columns(task: TaskSpec, logits: np.ndarray) -> slice | None:
    """The columns of `logits` that hold answer scores: all of a classifier's, a text regression's after its
    expected value; None for a regression head (nothing to calibrate)."""
    if not task.is_regression:
        return slice(0, None)
    return slice(1, None) if logits.shape[1] > 1 else None


def fit_offsets(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> list[float] | None:
    """The offsets that minimize the answers' cross-entropy on these examples (None: nothing to calibrate)."""
    columns = answer_columns(task, logits)
    if columns is None:
        return None
    scores = torch.as_tensor(logits[:, columns], dtype=torch.float64)
    if task.is_regression:
        targets = split_targets(torch.as_tensor(labels), torch.tensor(task.answer_values)).double()
    else:
        targets = torch.nn.functional.one_hot(torch.as_tensor(labels).long(), scores.shape[1]).double()

    def loss(offsets: torch.Tensor) -> float:
        return float(-(targets * (scores + offsets).log_softmax(dim=-1)).sum(dim=-1).mean())

    offsets = torch.zeros(scores.shape[1], dtype=torch.float64)
    for _ in range(100):  # damped Newton on a smooth convex function of a few variables: a handful of steps
        p = (scores + offsets).softmax(dim=-1)
        gradient = (p - targets).mean(dim=0)[1:]  # the first offset stays 0
        if gradient.abs().max() < 1e-12:
            break
        hessian = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(dim=0)[1:, 1:]
        step = torch.linalg.lstsq(hessian, gradient[:, None]).solution[:, 0]
        current, size = loss(offsets), 1.0
        while size > 1e-6:
            trial = offsets.clone()
            trial[1:] = (offsets[1:] - size * step).clamp(-LIMIT, LIMIT)
            if loss(trial) <= current:
                break
            size /= 2
        if size <= 1e-6 or (trial - offsets).abs().max() < 1e-12:
            break
        offsets = trial
    return [float(v) for v in offsets]


def out_of_fold(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`logits` calibrated with offsets that never read their own example's label: the even-numbered examples with
    the offsets fitted on the odd-numbered ones and the reverse. A search that scores each point calibrated on the
    same examples the offsets are fitted on would favour the points whose offsets fit noise."""
    if answer_columns(task, logits) is None or len(labels) < 4:
        return logits
    calibrated = np.array(logits, dtype=np.float64)
    for scored, fitted in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        offsets = fit_offsets(task, logits[fitted], labels[fitted])
        calibrated[scored] = apply_offsets(task, logits[scored], offsets)
    return calibrated


def held_out_calibration(task: TaskSpec, logits: np.ndarray,
                         labels: np.ndarray) -> tuple[np.ndarray, list[float] | None]:
    """What calibration does for a task on held-out examples: the outputs a search scores (calibrated out of fold
    where that scores better than as they are) and the offsets to keep, fitted on all of them (None where it does
    not score better)."""
    calibrated = out_of_fold(task, logits, labels)
    if _score(task, calibrated, labels) <= _score(task, logits, labels):
        return logits, None
    return calibrated, fit_offsets(task, logits, labels)


def _score(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> float:
    return compute_metrics(task, labels, predictions(task, logits))["score"]


def apply_offsets(task: TaskSpec, logits: np.ndarray, offsets: list[float]) -> np.ndarray:
    """`logits` with the offsets added to the answer columns (and a text regression's expected value recomputed
    from them)."""
    columns = answer_columns(task, logits)
    calibrated = np.array(logits, dtype=np.float64)
    calibrated[:, columns] += np.asarray(offsets)
    if task.is_regression:
        weights = torch.as_tensor(calibrated[:, columns]).softmax(dim=-1).numpy()
        calibrated[:, 0] = weights @ np.asarray(task.answer_values)
    return calibrated


def answer_count(task: TaskSpec, text: bool) -> int:
    """How many offsets a task's scores take: one per answer word (text), per class (a head); none for a
    regression head."""
    if text:
        return len(task.answers)
    return 0 if task.is_regression else task.num_labels


def check_offsets(value: object, count: int, where: str) -> list[float]:
    """Offsets as a manifest records them: `count` finite numbers within ±LIMIT."""
    if not isinstance(value, list) or len(value) != count or not count or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= LIMIT
            for v in value):
        raise FusekitError(f"{where}: expected {count} finite numbers within ±{LIMIT:g} (one offset per answer)")
    return [float(v) for v in value]
