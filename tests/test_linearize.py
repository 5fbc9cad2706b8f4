"""L-LoRA: the linearized forward against its definition, f(φ0) + J(φ − φ0), on a tiny model in float64."""

import json
from dataclasses import replace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fusekit.artifacts.run_folder import build_adapted_model, load_run, model_for_run
from fusekit.artifacts.task_vector import TaskVector
from fusekit.data.loading import EncodedSplit, load_split, make_loader
from fusekit.data.tasks import get_task
from fusekit.evaluation.loop import task_loss
from fusekit.models.adapters import AdapterSpec, lora_layers
from fusekit.models.base import load_base_model
from fusekit.training.train import train

SST2 = get_task("sst2")
SCOPES = ["module", "network"]


def make(tiny_model, kind="l-lora", scope="network", init="nonzero"):
    torch.manual_seed(0)  # same head for every model built here
    base = load_base_model(str(tiny_model), SST2)
    spec = AdapterSpec(kind=kind, rank=4, alpha=8.0, linearize=scope if kind == "l-lora" else None, lora_init=init)
    return build_adapted_model(base, spec).double().eval()


@pytest.fixture(scope="module")
def batch(tiny_model, glue_dir):
    from transformers import AutoTokenizer

    split = load_split(SST2, "validation", str(glue_dir))
    data = EncodedSplit(split, AutoTokenizer.from_pretrained(tiny_model), 32)
    return next(iter(make_loader(data, 6, shuffle=False)))


def direction(model, seed=1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=generator, dtype=p.dtype) for k, p in model.adapter_params.items()}


