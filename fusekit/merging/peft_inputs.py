"""Merging LoRA adapters that fusekit did not train: any PEFT LoRA folder (or Hub id), any model family.

Such an adapter carries no φ0, so its task vector is read from the adapter itself, in ΔW space: with the standard
LoRA initialisation (B0 = 0) the change it makes to a weight is exactly ΔW = s·B·A, with s = α/r (α/√r under
rsLoRA), r and α per layer (`rank_pattern`, `alpha_pattern`; r is read from the tensors). Variants whose change is
not s·B·A are refused by name (DoRA, LoRA biases, trainable biases); so is a merge in factor space, which needs φ0.

The merge is exact where the result is low rank: a linear method (task arithmetic, averaging) concatenates the
inputs' factors, Σ_i c_i s_i B_i A_i = [c_1 s_1 B_1 … c_K s_K B_K]·[A_1; …; A_K], written with scale 1 (α = r per
layer). TIES and DARE act on the products and are written back by truncated SVD (`--rank`, default Σ r_i), the
truncation error recorded. `modules_to_save` (heads, embeddings) shared by the inputs are combined as asked:
averaged, taken from the first input, or refused (the default). The output is a PEFT folder that plain
`PeftModel.from_pretrained(base, out)` loads, with a model card (`README.md`).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fusekit.artifacts.atomic import (
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    save_tensors,
)
from fusekit.artifacts.checksums import sha256
from fusekit.artifacts.layout import PEFT_CONFIG, PEFT_WEIGHTS
from fusekit.artifacts.output import claim_output
from fusekit.artifacts.reading import read_json
from fusekit.artifacts.staging import staged_dir
from fusekit.data.loading import looks_like_path
from fusekit.errors import FusekitError
from fusekit.merging.methods import MergeMethod
from fusekit.progress import console, tracked

PREFIX = "base_model.model."
SHARED = ("refuse", "average", "first")  # what to do with modules_to_save the inputs share
UNSUPPORTED = {"use_dora": "DoRA (its ΔW is not s·B·A)", "lora_bias": "LoRA biases",
               "use_qalora": "QA-LoRA", "use_bdlora": "BD-LoRA"}


def is_peft_folder(folder: Path) -> bool:
    """A PEFT adapter folder that fusekit did not write (fusekit runs hold config.yaml beside it)."""
    return (folder / PEFT_CONFIG).is_file() and not (folder / "config.yaml").is_file()


@dataclass
class PeftLora:
    """One PEFT LoRA adapter: its config, its tensors, and each adapted layer's (A, B, s)."""

    source: str
    folder: Path
    config: dict
    tensors: dict[str, torch.Tensor]

    @property
    def layers(self) -> list[str]:
        return sorted(key[: -len(".lora_A.weight")] for key in self.tensors if key.endswith(".lora_A.weight"))

    @property
    def shared(self) -> dict[str, torch.Tensor]:
        """modules_to_save tensors (heads, embeddings)."""
        return {k: v for k, v in self.tensors.items() if ".lora_" not in k}

    def factors(self, layer: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        a, b = self.tensors[f"{layer}.lora_A.weight"].float(), self.tensors[f"{layer}.lora_B.weight"].float()
        rank = a.shape[0]
        alpha, field = self.config.get("lora_alpha", rank), "lora_alpha"
        patterns = self.config.get("alpha_pattern") or {}
        name = layer.removeprefix(PREFIX)
        for pattern, value in patterns.items():
            if _matches(pattern, name):
                alpha, field = value, f"alpha_pattern[{pattern!r}]"
                break
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise FusekitError(f"{self.source}: adapter_config.json {field} is {str(alpha)[:40]!r} (expected a finite "
                               "number > 0)")
        scale = alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank
        if not math.isfinite(float(torch.tensor(scale, dtype=torch.float32))):
            raise FusekitError(f"{self.source}: adapter_config.json {field} {alpha!r} gives a scale beyond float32's "
                               "range (expected a LoRA alpha of a trained adapter, such as 16)")
        return a, b, scale


def _matches(pattern: str, name: str) -> bool:
    """peft's rule for rank_pattern / alpha_pattern keys: the pattern matches a dotted suffix of the module name."""
    try:
        return re.match(rf"(.*\.)?({pattern})$", name) is not None
    except re.error:
        return False


def looks_like_hub_id(text: str) -> bool:
    """`org/name` whose first part is not a local folder (`runs/x` that does not exist is a typo, not an id)."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", text) is not None and \
        not Path(text.split("/")[0]).exists()


def load_peft_lora(source: str | Path) -> PeftLora:
    """A local PEFT folder, or a Hub id fetched with huggingface_hub (online users); checked for what fusekit can
    merge exactly."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        if not looks_like_hub_id(str(source)):
            raise FusekitError(f"{source} is not a folder (expected a run folder, a PEFT adapter folder or a Hub "
                               "id such as org/name)")
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(source), allow_patterns=[PEFT_CONFIG, "*.safetensors"]))
        except Exception as error:  # noqa: BLE001 — offline, unknown id, gated: all one line
            raise FusekitError(f"could not fetch adapter {source!r} from the Hub ({type(error).__name__}); "
                               "give a local PEFT folder when offline") from None
    config = read_json(folder / PEFT_CONFIG, "adapter config")
    if config.get("peft_type") != "LORA":
        raise FusekitError(f"{folder}: peft_type {config.get('peft_type')!r} is not LORA")
    for key, name in UNSUPPORTED.items():
        if config.get(key):
            raise FusekitError(f"{folder}: {name} cannot be merged exactly in ΔW space (refusing {key}=true)")
    if config.get("bias", "none") != "none":
        raise FusekitError(f"{folder}: bias={config['bias']!r} trains biases, whose change is not s·B·A")
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise FusekitError(f"{folder} has no {PEFT_WEIGHTS} (only safetensors adapters are read: no pickles)")
    tensors, _ = load_tensors(weights)
    adapter = PeftLora(str(source), folder, config, tensors)
    if not adapter.layers:
        raise FusekitError(f"{weights} holds no lora_A/lora_B weights")
    for layer in adapter.layers:
        a, b, _ = adapter.factors(layer)
        if f"{layer}.lora_B.weight" not in tensors or b.shape[1] != a.shape[0]:
            raise FusekitError(f"{weights}: {layer} has no matching lora_B of rank {a.shape[0]}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise FusekitError(f"{weights}: {layer} holds non-finite values")
    return adapter


def base_weights_digest(base: object, layers: list[str]) -> str | None:
    """sha256 of the base model's weights of `layers` (up to four), where the base is a local folder of
    safetensors files; None where it cannot be read (a hub id, another format): names are then all there is."""
    folder = Path(str(base)).expanduser() if base else None
    files = sorted(folder.glob("*.safetensors")) if folder and folder.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    digest = hashlib.sha256()
    handles = [safe_open(str(f), framework="pt") for f in files]
    for layer in sorted(layers)[:4]:
        name = layer.removeprefix(PREFIX) + ".weight"
        found = [(h, k) for h in handles for k in h.keys() if k == name or name.endswith("." + k) or
                 k.endswith("." + name)]
        if not found:
            return None
        handle, key = found[0]
        digest.update(handle.get_tensor(key).float().numpy().tobytes())
    return digest.hexdigest()


def check_peft_compatible(adapters: list[PeftLora]) -> None:
    first = adapters[0]
    for other in adapters[1:]:
        base, theirs = first.config.get("base_model_name_or_path"), other.config.get("base_model_name_or_path")
        if base and theirs and Path(str(base)).name != Path(str(theirs)).name:
            raise FusekitError(f"{other.source} was trained on {theirs!r}, {first.source} on {base!r} "
                               "(expected one base model)")
        shared = sorted(set(first.layers) & set(other.layers))
        digests = {base_weights_digest(b, shared) for b in (base, theirs)} if base != theirs and shared else set()
        if None not in digests and len(digests) > 1:
            raise FusekitError(f"{other.source} and {first.source} name bases of one name whose weights differ "
                               f"({theirs!r} and {base!r}, compared on the adapted layers): expected one base model")
        if base and theirs and first.config.get("revision") != other.config.get("revision"):
            raise FusekitError(f"{other.source} and {first.source} name different revisions of {base!r}")
        for layer in set(first.layers) & set(other.layers):
            a1, b1, _ = first.factors(layer)
            a2, b2, _ = other.factors(layer)
            if (b1.shape[0], a1.shape[1]) != (b2.shape[0], a2.shape[1]):
                raise FusekitError(f"{layer}: ΔW of shape {(b1.shape[0], a1.shape[1])} in {first.source} but "
                                   f"{(b2.shape[0], a2.shape[1])} in {other.source} (expected one base model)")
        if first.config.get("fan_in_fan_out") != other.config.get("fan_in_fan_out"):
            raise FusekitError(f"{other.source} and {first.source} disagree on fan_in_fan_out")


def merge_peft(sources: list[str], out: Path, method: MergeMethod, weights: list[float] | None, rank: int | None,
               shared: str, overwrite: bool) -> dict:
    """Merge PEFT LoRA adapters in ΔW space into the PEFT folder `out` (see the module docstring)."""
    if shared not in SHARED:
        raise FusekitError(f"--shared-modules {shared!r}: expected one of {', '.join(SHARED)}")
    local = [Path(s) for s in sources if Path(s).exists()]
    with claim_output(out, overwrite, local):
        adapters = [load_peft_lora(source) for source in sources]
        check_peft_compatible(adapters)
        weights = weights or [1.0] * len(adapters)
        if len(weights) != len(adapters):
            raise FusekitError(f"--weights has {len(weights)} values for {len(adapters)} adapters")
        shared_tensors = _shared_modules(adapters, shared)  # refused before any work
        tensors, ranks, residual, total = {}, {}, 0.0, 0.0
        layers = sorted(set().union(*(a.layers for a in adapters)))
        for layer in tracked(layers, f"merge {method.name} ΔW", len(layers)):
            parts = [a.factors(layer) if layer in a.layers else None for a in adapters]
            a_out, b_out, lost, kept = _merge_layer(parts, method, weights, rank, layer)
            tensors[f"{layer}.lora_A.weight"], tensors[f"{layer}.lora_B.weight"] = a_out, b_out
            ranks[layer.removeprefix(PREFIX)] = a_out.shape[0]
            residual, total = residual + lost, total + kept
        tensors |= shared_tensors
        error = (residual / total) ** 0.5 if total else 0.0
        summary = {"method": method.name, "params": method.params(), "weights": weights, "space": "delta-w",
                   "rank": max(ranks.values()), "truncation_error": error,
                   "inputs": [{"adapter": a.source, "sha256": sha256(a.folder / PEFT_WEIGHTS)} for a in adapters],
                   "base_model_name_or_path": adapters[0].config.get("base_model_name_or_path")}
        with staged_dir(out, overwrite, "peft-merge") as stage:
            save_tensors(stage / PEFT_WEIGHTS, tensors, {"format": "pt"})
            atomic_write_json(stage / PEFT_CONFIG, _output_config([a.config for a in adapters], ranks))
            atomic_write_text(stage / "README.md", model_card(summary))
    note = f", SVD truncation error {error:.4f}" if error else ""
    console.print(f"wrote {out} · {method.name} {method.params()} · ΔW · rank {summary['rank']}{note}")
    return {"out": str(out), **summary}


def _merge_layer(parts: list, method: MergeMethod, weights: list[float], rank: int | None,
                 layer: str) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """One layer's merged (A, B) at scale 1, and (truncated, total) squared singular values."""
    present = [p for p in parts if p is not None]  # an adapter that skips the layer contributes ΔW = 0
    if method.linear and rank is None:
        kept = [(p, c) for p, c in zip(parts, method.coefficients(weights)) if p is not None]
        a_out = torch.cat([a for (a, _, _), _ in kept], dim=0)
        b_out = torch.cat([c * s * b for (_, b, s), c in kept], dim=1)
        return a_out, b_out, 0.0, 0.0
    a0, b0, _ = present[0]
    products = [p[2] * (p[1] @ p[0]) if p is not None else torch.zeros(b0.shape[0], a0.shape[1]) for p in parts]
    merged = method.merge(products, weights, layer)
    keep = rank or sum(a.shape[0] for a, _, _ in present)
    u, s, vh = torch.linalg.svd(merged, full_matrices=False)
    root = s[:keep].sqrt()
    return root[:, None] * vh[:keep], u[:, :keep] * root[None, :], float((s[keep:] ** 2).sum()), float((s ** 2).sum())


def _shared_modules(adapters: list[PeftLora], how: str) -> dict[str, torch.Tensor]:
    keys = sorted(set().union(*(a.shared for a in adapters)))
    if not keys:
        return {}
    if how == "refuse":
        raise FusekitError(f"the adapters hold modules_to_save ({keys[0]}, …): pass --shared-modules average or "
                           "first to say how they combine")
    if how == "first":
        dropped = next((k for a in adapters[1:] for k in a.shared if k not in adapters[0].shared), None)
        if dropped:
            raise FusekitError(f"--shared-modules first keeps only the first adapter's modules_to_save, and it has no "
                               f"{dropped}, which a later one trained: put that adapter first, or use average")
        return dict(adapters[0].shared)
    missing = [k for k in keys if any(k not in a.shared for a in adapters)]
    if missing:
        raise FusekitError(f"{missing[0]} is not in every adapter: --shared-modules average needs it in all")
    return {k: sum(a.shared[k].float() for a in adapters) / len(adapters) for k in keys}


LAYER_FILTERS = ("layers_to_transform", "layers_pattern", "exclude_modules")


def _output_config(configs: list[dict], ranks: dict[str, int]) -> dict:
    """The first input's config with scale 1 everywhere (α = r per layer), per-layer ranks, and targets that make
    plain peft build every merged layer: the union of the inputs' target lists or, where an input names its
    targets otherwise (a regex, `all-linear`, a layer filter), the merged layers themselves by full name."""
    default = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {name: r for name, r in ranks.items() if r != default}
    targets = [c.get("target_modules") for c in configs]
    named = all(isinstance(t, list) and all(isinstance(n, str) for n in t) for t in targets)
    if named and not any(c.get(f) for c in configs for f in LAYER_FILTERS):
        union = sorted(set().union(*targets))
    else:
        union = sorted(ranks)
    return {**configs[0], "target_modules": union, **{f: None for f in LAYER_FILTERS if f in configs[0]},
            "r": default, "lora_alpha": default, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
            "use_rslora": False, "inference_mode": True}


def model_card(summary: dict) -> str:
    """The merged adapter's README.md: what went in (with hashes), how it was merged, what it lost."""
    rows = "\n".join(f"| {item['adapter']} | `{item['sha256'][:16]}…` | {w:g} |"
                     for item, w in zip(summary["inputs"], summary["weights"]))
    params = ", ".join(f"{k}={v}" for k, v in summary["params"].items() if k != "seed") or "–"
    base = summary["base_model_name_or_path"]
    hub_base = f"base_model: {base}\n" if base and not looks_like_path(base) else ""  # the Hub takes ids, not paths
    local = f"\nBase model: the local folder `{Path(base).name}`.\n" if base and not hub_base else ""
    return f"""---
library_name: peft
{hub_base}tags: [lora, merge, fusekit]
---

# Merged LoRA adapter

Merged by fusekit with **{summary['method']}** ({params}) in ΔW space: each input's
change to the weights, ΔW = s·B·A, combined exactly{' and written back by truncated SVD' if summary['truncation_error']
else ''}. Rank {summary['rank']}; relative truncation error {summary['truncation_error']:.4g}.
{local}
| input adapter | sha256 of adapter_model.safetensors | weight |
|---|---|---|
{rows}

Load it with plain peft:

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "<this folder>")
```
"""

