"""L-LoRA: LoRA finetuned in the tangent space of the pretrained model (Tang et al., ICLR 2024).

Only the adapter weights φ are linearized; the frozen backbone θ0 and the task head are not. Two scopes:

* `network` — the paper's equation: f_lin(x; φ) = f(x; θ0, φ0) + J_φ f(x; θ0, φ0) (φ − φ0), one
  `torch.func.jvp` over `functional_call` of the whole model. The head's parameters enter f as ordinary
  (non-dual) weights, so the head stays nonlinear and trainable.
* `module` — what the authors' code does: each LoRA layer m becomes m(x; p0) + J_p m(x; p0)(p − p0) in its
  own parameters p = (A, B); the rest of the network stays nonlinear. Unlike that code, no layer is copied:
  p0 lives in the model's φ0 buffers and the single frozen base weight is shared by primal and tangent.

The Jacobian is never materialised: jvp pushes the tangent φ − φ0 forward with the primal in one pass, and
autograd differentiates through the tangent to reach φ.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from fusekit.models.adapters import AdaptedModel, AdapterSpec, lora_layers


class LinearizedModel(AdaptedModel):
    """The `l-lora` adapter kind: the forward is the first-order Taylor expansion around φ0."""

    def __init__(self, peft_model: PeftModel, spec: AdapterSpec, head_modules: list[str], text: bool = False):
        super().__init__(peft_model, spec, head_modules, text)
        self.linearized_layers: list[str] = []
        if spec.linearize == "module":
            for name, layer in lora_layers(peft_model).items():
                self._linearize_layer(name, layer)

    def frozen_keys(self) -> tuple[str, ...]:
        """With B0 = 0 the tangent s·(dB·A0 + B0·dA)·x ignores dA: lora_A gets exactly zero gradient."""
        if self.spec.lora_init != "default":
            return ()
        return tuple(k for k in self.adapter_params if ".lora_A." in k)

    def network(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The expansion of the network's output (logits; the readout of a text answer stays nonlinear)."""
        if self.spec.linearize == "module":
            return super().network(inputs)  # every LoRA layer is linearized in place
        names = [self.param_names[k] for k in self.init_keys]

        def logits(*phi: torch.Tensor) -> torch.Tensor:
            return self.network_at(inputs, dict(zip(names, phi)))

        with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no forward-mode derivative
            return _expand(logits, self._primals(self.init_keys), self._tangents(self.init_keys))

    def _primals(self, keys: list[str]) -> tuple[torch.Tensor, ...]:
        return tuple(self.init_tensor(k) for k in keys)

    def _tangents(self, keys: list[str]) -> tuple[torch.Tensor, ...]:
        return tuple(self.adapter_params[k] - self.init_tensor(k) for k in keys)

    def _linearize_layer(self, name: str, layer: nn.Module) -> None:
        """Replace `layer.forward` by its expansion in the layer's own LoRA weights."""
        keys = [k for k, n in self.param_names.items() if n.rsplit(".lora_", 1)[0] == name]
        local = [self.param_names[k][len(name) + 1:] for k in keys]
        plain_forward = layer.forward
        state = {"inside": False}

        def linearized_forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if state["inside"]:  # the call functional_call makes below: the layer's own forward at p0
                return plain_forward(x, *args, **kwargs)

            def layer_out(*p: torch.Tensor) -> torch.Tensor:
                return functional_call(layer, dict(zip(local, p)), (x, *args), kwargs)

            state["inside"] = True
            try:
                return _expand(layer_out, self._primals(keys), self._tangents(keys))
            finally:
                state["inside"] = False

        layer.forward = linearized_forward
        self.linearized_layers.append(name)


def _expand(function, primals: tuple[torch.Tensor, ...], tangents: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """function(p0) + J function(p0) · t, by forward-mode autodiff."""
    out, directional = jvp(function, primals, tangents)
    return out + directional