def at(model, batch, step: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """Logits at φ = φ0 + scale · step."""
    model.load_adapter_state({k: v + scale * step[k] for k, v in model.init_state().items()})
    with torch.no_grad():
        return model(batch)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("init", ["default", "nonzero"])
def test_at_phi0_equals_the_plain_model(tiny_model, batch, scope, init):
    linear, plain, pretrained = make(tiny_model, scope=scope, init=init), make(tiny_model, "lora", init=init), \
        make(tiny_model, "lora", init="default")
    zero = {k: torch.zeros_like(v) for k, v in direction(plain).items()}
    assert torch.allclose(at(linear, batch, zero, 0), at(plain, batch, zero, 0), atol=1e-10)
    # the nonzero init's compensation −s·B0·A0 keeps f(x; φ0) equal to the pretrained function
    assert torch.allclose(at(plain, batch, zero, 0), at(pretrained, batch, zero, 0), atol=1e-10)


@pytest.mark.parametrize("scope", SCOPES)
def test_linearization_really_happened(tiny_model, batch, scope):
    """A model whose layers were silently left nonlinear gives a zero gap here and fails."""
    linear, plain = make(tiny_model, scope=scope), make(tiny_model, "lora")
    step = direction(plain)
    gaps = [float((at(linear, batch, step, eps) - at(plain, batch, step, eps)).abs().max()) for eps in (0.2, 0.1)]
    assert gaps[0] > 1e-6
    assert 3.0 < gaps[0] / gaps[1] < 5.0  # the Taylor remainder is O(|δ|²)
    if scope == "module":
        assert linear.linearized_layers == list(lora_layers(linear.peft_model)) and len(linear.linearized_layers) == 4


def test_network_scope_is_exactly_affine(tiny_model, batch):
    model = make(tiny_model, scope="network")
    d1, d2 = direction(model, 1), direction(model, 2)
    f0 = at(model, batch, d1, 0.0)
    f1, f2 = at(model, batch, d1, 0.5) - f0, at(model, batch, d2, 0.5) - f0
    both = at(model, batch, {k: d1[k] + d2[k] for k in d1}, 0.5) - f0
    assert torch.allclose(at(model, batch, d1, 1.0) - f0, 2 * f1, atol=1e-10)
    assert torch.allclose(both, f1 + f2, atol=1e-10)


@pytest.mark.parametrize("scope", SCOPES)
def test_jvp_equals_finite_difference(tiny_model, batch, scope):
    linear, plain = make(tiny_model, scope=scope), make(tiny_model, "lora")
    v, eps = direction(plain), 1e-5
    derivative = (at(plain, batch, v, eps) - at(plain, batch, v, -eps)) / (2 * eps)
    tangent = (at(linear, batch, v, 1e-3) - at(linear, batch, v, 0.0)) / 1e-3
    if scope == "network":  # exactly affine: the difference quotient is the jvp itself
        assert torch.allclose(tangent, derivative, atol=1e-7)
    else:  # first-order exact, so equal up to O(step)
        assert torch.allclose(tangent, derivative, atol=1e-3 * float(derivative.abs().max()) + 1e-6)


def flat(tensors: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([tensors[k].reshape(-1) for k in keys])


@pytest.mark.parametrize("backward", ["lean", "jvp"])
def test_network_gradients_match_an_explicit_jacobian(tiny_model, batch, backward):
    """Reference: materialise J = ∂f/∂φ at φ0, then f_lin = f0 + J(φ − φ0) and ∂L/∂φ = Jᵀ ∂L/∂f_lin; both ways
    of differentiating network scope give it."""
    linear, plain = make(tiny_model, scope="network"), make(tiny_model, "lora")
    linear.network_backward = backward
    keys, phi0 = plain.init_keys, plain.init_state()
    shapes = {k: phi0[k].shape for k in keys}
    sizes = [phi0[k].numel() for k in keys]

    def logits_of(vector: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(keys, torch.split(vector, sizes)))
        names = {plain.param_names[k]: parts[k].reshape(shapes[k]) for k in keys}
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return torch.func.functional_call(plain.peft_model, names, (), inputs).logits

    x0 = flat(phi0, keys)
    jacobian = torch.autograd.functional.jacobian(logits_of, x0).reshape(-1, x0.numel())
    step = direction(plain)
    x = x0 + 0.3 * flat(step, keys)
    reference = (logits_of(x0).detach().reshape(-1) + jacobian @ (x - x0)).reshape(-1, 2)
    weights = torch.randn(reference.shape, dtype=reference.dtype, generator=torch.Generator().manual_seed(3))
    reference_grad = jacobian.T @ weights.reshape(-1)

    linear.load_adapter_state({k: phi0[k] + 0.3 * step[k] for k in keys})
    out = linear(batch)
    (out * weights).sum().backward()
    assert torch.allclose(out, reference, atol=1e-9)
    assert torch.allclose(flat({k: p.grad for k, p in linear.adapter_params.items()}, keys), reference_grad,
                          atol=1e-9)
    # the head stays nonlinear: its gradient is that of f(φ0, h) + J(h)·(φ − φ0), the second term through J's h
    tangent = flat(step, keys) * 0.3
    with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no forward-mode derivative
        _, directional = torch.func.jvp(logits_of, (x0,), (tangent,))
    expansion = logits_of(x0) + directional
    head = list(plain.head_params)
    reference_head = torch.autograd.grad((expansion.reshape(-1, 2) * weights).sum(),
                                         [plain.head_params[k] for k in head])
    assert all(torch.allclose(linear.head_params[k].grad, g, atol=1e-9) for k, g in zip(head, reference_head))
    assert float(reference_head[0].abs().max()) > 0


def test_network_scope_trains_on_the_dropout_masks_it_scores_with(tiny_model, batch):
    """The training path evaluates the network twice (value, then J·δ): both must draw the same dropout masks."""
    model = make(tiny_model, scope="network").train()
    model.load_adapter_state({k: v + 0.3 * d for (k, v), d in zip(model.init_state().items(),
                                                                   direction(model).values())})
    torch.manual_seed(5)
    trained = model(batch)
    torch.manual_seed(5)
    with torch.no_grad():
        scored = model(batch)  # one jvp: primal and tangent through the same masks
    torch.manual_seed(6)
    with torch.no_grad():
        other_masks = model(batch)
    assert torch.allclose(trained, scored, atol=1e-10) and not torch.allclose(scored, other_masks, atol=1e-6)


def test_module_gradients_match_the_layerwise_formula(tiny_model, batch):
    """Reference: each LoRA layer as W0·x + s·(B0·A0 + dB·A0 + B0·dA)·x, written out by hand."""
    linear, plain = make(tiny_model, scope="module"), make(tiny_model, "lora")
    step = direction(plain)
    for model in (linear, plain):
        model.load_adapter_state({k: v + 0.3 * step[k] for k, v in model.init_state().items()})
    for name, layer in lora_layers(plain.peft_model).items():
        a0 = plain.init_tensor(next(k for k, n in plain.param_names.items() if n == f"{name}.lora_A.default.weight"))
        b0 = plain.init_tensor(next(k for k, n in plain.param_names.items() if n == f"{name}.lora_B.default.weight"))

        def by_hand(x, *args, layer=layer, a0=a0, b0=b0, **kwargs):
            a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
            return layer.base_layer(x) + s * x @ (b0 @ a0 + (b - b0) @ a0 + b0 @ (a - a0)).T

        layer.forward = by_hand
    weights = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    outs = []
    for model in (linear, plain):
        out = model(batch)
        (out * weights).sum().backward()
        outs.append(out)
    assert torch.allclose(outs[0], outs[1], atol=1e-10)
    for key in linear.adapter_params:
        assert torch.allclose(linear.adapter_params[key].grad, plain.adapter_params[key].grad, atol=1e-10)


@pytest.mark.parametrize("scope", SCOPES)
def test_default_init_freezes_lora_a_and_nonzero_does_not(tiny_model, batch, scope):
    for init, a_moves in (("default", False), ("nonzero", True)):
        model = make(tiny_model, scope=scope, init=init).train()
        step = direction(model)
        model.load_adapter_state({k: v + 0.1 * step[k] for k, v in model.init_state().items()})
        task_loss(SST2, model(batch), batch).backward()
        a_grads = [p.grad for k, p in model.adapter_params.items() if ".lora_A." in k]
        b_grads = [p.grad for k, p in model.adapter_params.items() if ".lora_B." in k]
        assert all(g is not None and g.abs().sum() > 0 for g in b_grads)
        if a_moves:
            assert all(g.abs().sum() > 0 for g in a_grads) and model.frozen_keys() == ()
        else:
            assert all(g is None or torch.equal(g, torch.zeros_like(g)) for g in a_grads)
            assert set(model.frozen_keys()) == {k for k in model.adapter_params if ".lora_A." in k}


@pytest.mark.parametrize("scope, init", [("module", "default"), ("network", "nonzero")])
def test_training_lowers_the_loss_and_saves_what_it_should(tiny_config, tmp_path, scope, init):
    cfg = replace(tiny_config, task="sst2", adapter="l-lora", linearize=scope, lora_init=init, lr=0.1, head_lr=0.1,
                  out=str(tmp_path / "run"))  # the tangent model of a tiny random BERT needs a large step
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval"]["loss"] for r in records if "eval" in r]
    assert sum(losses[-12:]) < 0.8 * sum(losses[:12]) and evals[-1] < evals[0]
    vector = TaskVector.load(tmp_path / "run" / "task_vector.safetensors")
    assert vector.meta["kind"] == "l-lora" and vector.meta["linearize"] == scope and vector.meta["lora_init"] == init
    has_a_delta = any(".lora_A." in k for k in vector.delta)
    assert has_a_delta == (init == "nonzero") and any(".lora_A." in k for k in vector.init)


@pytest.mark.parametrize("scope, init", [("module", "default"), ("network", "nonzero")])
def test_save_load_gives_identical_logits_and_a_plain_peft_export(tiny_config, tiny_model, batch, tmp_path, scope,
                                                                  init):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from fusekit.artifacts.run_folder import save_run

    cfg = replace(tiny_config, task="sst2", adapter="l-lora", linearize=scope, lora_init=init)
    model = make(tiny_model, scope=scope, init=init).float()
    step = {k: v.float() * (k not in model.frozen_keys()) for k, v in direction(model).items()}  # as training
    model.load_adapter_state({k: v + 0.2 * step[k] for k, v in model.init_state().items()})
    base = load_base_model(str(tiny_model), SST2)
    save_run(tmp_path, cfg, base, model, SST2)
    _, loaded = model_for_run(load_run(tmp_path), SST2)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(batch), model(batch))
    _, nonlinear = model_for_run(load_run(tmp_path), SST2, nonlinear=True)
    plain = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2),
                                      str(tmp_path)).eval()
    with torch.no_grad():
        expected = nonlinear.eval()(batch)
        got = plain(**{k: v for k, v in batch.items() if k != "labels"}).logits
        assert torch.allclose(got, expected, atol=1e-5)
        # A frozen and B entering each layer linearly: module scope with B0 = 0 *is* LoRA with A frozen
        assert torch.allclose(expected, model(batch), atol=1e-6) == (scope == "module" and init == "default")
    assert plain.peft_config["default"].r == (8 if init == "nonzero" else 4)
