"""Scoring an adapted model on a task split with the task's official metric."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fusekit.data.loading import EncodedSplit, make_loader
from fusekit.data.tasks import TaskSpec
from fusekit.data.text import CHOICE_VALUES, text_loss
from fusekit.evaluation.calibration import apply_offsets
from fusekit.evaluation.metrics import compute_metrics, predictions
from fusekit.progress import tracked


def task_loss(task: TaskSpec, logits: torch.Tensor, batch: dict[str, torch.Tensor], text: bool = False) -> torch.Tensor:
    """A head's loss: mean squared error for regression (STS-B), cross-entropy otherwise; with the text objective
    the cross-entropy of the answer token (fusekit.data.text.text_loss)."""
    labels = batch["labels"]
    if text:
        return text_loss(logits, labels, batch.get(CHOICE_VALUES))
    if task.is_regression:
        return F.mse_loss(logits[:, 0].float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast when asked, or by default on GPUs that support it; fp32 elsewhere (bf16 on a CPU is fast only
    with AMX tiles, slower than fp32 without them: docs/design.md, mixed precision)."""
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def predict(model: torch.nn.Module, data: EncodedSplit, task: TaskSpec, device: torch.device,
            batch_size: int = 128, progress: str | None = None,
            precision: str = "auto") -> tuple[np.ndarray, np.ndarray, float]:
    """Logits and labels of every example, in the loader's order (sorted by length: the same on every call), and
    the mean loss. Under `inference_mode` (no autograd bookkeeping; forward-mode AD, which the linearized models
    need, still works there). `progress` names a bar over the batches (None: none, for work that shows its own).
    """
    model.eval()
    logits, labels, loss_sum = [], [], 0.0
    with torch.inference_mode():
        loader = make_loader(data, batch_size, shuffle=False)
        for batch in tracked(loader, progress or "", len(loader), show=progress is not None):
            batch = to_device(batch, device)
            with autocast(device, precision):
                out = model(batch).float()
            loss_sum += float(task_loss(task, out, batch, model.text)) * len(out)
            logits.append(out.cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
    y = np.concatenate(labels)
    return np.concatenate(logits), y, loss_sum / len(y)


def evaluate(model: torch.nn.Module, data: EncodedSplit, task: TaskSpec, device: torch.device,
             batch_size: int = 128, progress: str | None = None,
             offsets: list[float] | None = None, precision: str = "auto") -> dict[str, float]:
    """Official metrics, `score`, mean loss, example count and the examples' fingerprint on `data` (model left in
    eval mode). With answer `offsets` (fusekit.evaluation.calibration): the metrics of the calibrated answers, and
    the score without them as `uncalibrated_score`."""
    logits, y, loss = predict(model, data, task, device, batch_size, progress, precision)
    return scored(task, logits, y, loss, data.fingerprint, offsets)


def scored(task: TaskSpec, logits: np.ndarray, y: np.ndarray, loss: float, fingerprint: str,
           offsets: list[float] | None = None) -> dict[str, float]:
    """`evaluate`'s record of outputs already predicted."""
    metrics = compute_metrics(task, y, predictions(task, logits))
    if offsets is not None:
        calibrated = compute_metrics(task, y, predictions(task, apply_offsets(task, logits, offsets)))
        metrics = {**calibrated, "uncalibrated_score": metrics["score"]}
    return {**metrics, "loss": loss, "examples": int(len(y)), "examples_fingerprint": fingerprint}
