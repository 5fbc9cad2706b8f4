"""Each balancer against values computed by hand from its formula, on fixed losses, histories and gradients."""

import math

import numpy as np
import pytest
import torch

from fusekit.config import JointConfig
from fusekit.study.diagnostics import noise_fraction
from fusekit.training.balancers import RunFacts, make_balancer
from fusekit.training.balancers.coba import CoBa, coba_schedule, coba_weights, slope
from fusekit.training.balancers.famo import FAMO, logit_gradient
from fusekit.training.balancers.gradients import GradNormalize, PCGrad, pcgrad
from fusekit.training.balancers.weighting import PowerMean, Uncertainty

RUN = RunFacts(total_steps=100, priors=[1.0, 1.0])  # what a joint run tells its balancer


def task_gradients(losses: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """The K × P matrix of ∇L_i that the joint trainer hands a balancer, by autograd on a small graph."""
    return torch.stack([torch.autograd.grad(loss, shared, retain_graph=True)[0] for loss in losses])


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_slope_is_the_least_squares_fit():
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([[2.0, 4.0, 5.0, 9.0]])
    assert slope(x, y).item() == pytest.approx(11 / 5)  # Σ(x−x̄)(y−ȳ) / Σ(x−x̄)²


@pytest.mark.parametrize("weighting", ["paper", "mftcoder"])
def test_coba_weights_by_hand(weighting):
    """The paper's ω = DF·RCS + (1 − DF)·ACS; MFTCoder's code sharpens and floors it."""
    alpha = torch.tensor([-0.02, -0.01, 0.03])
    history = torch.tensor([[-0.01, -0.01, 0.01], [-0.02, -0.01, 0.03]])  # M = 2
    max_history = torch.tensor([0.01, 0.03])
    weights, parts = coba_weights(alpha, history, max_history, tau=5.0, weighting=weighting)
    rcs = softmax([3 * a / 0.06 for a in (-0.02, -0.01, 0.03)])
    acs = softmax([-2 * a / s for a, s in zip((-0.02, -0.01, 0.03), (0.03, 0.02, 0.04))])
    df = min(2 * softmax([-5 * 2 * 0.01 / 0.04, -5 * 2 * 0.03 / 0.04])[-1], 1.0)
    expected = [df * r + (1 - df) * a for r, a in zip(rcs, acs)]
    if weighting == "mftcoder":
        expected = softmax([3 * w for w in expected])
        if min(expected) < 1 / 30:
            expected = [0.9 * w + 0.1 / 3 for w in expected]
    assert sum(expected) == pytest.approx(1.0)
    assert parts["rcs"].tolist() == pytest.approx(rcs, abs=1e-6)
    assert parts["acs"].tolist() == pytest.approx(acs, abs=1e-6)
    assert parts["df"].item() == pytest.approx(df, abs=1e-6)
    assert weights.tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("weighting", ["paper", "mftcoder"])
def test_coba_lowers_the_weight_of_a_diverging_task(weighting):
    coba = CoBa(3, warmup=5, window=10, weighting=weighting)
    coba.start(torch.tensor([2.0, 1.0, 1.0]))
    for step in range(1, 31):
        diverging = 1.0 if step <= 10 else 1.0 + 0.02 * (step - 10)
        coba.observe(step, torch.tensor([2.0 * (1 - 0.01 * step), 1 - 0.005 * step, diverging]))
    assert coba.weights.sum().item() == pytest.approx(3.0)
    assert coba.weights[2] < 1.0 and coba.weights[2] < coba.weights[0] and coba.weights[2] < coba.weights[1]
    if weighting == "mftcoder":
        assert coba.weights.min() >= 3 * 0.9 / 30  # the floor keeps every task in play


def test_coba_schedule_scales_with_the_run(capsys):
    assert coba_schedule(300) == (3, 30, 20)  # ~100 validations, 10% warm-up, a fifth of them per fit
    assert coba_schedule(50) == (1, 5, 10)
    assert coba_schedule(300, interval=1, warmup=0, window=7) == (1, 0, 7)
    CoBa.for_run(2, JointConfig(), RunFacts(300, []))
    assert capsys.readouterr().err == ""
    short = JointConfig(coba_interval=1, coba_warmup=10, coba_window=30)
    CoBa.for_run(2, short, RunFacts(50, []))  # 40 slopes: fewer than two windows of points
    assert "warning: CoBa fits 40 slopes" in capsys.readouterr().err
    costly = JointConfig(batch_size=16, validation_examples=100)  # the SmolLM2 study's 149 steps: interval 1
    CoBa.for_run(5, costly, RunFacts(149, []))
    assert "about 2.1× the compute of the training itself (coba_interval 5 keeps it under half)" in \
        capsys.readouterr().err
    CoBa.for_run(5, JointConfig(batch_size=16, validation_examples=100, coba_interval=5), RunFacts(149, []))
    assert "compute" not in capsys.readouterr().err


def synthetic_coba(estimate: str, rise_at: int | None = None, steps: int = 300,
                   slope_floor: float = 0.0) -> np.ndarray:
    """CoBa's weights (steps × 2) when task 0 converges fast and task 1 slowly (exponential decay of 2,000 examples'
    losses), each validation scored on a fixed 200-example sample or on a fresh 8-example mini-batch; from
    `rise_at` on, task 1 overfits (its loss rises linearly)."""
    generator = torch.Generator().manual_seed(0)
    spread = torch.rand(2, 2000, generator=generator) * 2
    rates = torch.tensor([[0.01], [0.002]])

    def losses(step: int) -> torch.Tensor:
        true = spread * torch.exp(-rates * step)
        if rise_at is not None and step > rise_at:
            true[1] = spread[1] * math.exp(-0.002 * rise_at) * (1 + 0.004 * (step - rise_at))
        picked = torch.arange(200) if estimate == "fixed" else torch.randint(2000, (8,), generator=generator)
        return true[:, picked].mean(dim=1)

    return coba_run(CoBa(2, interval=1, warmup=30, window=60, slope_floor=slope_floor), losses, steps)


def coba_run(coba: CoBa, losses, steps: int) -> np.ndarray:
    """CoBa's weights after each of `steps` validations, the first of `losses(0)` its start."""
    coba.start(losses(0))
    weights = []
    for step in range(1, steps + 1):
        coba.observe(step, losses(step))
        weights.append(coba.weights.clone())
    return torch.stack(weights).numpy()


def test_weights_from_a_fixed_sample_follow_convergence_not_sampling_noise():
    fixed, batch = synthetic_coba("fixed")[30:], synthetic_coba("batch")[30:]
    assert noise_fraction(fixed) < 0.05 * noise_fraction(batch)
    assert np.all(fixed[:, 1] > fixed[:, 0])  # the slower task weighs more at every step after the warm-up


def test_an_overfitting_task_is_turned_down_and_stays_down():
    weights = synthetic_coba("fixed", rise_at=150)
    assert weights[140, 1] > 1.0  # converging slowly: more weight
    assert np.all(weights[185:, 1] < 0.6)  # rising loss: down within a third of the window, and it stays down


def plateau_coba(floor: float, steps: int = 400) -> np.ndarray:
    """CoBa's weights (steps × 3) when three tasks converge at different rates to a plateau at step ~150, each
    validation with 0.2% jitter (a fixed sample's loss still moves a little as the model does)."""
    generator = torch.Generator().manual_seed(0)
    rates = torch.tensor([0.05, 0.03, 0.02])
    def losses(step: int) -> torch.Tensor:
        return (0.2 + 0.8 * torch.exp(-rates * step)) * (1 + 0.002 * torch.randn(3, generator=generator))

    return coba_run(CoBa(3, interval=1, warmup=40, window=80, slope_floor=floor), losses, steps)


def test_a_slope_floor_keeps_a_plateau_from_swinging_the_weights_and_leaves_convergence_alone():
    paper, floored = plateau_coba(0.0), plateau_coba(0.1)
    assert paper[250:].min() < 0.3 and paper[250:].max() > 2.0  # flat, jittering slopes: the weights swing
    assert floored[250:].min() > 0.8 and floored[250:].max() < 1.25  # a tenth of the run's slopes: near uniform
    assert np.array_equal(paper[:140], floored[:140])  # while the tasks converge the floor never binds
    assert np.abs(paper[:150] - floored[:150]).max() < 1e-3  # and barely as the first one flattens
    assert synthetic_coba("fixed", rise_at=150, slope_floor=0.1)[185:, 1].max() < 0.6  # overfitting: still down


def test_the_floors_by_hand():
    alpha = torch.tensor([0.001, -0.001])
    history = torch.tensor([[0.001, -0.001], [0.003, 0.001]])  # Σ_s |α_i(s)| = 0.004, 0.002
    max_history = torch.tensor([-0.02, 0.001])
    _, paper = coba_weights(alpha, history, max_history)
    _, floored = coba_weights(alpha, history, max_history, rcs_floor=0.01, acs_floor=torch.tensor([0.01, 0.01]))
    # RCS = softmax(K·α / max(Σ|α|, floor)): 2·(±0.001)/0.002 = ±1 against 2·(±0.001)/0.01 = ±0.2
    assert paper["rcs"].tolist() == pytest.approx([math.exp(1) / (math.exp(1) + math.exp(-1)), math.exp(-1) /
                                                   (math.exp(1) + math.exp(-1))])
    assert floored["rcs"].tolist() == pytest.approx([1 / (1 + math.exp(-0.4)), 1 / (1 + math.exp(0.4))])
    # ACS = softmax(−N·α_i / max(Σ_s|α_i(s)|, floor)): −2·0.001/0.004 = −0.5, 2·0.001/0.002 = 1 against ∓0.2
    assert paper["acs"].tolist() == pytest.approx([1 / (1 + math.exp(1.5)), 1 / (1 + math.exp(-1.5))])
    assert floored["acs"].tolist() == pytest.approx([1 / (1 + math.exp(0.4)), 1 / (1 + math.exp(-0.4))])


def test_noise_fraction_by_hand():
    assert noise_fraction(np.array([[1.0], [3.0], [1.0], [3.0]])) == pytest.approx((32 / 9) / 2)  # Var Δ / 2 Var
    assert noise_fraction(np.arange(10.0)[:, None]) == pytest.approx(0.0)  # a trend has no noise
    assert noise_fraction(np.ones((5, 2))) is None


def test_coba_is_uniform_during_warmup():
    coba = CoBa(2, warmup=100)
    coba.observe(1, torch.tensor([1.0, 1.0]))
    coba.observe(2, torch.tensor([0.5, 2.0]))
    assert coba.weights.tolist() == [1.0, 1.0]


def test_power_mean_limits():
    losses = torch.tensor([0.5, 2.0, 4.0])
    geometric = math.exp(sum(math.log(v) for v in (0.5, 2.0, 4.0)) / 3)
    assert PowerMean(3, 0.0).combine(losses).item() == pytest.approx(geometric)
    assert PowerMean(3, 1e-4).combine(losses).item() == pytest.approx(geometric, rel=1e-3)
    assert PowerMean(3, 1.0).combine(losses).item() == pytest.approx(6.5 / 3)
    assert PowerMean(3, 200.0).combine(losses).item() == pytest.approx(4.0, rel=0.01)


def test_pcgrad_on_the_seed_example():
    grads = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    # g1 is orthogonal to both; g2 and g3 conflict (g2·g3 = −2): each is projected to (0, 0)
    for orders in ([[0, 1, 2]] * 3, [[2, 1, 0]] * 3, [[1, 2, 0], [0, 2, 1], [2, 0, 1]]):
        assert pcgrad(grads, orders).tolist() == [1.0, 1.0]
    conflicting = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # g1·g2 = −1, ‖g2‖² = 2, ‖g1‖² = 1
    # g1 − (−1/2)g2 = (0.5, 0.5); g2 − (−1/1)g1 = (0, 1)
    assert pcgrad(conflicting, [[0, 1], [0, 1]]).tolist() == pytest.approx([0.5, 1.5])
    assert PCGrad(2).combine_gradients(conflicting, torch.ones(2))[0].tolist() == pytest.approx([0.5, 1.5])


def test_gradient_normalization_gives_unit_gradients():
    combined, weights = GradNormalize(2).combine_gradients(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.ones(2))
    assert combined.tolist() == pytest.approx([0.6, 1.8]) and weights.tolist() == pytest.approx([0.2, 0.5])


def test_uncertainty_weighting_reaches_sigma_squared_equal_to_the_loss():
    balancer = Uncertainty(2)
    losses = torch.tensor([0.5, 2.0])
    optimizer = torch.optim.SGD(balancer.parameters(), lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        balancer.combine(losses).backward()
        optimizer.step()
    assert torch.exp(balancer.log_vars).tolist() == pytest.approx([0.5, 2.0], rel=1e-3)  # σ_i² = L_i


def test_realtime_weights_are_inverse_losses_and_backward_reports_them():
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = theta ** 2  # 1, 4
    gradient, weights = make_balancer("realtime", 2, JointConfig(), RUN).balance(losses, task_gradients(losses, theta))
    assert weights.tolist() == pytest.approx([1.0, 0.25])
    assert gradient.tolist() == pytest.approx([2.0, 1.0])  # ∂/∂θ Σ log θ² = 2/θ


def test_gradient_balancer_replaces_the_shared_gradient():
    shared = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    losses = torch.stack([3 * shared[0] + 4 * shared[1], 2 * shared[1]])  # gradients (3, 4) and (0, 2)
    gradient, _ = make_balancer("grad-normalize", 2, JointConfig(), RUN).balance(losses, task_gradients(losses, shared))
    assert gradient.tolist() == pytest.approx([0.6, 1.8])


def test_famo_weights_and_gradient_by_hand():
    famo = make_balancer("famo", 2, JointConfig(famo_lr=0.025, famo_gamma=0.001), RUN)
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.0, math.log(3)]))  # z = (0.25, 0.75)
    theta = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    losses = torch.stack([theta[0] ** 2 + theta[1], 0.5 * theta[0] * theta[1]])  # L = (2, 0.5)
    # ∇L_1 = (2θ_0, 1) = (2, 1); ∇L_2 = (0.5θ_1, 0.5θ_0) = (0.5, 0.5)
    gradient, weights = famo.balance(losses, task_gradients(losses, theta))
    # c = 0.25/2 + 0.75/0.5 = 1.625; ω = (0.25/(1.625·2), 0.75/(1.625·0.5)) = (1/13, 12/13)
    assert weights.tolist() == pytest.approx([1 / 13, 12 / 13], abs=1e-6)
    # ∇θ of Σ z_i log L_i / c = Σ ω_i ∇L_i = (1/13)(2, 1) + (12/13)(0.5, 0.5) = (8/13, 7/13)
    assert gradient.tolist() == pytest.approx([8 / 13, 7 / 13], abs=1e-6)
    assert famo.logits.tolist() == pytest.approx([0.0, math.log(3)])  # ξ moves only in after_step


