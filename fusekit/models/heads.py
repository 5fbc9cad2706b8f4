"""Task heads that fit the checkpoint: how a sentence (or a pair) becomes one vector, and the layer on top.

`cls` keeps the architecture's own head (BERT: the [CLS] token through its pooler), so a PEFT folder loads in
plain `AutoModelForSequenceClassification` with identical logits. `mean` and `max` pool the last hidden states
over the real tokens, as sentence-transformers checkpoints were trained to; `auto` reads the checkpoint's
`1_Pooling/config.json` (sentence-transformers) and falls back to `cls`. Pair encoding `bi` encodes the two
sentences apart (Sentence-BERT): a linear layer over (u, v, |u − v|, u ⊙ v), or for regression a scaled cosine.

The wrapper names its encoder after the architecture's `base_model_prefix` (`bert`, `roberta`, …) and its head
`classifier`, so adapter and head weights keep the key names of `AutoModelForSequenceClassification`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from fusekit.data.loading import SECOND
from fusekit.errors import FusekitError

POOLINGS = ("auto", "cls", "mean", "max")
OBJECTIVES = ("auto", "text", "head")  # auto: text for a generative model, head for an encoder
PAIR_ENCODINGS = ("cross", "bi")
POOLING_CONFIG = "1_Pooling/config.json"  # sentence-transformers' record of how the checkpoint was trained


@dataclass(frozen=True)
class HeadSpec:
    """How one task reads the model (resolved: never `auto`). Stored with each task head; heads written before
    these settings existed read as the architecture's own head (`cls`, `cross`, `head`). With the `text`
    objective a generative model writes the answer word and there is no head: its weights are empty."""

    pooling: str = "cls"
    pair_encoding: str = "cross"
    objective: str = "head"

    @property
    def native(self) -> bool:
        """The architecture's own model class (a sequence classifier, or the LM itself for text): plain peft
        reproduces it."""
        return self.objective == "text" or (self.pooling == "cls" and self.pair_encoding == "cross")

    @property
    def text(self) -> bool:
        return self.objective == "text"

    def meta(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> HeadSpec:
        return cls(meta.get("pooling", "cls"), meta.get("pair_encoding", "cross"), meta.get("objective", "head"))


@dataclass
class TaskHead:
    """A task head's trained weights and how it reads the encoder (heads stay per task, never merged)."""

    weights: dict[str, torch.Tensor]
    spec: HeadSpec


def resolve_head(pooling: str, pair_encoding: str, is_pair: bool, source: str) -> HeadSpec:
    """`auto` pooling → the checkpoint's own (else `cls`); `bi` applies to sentence-pair tasks only."""
    if pooling not in POOLINGS:
        raise FusekitError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    if pair_encoding not in PAIR_ENCODINGS:
        raise FusekitError(f"pair_encoding {pair_encoding!r} is not one of {', '.join(PAIR_ENCODINGS)}")
    if pooling == "auto":
        pooling = checkpoint_pooling(source) or "cls"
    return HeadSpec(pooling, pair_encoding if is_pair else "cross")


def checkpoint_pooling(source: str) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with (its 1_Pooling/config.json), if it says."""
    config = Path(source) / POOLING_CONFIG
    if not config.is_file():
        config = _from_hub(source)
    if config is None:
        return None
    try:
        modes = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for mode, name in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_max_tokens", "max"),
                       ("pooling_mode_cls_token", "cls")):
        if modes.get(mode):
            return name
    return None


def _from_hub(repo: str) -> Path | None:
    """The hub checkpoint's pooling config when it can be had (cached or online); None otherwise."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, POOLING_CONFIG))
    except Exception:  # offline, no such repo or file, not a repo id: the checkpoint says nothing
        return None


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The first token's hidden state (`cls`), or the mean or max over the tokens the attention mask keeps."""
    if mode == "cls":
        return hidden[:, 0]
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)
    return hidden.masked_fill(keep == 0, torch.finfo(hidden.dtype).min).amax(1)


class CosineHead(nn.Module):
    """a · cos(u, v) + b: the bi-encoder's regression head, started at the untrained model's zero-shot answer."""

    def __init__(self, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([scale]))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (self.weight * nn.functional.cosine_similarity(u, v, dim=-1) + self.bias).unsqueeze(-1)


class PairHead(nn.Module):
    """Linear over (u, v, |u − v|, u ⊙ v) (Reimers & Gurevych, Sentence-BERT, 2019)."""

    def __init__(self, hidden: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(4 * hidden, num_labels)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))


class PooledClassifier(nn.Module):
    """An encoder with a pooled head: `mean`/`max` pooling, cross- or bi-encoded pairs.

    Built from a loaded `AutoModelForSequenceClassification` whose encoder it keeps and whose own head it
    replaces. The encoder's pooler (if any) stays, unused, so that the backbone and its fingerprint are those
    of the `cls` path: adapters of tasks with different heads still merge.
    """

    def __init__(self, model: nn.Module, pooling: str, pair_encoding: str, regression: bool):
        super().__init__()
        self.config = model.config
        self.name_or_path = model.name_or_path
        self.prefix = model.base_model_prefix
        setattr(self, self.prefix, model.base_model)
        self.pooling, self.pair_encoding = pooling, pair_encoding
        hidden, labels = model.config.hidden_size, model.config.num_labels
        dropout = getattr(model.config, "classifier_dropout", None)
        self.dropout = nn.Dropout(dropout if dropout is not None else getattr(model.config, "hidden_dropout_prob", 0.1))
        if pair_encoding == "bi":
            self.classifier = CosineHead(5.0) if regression else PairHead(hidden, labels)
        else:
            self.classifier = nn.Linear(hidden, labels)

    def _embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = getattr(self, self.prefix)(**inputs).last_hidden_state
        return pool(hidden, inputs["attention_mask"], self.pooling)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        first = {"input_ids": input_ids, "attention_mask": attention_mask}
        second = {k[: -len(SECOND)]: kwargs.pop(k) for k in list(kwargs) if k.endswith(SECOND)}
        first.update({k: v for k, v in kwargs.items() if k == "token_type_ids"})
        u = self._embed(first)
        if self.pair_encoding == "bi":
            v = self._embed(second)
            if isinstance(self.classifier, CosineHead):
                return SequenceClassifierOutput(logits=self.classifier(u, v))
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(u), self.dropout(v)))
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(u)))
