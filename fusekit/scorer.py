"""Scoring many task vectors on one task's examples, building the model once per adapter shape."""

from __future__ import annotations

import torch

from fusekit.adapters import AdaptedModel, AdapterSpec
from fusekit.data.loading import EncodedSplit, Split
from fusekit.evaluate import evaluate
from fusekit.artifacts.run_folder import model_for_vector
from fusekit.artifacts.task_vector import TaskVector


class TaskScorer:
    """Scores vectors on `split` with one task head and base model; λ searches call it once per grid point."""

    def __init__(self, model_name: str | None, max_length: int, split: Split, head: dict[str, torch.Tensor],
                 device: torch.device, batch_size: int = 128, source: str = ""):
        self.model_name, self.max_length, self.source = model_name, max_length, source
        self.split, self.head, self.device, self.batch_size = split, head, device, batch_size
        self.task = split.task
        self._cache: dict[tuple, tuple[AdaptedModel, EncodedSplit]] = {}

    def score(self, vector: TaskVector, nonlinear: bool = False) -> dict[str, float]:
        spec = AdapterSpec.from_meta(vector.meta, self.source)
        # A nonzero init shifted the base weights by −s·B0·A0: another φ0 needs another model.
        key = (spec, nonlinear, vector.meta["init_fingerprint"] if spec.lora_init == "nonzero" else None)
        if key in self._cache:
            model, data = self._cache[key]
            model.load_init_state(vector.init)
            model.load_adapter_state(vector.weights())
        else:
            base, model = model_for_vector(self.model_name, vector, self.head, self.task, self.source, nonlinear)
            model, data = model.to(self.device), EncodedSplit(self.split, base.tokenizer, self.max_length)
            self._cache[key] = (model, data)
        return evaluate(model, data, self.task, self.device, self.batch_size)