def test_famo_logit_update_lowers_the_weight_of_the_task_that_improved():
    famo = FAMO(2, lr=0.025, gamma=0.0)
    famo.balance(torch.tensor([1.0, 1.0]), torch.zeros(2, 0))  # ξ = 0, z = (0.5, 0.5), L(t) = (1, 1)
    new = torch.tensor([0.5, 1.0])  # L(t+1): task 1 halved its loss, task 2 did not move
    # δ = log L(t) − log L(t+1) = (log 2, 0); J_softmax = diag(z) − z zᵀ = [[0.25, −0.25], [−0.25, 0.25]]
    # ∇ξ = Jᵀ δ = (0.25·log 2, −0.25·log 2) ≈ (0.17329, −0.17329)
    quarter = 0.25 * math.log(2)
    assert logit_gradient(torch.zeros(2), torch.tensor([math.log(2), 0.0])).tolist() == \
        pytest.approx([quarter, -quarter], abs=1e-7)
    famo.after_step(new)
    # Adam's first step: m̂ = g, v̂ = g², so ξ ← ξ − lr·g/(|g| + 1e-8) = −lr·sign(g)
    assert famo.logits.tolist() == pytest.approx([-0.025, 0.025], abs=1e-7)
    z = torch.softmax(famo.logits.detach(), dim=0)
    assert z[0] < 0.5 < z[1]  # the task whose loss fell faster now weighs less: improvement rates are balanced
    _, weights = famo.balance(torch.tensor([1.0, 1.0]), torch.zeros(2, 0))
    assert weights[0] < weights[1]


