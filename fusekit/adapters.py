"""LoRA adapters on a base model through peft: build them from a seed, name their weights, save a PEFT folder.

Weights are named as in `peft.get_peft_model_state_dict` (e.g. `...query.lora_A.weight`), the names a plain
PEFT folder uses, so task vectors, heads and PEFT folders all speak the same keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from fusekit.errors import FusekitError
from fusekit.modeling import BaseModel

ADAPTER_KINDS = ("lora", "l-lora")


@dataclass(frozen=True)
class AdapterSpec:
    """Everything that shapes φ and φ0: two task vectors can be merged only if their specs agree."""

    kind: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: peft's default for the architecture
    init_seed: int = 0  # seed of φ0, shared by every task so that their vectors live in one space

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise FusekitError(f"unknown adapter {self.kind!r}: expected one of {', '.join(ADAPTER_KINDS)}")
        if self.rank < 1:
            raise FusekitError(f"rank {self.rank} is not positive (expected an integer ≥ 1)")

    def meta(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_meta(cls, meta: dict, source: str) -> AdapterSpec:
        try:
            values = {name: meta[name] for name in cls.__dataclass_fields__}
        except KeyError as missing:
            raise FusekitError(f"{source}: metadata lacks {missing} (expected a fusekit task vector)") from None
        targets = values["target_modules"]
        return cls(**{**values, "target_modules": tuple(targets) if targets else None})


def state_name(param_name: str, adapter: str = "default") -> str:
    """peft's parameter name → the PEFT-folder key (drops the adapter name and the modules_to_save wrapper)."""
    return param_name.replace(f".modules_to_save.{adapter}.", ".").replace(f".{adapter}.", ".")


class AdaptedModel(nn.Module):
    """A peft LoRA model with one task head: the plain (nonlinear) forward used by `--adapter lora`."""

    def __init__(self, peft_model: PeftModel, spec: AdapterSpec, head_modules: list[str]):
        super().__init__()
        self.peft_model = peft_model
        self.spec = spec
        trainable = {state_name(n): p for n, p in peft_model.named_parameters() if p.requires_grad}
        self.adapter_params = {k: p for k, p in trainable.items() if ".lora_" in k}
        self.head_params = {k: p for k, p in trainable.items() if ".lora_" not in k}
        if not self.adapter_params:
            raise FusekitError(f"LoRA found no layer to adapt (target_modules={spec.target_modules})")
        self.head_modules = head_modules

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.peft_model(**{k: v for k, v in batch.items() if k != "labels"}).logits

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """φ: the current adapter weights, detached, on CPU."""
        return {k: p.detach().cpu().clone() for k, p in self.adapter_params.items()}

    def head_state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().cpu().clone() for k, p in self.head_params.items()}

    @torch.no_grad()
    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        _copy_into(self.adapter_params, state, "adapter")

    @torch.no_grad()
    def load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        _copy_into(self.head_params, state, "head")

    def target_modules(self) -> list[str]:
        return sorted(self.peft_model.peft_config["default"].target_modules)

    def save_peft_folder(self, folder: Path) -> None:
        """adapter_config.json + adapter_model.safetensors that `PeftModel.from_pretrained` loads as is."""
        self.peft_model.save_pretrained(str(folder))
        (folder / "README.md").unlink(missing_ok=True)  # peft's empty model card


def _copy_into(params: dict[str, nn.Parameter], state: dict[str, torch.Tensor], what: str) -> None:
    if set(state) != set(params):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise FusekitError(f"{what} weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, param in params.items():
        if state[key].shape != param.shape:
            raise FusekitError(f"{what} weight {key} has shape {tuple(state[key].shape)}, expected {tuple(param.shape)}")
        param.copy_(state[key].to(param.device, param.dtype))


def add_lora(base: BaseModel, spec: AdapterSpec) -> AdaptedModel:
    """Wrap `base` with LoRA layers whose φ0 is drawn from `spec.init_seed`."""
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules) if spec.target_modules else None,
        modules_to_save=list(base.head_modules),
    )
    torch.manual_seed(spec.init_seed)
    try:
        peft_model = get_peft_model(base.model, config)
    except ValueError as error:
        raise FusekitError(f"cannot add LoRA to {base.name}: {str(error).splitlines()[0]}") from None
    return AdaptedModel(peft_model, spec, base.head_modules)
