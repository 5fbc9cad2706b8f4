"""Task vectors τ = φ − φ0 over adapter weights, with the metadata that says where they may be combined.

A vector carries φ0 too: merging and evaluation need the point the vector starts from, and storing it makes
φ0 reproducible without re-drawing it. Arithmetic keeps φ0 and acts on τ only, so
`init_vector + 0.3 * (tv_a + tv_b)` reads as task arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusekit.artifacts.atomic import first_non_finite, load_tensors, save_tensors
from fusekit.errors import FusekitError
from fusekit.models.base import fingerprint

FORMAT = "fusekit.artifacts.task_vector/1"
# Metadata that must agree for two vectors to share a space (τs of different bases or ranks do not add).
COMPATIBILITY_KEYS = ("base_fingerprint", "kind", "rank", "alpha", "target_modules", "init_fingerprint",
                      "linearize", "lora_init")


@dataclass
class VectorHeader:
    """What compatibility needs of a vector, read without loading its tensors."""

    name: str
    meta: dict
    shapes: dict[str, tuple[int, ...]]  # of the deltas

    @classmethod
    def read(cls, path: Path) -> VectorHeader:
        meta, shapes = read_header(path)
        return cls("+".join(meta.get("tasks", [])) or str(path), meta, shapes)


def check_compatible(a: VectorHeader, b: VectorHeader) -> None:
    for key in COMPATIBILITY_KEYS:
        mine, theirs = a.meta.get(key), b.meta.get(key)
        if mine != theirs:
            raise FusekitError(
                f"task vectors {a.name} and {b.name} differ in {key}: {mine!r} vs {theirs!r} "
                "(expected vectors of one base model and one adapter setup)"
            )
    if set(a.shapes) != set(b.shapes):
        raise FusekitError(f"task vectors {a.name} and {b.name} adapt different weights")
    for key, shape in a.shapes.items():
        if shape != b.shapes[key]:
            raise FusekitError(f"task vectors {a.name} and {b.name}: {key} has shape {shape} vs {b.shapes[key]}")


def read_header(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """Metadata and delta shapes of a task-vector file, without reading its tensors."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FusekitError(f"{path} not found")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {k[len("delta/"):]: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()
                      if k.startswith("delta/")}
    except (SafetensorError, OSError, ValueError) as error:
        raise FusekitError(f"{path} is not a readable safetensors file ({error})") from None
    return _parse_meta(metadata, path), shapes


def _parse_meta(metadata: dict[str, str], path: Path) -> dict:
    if metadata.get("format") != FORMAT:
        raise FusekitError(f"{path} is not a fusekit task vector (expected metadata format={FORMAT})")
    try:
        meta = json.loads(metadata["fusekit"])
    except (KeyError, json.JSONDecodeError, RecursionError):
        raise FusekitError(f"{path}: task-vector metadata is missing or not JSON") from None
    if not isinstance(meta, dict):
        raise FusekitError(f"{path}: task-vector metadata is not a mapping")
    for key, kinds in (("rank", int), ("alpha", (int, float))):
        value = meta.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) or value <= 0
                                  or value != value or value == float("inf")):
            raise FusekitError(f"{path}: task-vector metadata {key}={str(value)[:40]!r} is not a positive number")
    return meta


@dataclass
class TaskVector:
    delta: dict[str, torch.Tensor]  # τ; keys absent from delta are frozen (τ = 0)
    init: dict[str, torch.Tensor]  # φ0
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_weights(cls, finetuned: dict[str, torch.Tensor], init: dict[str, torch.Tensor], meta: dict,
                     frozen: tuple[str, ...] = ()) -> TaskVector:
        """τ = finetuned − init, leaving out keys that were frozen during training (they carry no information)."""
        delta = {k: (finetuned[k].float() - init[k].float()) for k in init if k not in frozen}
        meta = {**meta, "init_fingerprint": fingerprint(init)}
        return cls(delta, {k: v.float() for k, v in init.items()}, meta)

    def weights(self) -> dict[str, torch.Tensor]:
        """φ = φ0 + τ."""
        return {k: v + self.delta[k] if k in self.delta else v.clone() for k, v in self.init.items()}

    # ---- arithmetic -------------------------------------------------------------------------------
    def check_compatible(self, other: TaskVector) -> None:
        check_compatible(self.header(), other.header())

    def header(self) -> VectorHeader:
        return VectorHeader(self.name, self.meta, {k: tuple(v.shape) for k, v in self.delta.items()})

    def _with(self, delta: dict[str, torch.Tensor], **meta) -> TaskVector:
        return TaskVector(delta, self.init, {**self.meta, **meta})

    def __add__(self, other: TaskVector) -> TaskVector:
        self.check_compatible(other)
        return self._with({k: v + other.delta[k] for k, v in self.delta.items()},
                          tasks=self.tasks + [t for t in other.tasks if t not in self.tasks])

    def __sub__(self, other: TaskVector) -> TaskVector:
        return self + (-other)

    def __neg__(self) -> TaskVector:
        return self * -1.0

    def __mul__(self, scale: float) -> TaskVector:
        return self._with({k: v * float(scale) for k, v in self.delta.items()})

    __rmul__ = __mul__

    @property
    def tasks(self) -> list[str]:
        return list(self.meta.get("tasks", []))

    @property
    def name(self) -> str:
        return "+".join(self.tasks) or "<unnamed>"

    def norm(self) -> float:
        return float(torch.sqrt(sum((v.double() ** 2).sum() for v in self.delta.values())))

    # ---- files --------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        tensors = {f"delta/{k}": v for k, v in self.delta.items()} | {f"init/{k}": v for k, v in self.init.items()}
        save_tensors(path, tensors, {"format": FORMAT, "fusekit": json.dumps(self.meta, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path) -> TaskVector:
        path = Path(path)
        tensors, metadata = load_tensors(path)
        meta = _parse_meta(metadata, path)
        delta = {k[len("delta/"):]: v for k, v in tensors.items() if k.startswith("delta/")}
        init = {k[len("init/"):]: v for k, v in tensors.items() if k.startswith("init/")}
        if not init or not set(delta) <= set(init):
            raise FusekitError(f"{path}: task vector has deltas without their φ0 (expected init/ for every delta/)")
        for key, value in delta.items():
            if value.shape != init[key].shape:
                raise FusekitError(f"{path}: {key} has a delta of shape {tuple(value.shape)} but φ0 of shape "
                                   f"{tuple(init[key].shape)}")
        bad = next((k for k, v in tensors.items() if not v.is_floating_point()), None) or first_non_finite(tensors)
        if bad is not None:
            raise FusekitError(f"{path}: {bad} holds non-finite or non-float values (a corrupt or forged vector)")
        return cls(delta, init, meta)