def test_famo_needs_the_losses_after_the_step():
    assert FAMO.needs_loss_after_step and not make_balancer("uniform", 2, JointConfig(), RUN).needs_loss_after_step
    with pytest.raises(RuntimeError, match="before the step's losses"):
        FAMO(2).after_step(torch.ones(2))


def test_unknown_balancer():
    from fusekit.errors import FusekitError

    with pytest.raises(FusekitError, match="unknown balancer 'magic'"):
        make_balancer("magic", 2, JointConfig(), RUN)


@pytest.mark.parametrize("weighting", ["paper", "mftcoder"])
@pytest.mark.parametrize("acs_history", ["window", "all"])
def test_coba_three_tasks_by_hand_under_both_histories(acs_history, weighting):
    """Seven validations of three tasks; with warm-up 1 and a 3-point window, five slopes are fitted, so the
    window (3 slopes) and all-since-warm-up (5 slopes) histories give different absolute convergence scores."""
    losses = np.array([[2.0, 1.0, 4.0], [1.8, 0.95, 3.9], [1.5, 0.93, 3.7], [1.4, 0.92, 3.8], [1.2, 0.90, 4.0],
                       [1.1, 0.91, 4.3], [1.0, 0.90, 4.6]])
    coba = CoBa(3, interval=1, warmup=1, window=3, acs_history=acs_history, weighting=weighting)
    coba.start(torch.tensor(losses[0]))
    for step, row in enumerate(losses[1:], 1):
        coba.observe(step, torch.tensor(row))
    norm = losses[1:] / losses[0]  # ℓ̃ at steps 1..6

    def fit(ys, xs):
        xc = xs - xs.mean()
        return ((ys - ys.mean(axis=-1, keepdims=True)) * xc).sum(axis=-1) / (xc ** 2).sum()

    alphas, alpha_max = [], []
    for t in range(2, 7):  # fits after steps 2..6, each over the last ≤ 3 points
        xs = np.arange(max(1, t - 2), t + 1, dtype=float)
        ys = norm[int(xs[0]) - 1:t].T
        alphas.append(fit(ys, xs))
        alpha_max.append(fit(ys.max(axis=0), xs))
    alpha, k = alphas[-1], 3
    history = np.array(alphas[-3:] if acs_history == "window" else alphas)
    rcs = np.array(softmax(k * alpha / np.abs(alpha).sum()))
    acs = np.array(softmax(-len(history) * alpha / np.abs(history).sum(axis=0)))
    m = len(alpha_max)
    scores = softmax(-5.0 * m * np.array(alpha_max) / np.abs(alpha_max).sum())
    df = min(m * scores[-1], 1.0)
    weights = df * rcs + (1 - df) * acs
    if weighting == "mftcoder":
        weights = np.array(softmax(k * weights))
        if weights.min() < 1 / (10 * k):
            weights = 0.9 * weights + 0.1 / k
    assert coba.weights.numpy() == pytest.approx(3 * weights, rel=1e-4)
    task_losses = torch.tensor([0.5, 1.0, 2.0])
    assert coba.combine(task_losses).item() == pytest.approx(float((weights * task_losses.numpy()).sum()), rel=1e-4)
    coba.loss_scale = "uniform"
    assert coba.combine(task_losses).item() == pytest.approx(3 * float((weights * task_losses.numpy()).sum()),
                                                             rel=1e-4)
