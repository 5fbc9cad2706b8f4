"""LoRA adapters on a base model through peft: build them from a seed, name their weights, save a PEFT folder.

Weights are named as in `peft.get_peft_model_state_dict` (e.g. `...query.lora_A.weight`), the names a plain
PEFT folder uses, so task vectors, heads and PEFT folders all speak the same keys.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.func import functional_call

from fusekit.data.text import NOT_MODEL_INPUTS, answer_scores
from fusekit.errors import FusekitError
from fusekit.models.base import BaseModel, portable_name

ADAPTER_KINDS = ("lora", "l-lora")
LINEARIZE_SCOPES = ("module", "network")
LORA_INITS = ("default", "nonzero")


@dataclass(frozen=True)
class AdapterSpec:
    """Everything that shapes φ and φ0: two task vectors can be merged only if their specs agree."""

    kind: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: peft's default for the architecture
    init_seed: int = 0  # seed of φ0, shared by every task so that their vectors live in one space
    lora_init: str = "default"  # default: B0 = 0 (peft); nonzero: random B0, W0 compensated by −s·B0·A0
    linearize: str | None = None  # L-LoRA only: module or network

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise FusekitError(f"unknown adapter {self.kind!r}: expected one of {', '.join(ADAPTER_KINDS)}")
        if self.lora_init not in LORA_INITS:
            raise FusekitError(f"unknown lora_init {self.lora_init!r}: expected one of {', '.join(LORA_INITS)}")
        scopes = LINEARIZE_SCOPES if self.kind == "l-lora" else (None,)
        if self.linearize not in scopes:
            raise FusekitError(f"linearize {self.linearize!r} does not fit adapter {self.kind} (expected one of "
                               f"{', '.join(map(str, scopes))})")
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
    """A peft LoRA model with one task head, or a generative model asked in text: the plain (nonlinear) forward
    used by `--adapter lora`.

    `model(batch)` gives one row of scores per example: the head's logits, or with the text objective the log-
    probabilities (over the whole vocabulary) of each label's answer token, STS-B's expected value first
    (fusekit.data.text.answer_scores). It keeps φ0 as buffers: the task vector is τ = φ − φ0, linearized forwards
    expand around φ0, and the PEFT export folds the nonzero-init compensation back in.
    """

    def __init__(self, peft_model: PeftModel, spec: AdapterSpec, head_modules: list[str], text: bool = False):
        super().__init__()
        self.peft_model = peft_model
        self.spec = spec
        self.head_modules = head_modules
        self.text = text
        forward = inspect.signature(peft_model.get_base_model().forward).parameters
        self.last_logits_only = text and "logits_to_keep" in forward  # a causal LM computes no other position
        if self.last_logits_only:  # the kept position is a strided view: as it is, the vocabulary projection runs as
            # one matrix-vector product per example (a batched matmul that reads the whole embedding matrix each
            # time, 18% of a SmolLM2 scoring batch); made contiguous, it is one matrix product for the batch
            peft_model.get_base_model().get_output_embeddings().register_forward_pre_hook(_contiguous_input)
        params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        self.param_names = {state_name(n): n for n in params if ".lora_" in n}  # PEFT key → parameter name
        self.adapter_params = {k: params[n] for k, n in self.param_names.items()}
        self.head_params = {state_name(n): p for n, p in params.items() if ".lora_" not in n}
        self.head_names = {state_name(n): f"peft_model.{n}" for n in params if ".lora_" not in n}
        if not self.adapter_params:
            raise FusekitError(f"LoRA found no layer to adapt (target_modules={spec.target_modules})")
        self.init_keys = list(self.adapter_params)
        for i, key in enumerate(self.init_keys):
            self.register_buffer(f"phi0_{i}", self.adapter_params[key].detach().clone())

    def init_tensor(self, key: str) -> torch.Tensor:
        return getattr(self, f"phi0_{self.init_keys.index(key)}")

    def init_state(self) -> dict[str, torch.Tensor]:
        """φ0, on CPU."""
        return {k: self.init_tensor(k).cpu().clone() for k in self.init_keys}

    def frozen_keys(self) -> tuple[str, ...]:
        """Adapter weights that cannot move in training (left out of the optimizer and of τ)."""
        return ()

    def trainable_adapter_parameters(self) -> list[nn.Parameter]:
        frozen = set(self.frozen_keys())
        return [p for k, p in self.adapter_params.items() if k not in frozen]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.trainable_adapter_parameters() + list(self.head_params.values())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.readout(self.network(model_inputs(batch)), batch)

    def network(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the network computes: the head's logits, or the LM's next-token logits at the answer position
        (the last: batches are padded on the left)."""
        return self.network_at(inputs, None)

    def network_at(self, inputs: dict[str, torch.Tensor], params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """`network` with `params` (peft parameter names → tensors) in place of the model's own (torch.func)."""
        if self.last_logits_only:
            inputs = {**inputs, "logits_to_keep": 1}
        output = (self.peft_model(**inputs) if params is None else
                  functional_call(self.peft_model, params, (), inputs)).logits
        return output[:, -1] if self.text else output

    def readout(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network's output as scores per label (text: answer-token log-probabilities)."""
        return answer_scores(output, batch) if self.text else output

    def forward_with_head(self, batch: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> torch.Tensor:
        """The forward with another task's head weights in place of the model's own (joint training)."""
        return functional_call(self, {self.head_names[k]: v for k, v in head.items()}, (batch,))

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """φ: the current adapter weights, detached, on CPU."""
        return {k: p.detach().cpu().clone() for k, p in self.adapter_params.items()}

    def head_state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().cpu().clone() for k, p in self.head_params.items()}

    @torch.no_grad()
    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        _copy_into(self.adapter_params, state, "adapter")

    @torch.no_grad()
    def load_init_state(self, state: dict[str, torch.Tensor]) -> None:
        """Move φ0 (the expansion point of a linearized forward); the base weights are not touched."""
        _copy_into({k: self.init_tensor(k) for k in self.init_keys}, state, "φ0")

    @torch.no_grad()
    def load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        _copy_into(self.head_params, state, "head")

    def target_modules(self) -> list[str]:
        return sorted(self.peft_model.peft_config["default"].target_modules)

    def peft_export(self) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
        """peft's config and the tensors of a plain-peft folder of the nonlinear model at φ (written by
        fusekit.artifacts.run_folder.write_peft_folder).

        With a nonzero init the base weight was shifted by −s·B0·A0; plain peft loads the pretrained base, so
        the shift is folded into the adapter as rank r more: B' = [B, −B0], A' = [A; A0], alpha doubled so the
        scale s = alpha / r is unchanged.
        """
        config = copy.deepcopy(self.peft_model.peft_config["default"])
        config.inference_mode = True
        weights = self.adapter_state()
        if self.spec.lora_init == "nonzero":
            init = self.init_state()
            for key in weights:
                if ".lora_A." in key:
                    weights[key] = torch.cat([weights[key], init[key]], dim=0)
                else:
                    weights[key] = torch.cat([weights[key], -init[key]], dim=1)
            config.r, config.lora_alpha = 2 * config.r, 2 * config.lora_alpha
        return config, {**weights, **self.head_state()}


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def _copy_into(params: dict[str, nn.Parameter], state: dict[str, torch.Tensor], what: str) -> None:
    if set(state) != set(params):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise FusekitError(f"{what} weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, param in params.items():
        if state[key].shape != param.shape:
            raise FusekitError(
                f"{what} weight {key} has shape {tuple(state[key].shape)}, expected {tuple(param.shape)}"
            )
        param.copy_(state[key].to(param.device, param.dtype))


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without what only the loss and the readout read (labels, the verbalizer)."""
    return {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """peft's LoRA layers by module name (found by peft's own type: since peft 0.7 they are not nn.Linear)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


@torch.no_grad()
def draw_nonzero_b(model: nn.Module) -> None:
    """B0 drawn like A0 (uniform ±1/√fan_in) instead of peft's zeros.

    With B0 = 0 the tangent of a LoRA layer, s·(dB·A0 + B0·dA)·x, does not depend on dA: a linearized adapter
    would never move A. A nonzero B0 lets both factors train.
    """
    for layer in lora_layers(model).values():
        for adapter, lora_b in layer.lora_B.items():
            bound = 1.0 / layer.lora_A[adapter].weight.shape[1] ** 0.5
            lora_b.weight.uniform_(-bound, bound)


@torch.no_grad()
def compensate_base(model: nn.Module) -> None:
    """W0 ← W0 − s·B0·A0 in every LoRA layer, so that f(x; φ0) is the pretrained function whatever B0 is."""
    for layer in lora_layers(model).values():
        for adapter in layer.lora_B:
            layer.get_base_layer().weight -= layer.get_delta_weight(adapter)


def add_lora(base: BaseModel, spec: AdapterSpec, model_class: type[AdaptedModel] = AdaptedModel,
             init: dict[str, torch.Tensor] | None = None) -> AdaptedModel:
    """Wrap `base` with LoRA layers at φ0, as a `model_class`.

    φ0 is `init` when given (a stored task vector's), else drawn from `spec.init_seed`.
    """
    if base.head.text:
        task_type = TaskType.SEQ_2_SEQ_LM if base.model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    else:
        task_type = TaskType.SEQ_CLS
    config = LoraConfig(
        task_type=task_type, r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules) if spec.target_modules else None,
        modules_to_save=list(base.head_modules) or None,
    )
    torch.manual_seed(spec.init_seed)
    try:
        peft_model = get_peft_model(base.model, config)
    except ValueError as error:
        raise FusekitError(f"cannot add LoRA to {base.name}: {str(error).splitlines()[0]}") from None
    # what the PEFT folder names as its base: a hub id or a name that means something on another machine
    peft_model.peft_config["default"].base_model_name_or_path = portable_name(base.name)
    if init is not None:
        lora = {state_name(n): p for n, p in peft_model.named_parameters() if ".lora_" in n}
        with torch.no_grad():
            _copy_into(lora, init, "φ0")
    elif spec.lora_init == "nonzero":
        draw_nonzero_b(peft_model)
    if spec.lora_init == "nonzero":
        compensate_base(peft_model)
    return model_class(peft_model, spec, base.head_modules, base.head.text)
