"""`fusekit eval-lm`: scoring a causal-LM adapter (merged or not) on a task given as prompts and answers.

A task is a JSON-lines file of {"prompt": ..., "answer": ...}. Two metrics:

- `loglik`: the mean log-likelihood per answer token, log p(answer | prompt) / |answer| (teacher forcing), and
  its exponent's inverse, the answer perplexity;
- `exact`: greedy decoding of as many tokens as the answer has, compared with the answer after stripping
  whitespace (exact match rate).

GLUE as text-to-text prompts is one such task set. The base model is the adapter's own
`base_model_name_or_path` unless `--base` says otherwise (a local folder, or a hub id when online).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fusekit.artifacts.reading import read_jsonl
from fusekit.errors import FusekitError
from fusekit.progress import tracked

METRICS = ("loglik", "exact")


@dataclass
class Example:
    prompt: str
    answer: str
    where: str = "prompt"  # file:line, for errors


def read_prompts(path: Path) -> list[Example]:
    examples = []
    for number, record in enumerate(read_jsonl(path, "prompts file", strict=True), 1):
        if not isinstance(record.get("prompt"), str) or not isinstance(record.get("answer"), str) \
                or not record["prompt"].strip() or not record["answer"].strip():
            raise FusekitError(f"{path}:{number}: expected {{\"prompt\": non-empty text, \"answer\": non-empty "
                               "text}")
        examples.append(Example(record["prompt"], record["answer"], f"{path}:{number}"))
    if not examples:
        raise FusekitError(f"{path}: no examples")
    return examples


def load_causal_lm(adapter: Path, base: str | None, device: torch.device):
    """(model with the adapter, tokenizer): plain transformers + peft, as a user of the merged folder would."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusekit.artifacts.layout import PEFT_CONFIG
    from fusekit.artifacts.reading import read_json
    from fusekit.models.base import quiet_transformers, resolve_model

    config = read_json(Path(adapter) / PEFT_CONFIG, "adapter config")
    if not (base or config.get("base_model_name_or_path")):
        raise FusekitError(f"{adapter} names no base model: pass --base")
    source = resolve_model(base) if base else config["base_model_name_or_path"]  # --base smollm2-135m works too
    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise FusekitError(f"could not load the base model {source!r} ({str(error).splitlines()[0][:120]}); "
                           "pass --base with a local folder when offline") from None
    model = PeftModel.from_pretrained(model, str(adapter)).to(device).eval()
    return model, tokenizer


def _check_length(model, length: int, example: Example) -> None:
    """A prompt and answer the model has positions for (past them, position embeddings index out of range)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and length > limit:
        raise FusekitError(f"{example.where}: prompt and answer are {length} tokens, more than the model's {limit} "
                           "positions (shorten the prompt)")


@torch.inference_mode()
def score_prompts(model, tokenizer, examples: list[Example], metric: str, device: torch.device) -> dict:
    if metric not in METRICS:
        raise FusekitError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    total, tokens, hits = 0.0, 0, 0
    for example in tracked(examples, f"eval-lm {metric}", len(examples)):
        prompt = tokenizer(example.prompt, return_tensors="pt").input_ids.to(device)
        answer = tokenizer(example.answer, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
        _check_length(model, prompt.shape[1] + answer.shape[1], example)
        if metric == "loglik":
            ids = torch.cat([prompt, answer], dim=1)
            logits = model(input_ids=ids).logits[0, prompt.shape[1] - 1:-1].float()
            total += float(logits.log_softmax(-1).gather(1, answer[0][:, None]).sum())
            tokens += answer.shape[1]
        else:
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                 max_new_tokens=answer.shape[1], do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
            hits += text.strip() == example.answer.strip()
    if metric == "loglik":
        mean = total / tokens
        return {"metric": "loglik", "loglik_per_token": mean, "perplexity": float(torch.tensor(-mean).exp()),
                "score": mean, "examples": len(examples)}
    return {"metric": "exact", "exact_match": hits / len(examples), "score": hits / len(examples),
            "examples": len(examples)}
