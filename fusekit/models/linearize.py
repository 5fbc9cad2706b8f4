"""L-LoRA: LoRA finetuned in the tangent space of the pretrained model (Tang et al., ICLR 2024).

Only the adapter weights φ are linearized; the frozen backbone θ0 and the task head are not. Two scopes:

* `network` — the paper's equation: f_lin(x; φ) = f(x; θ0, φ0) + J_φ f(x; θ0, φ0) (φ − φ0), one
  `torch.func.jvp` over `functional_call` of the whole model. The head's parameters enter f as ordinary
  (non-dual) weights, so the head stays nonlinear and trainable.
* `module` — what the authors' code does: each LoRA layer m becomes m(x; p0) + J_p m(x; p0)(p − p0) in its
  own parameters p = (A, B); the rest of the network stays nonlinear. Unlike that code, no layer is copied:
  p0 lives in the model's φ0 buffers and the single frozen base weight is shared by primal and tangent.

The Jacobian is never materialised: jvp pushes the tangent φ − φ0 forward with the primal in one pass. To train,
module scope (and network scope with `network_backward: jvp`) lets autograd differentiate through the tangent;
network scope by default (`lean`) takes the same gradient from the plain network's backward at φ0, since the
expansion is linear in φ (`_expand_lean`).
"""

from __future__ import annotations

import contextlib

import torch
from peft import PeftModel
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from fusekit.models.adapters import AdaptedModel, AdapterSpec, lora_layers

ATTENTION_DROPOUTS = ("attention_dropout", "attention_probs_dropout_prob")  # config names (Llama, BERT families)


class LinearizedModel(AdaptedModel):
    """The `l-lora` adapter kind: the forward is the first-order Taylor expansion around φ0."""

    network_backward = "lean"  # how network scope is differentiated (TrainConfig.network_backward; same gradient)

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

        primals, tangents = self._primals(self.init_keys), self._tangents(self.init_keys)
        if torch.is_grad_enabled() and self.network_backward == "lean":
            return _expand_lean(logits, primals, tangents, fused_value=not self._attention_dropout())
        with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no forward-mode derivative
            return _expand(logits, primals, tangents)

    def _attention_dropout(self) -> bool:
        """Whether attention may drop weights in this forward (an architecture that does not say: assumed so)."""
        config = self.peft_model.get_base_model().config
        rates = [getattr(config, name) for name in ATTENTION_DROPOUTS if hasattr(config, name)]
        return self.training and (not rates or any(rates))

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


def _expand_lean(function, primals: tuple[torch.Tensor, ...], tangents: tuple[torch.Tensor, ...],
                 fused_value: bool) -> torch.Tensor:
    """`_expand` with the same value and gradients, at about the memory of the plain network's backward (and one
    more forward).

    f(p0) + J·t is linear in t, so its gradient in t is J itself: the plain network's backward at p0, reached by
    evaluating it at p0 + (t − stop_grad(t)), whose value is p0 and whose gradient flows to t unchanged. J·t comes
    from a jvp of detached tangents, run first so that its activations are gone before the plain pass saves its
    own; autograd records in it only what involves other trainable weights (a task head on top), which adds their
    exact mixed term ∂(J·t)/∂head. Differentiating through one jvp of the whole network instead keeps a tangent
    beside every saved activation (1.5–2.4× LoRA's peak memory). Both passes draw the same dropout masks: the
    random state is replayed, and the plain pass uses a fused attention kernel (smaller saved activations) only
    when attention drops nothing (`fused_value`), since it draws its masks differently from the math kernel."""
    state = _random_state()
    with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no forward-mode derivative
        _, directional = jvp(function, primals, tuple(t.detach() for t in tangents))
    _set_random_state(state)
    with contextlib.nullcontext() if fused_value else sdpa_kernel(SDPBackend.MATH):
        value = function(*(p + (t - t.detach()) for p, t in zip(primals, tangents)))
    return value + directional


def _random_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []


def _set_random_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])
