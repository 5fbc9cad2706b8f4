"""`fusekit.load_adapter`: any folder fusekit wrote (a run, a merged or a joint folder) as a model ready for
inference."""

from __future__ import annotations

from pathlib import Path

from fusekit.artifacts.merged_folder import is_merged, load_merged
from fusekit.artifacts.run_folder import load_run, model_for_run, model_for_vector
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.models.adapters import AdaptedModel


def load_adapter(folder: str | Path, task: str | None = None) -> tuple[AdaptedModel, object]:
    """A finished run, or one task of a merged or joint folder, as `(model, tokenizer)` ready for inference.

    On a generative model (text objective) `model(batch)` returns each label's answer-word log-probability,
    with `batch` from the base model's encoding of a split (`load_base_model(...).encode(split, max_length)`, then
    its `collate`): prompts, left padding and the task's answer tokens. On an encoder `model(batch)` returns the
    head's logits, with `batch = dict(tokenizer(first, second, return_tensors="pt",
    padding=True))`; for a bi-encoder head (pair_encoding bi) tokenize each sentence apart and add the second's
    tensors with the suffix `_b` (`input_ids_b`, `attention_mask_b`). This is the way to load heads that plain
    peft's `AutoModelForSequenceClassification` cannot express (mean or max pooling, bi-encoders) and L-LoRA's
    linearized forward; a cls-pooled LoRA run also loads in plain peft from its PEFT folder with the same logits.
    """
    folder = Path(folder)
    if not is_merged(folder):
        run = load_run(folder)
        base, model = model_for_run(run, get_task(task or run.head_task))
        return model.eval(), base.tokenizer
    manifest, vector, heads = load_merged(folder)
    if task is None and len(heads) > 1:
        raise FusekitError(f"{folder} holds heads for {', '.join(heads)}: name one with task=...")
    name = task or next(iter(heads))
    if name not in heads:
        raise FusekitError(f"{folder} has no head for {name} (it holds {', '.join(heads)})")
    base, model = model_for_vector(manifest["model"], vector, heads[name], get_task(name), str(folder))
    return model.eval(), base.tokenizer
