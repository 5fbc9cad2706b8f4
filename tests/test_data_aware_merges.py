"""Data-aware merges: RegMean and Fisher merging, by hand and against their closed forms on the tiny model."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from fusekit.artifacts.run_folder import load_run
from fusekit.merging.methods import make_method
from fusekit.merging.methods.regmean import RegMean
from tests.test_cli import invoke


def test_regmean_is_the_least_squares_weight_over_every_tasks_inputs():
    """α = 1: W* minimises Σ_i ‖X_i W − X_i W_i‖² (input × output orientation), i.e. the stacked lstsq solution."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) * 2.0]
    deltas = [rng.normal(size=(4, 6)), rng.normal(size=(4, 6))]  # ΔW_i as LoRA holds them: output × input
    method = RegMean(regmean_alpha=1.0)
    method.stats = {"layer": [torch.tensor(x.T @ x) for x in xs]}
    merged = method.merge([torch.tensor(d) for d in deltas], [1.0, 1.0], "layer").numpy()
    stacked, targets = np.vstack(xs), np.vstack([x @ d.T for x, d in zip(xs, deltas)])
    expected = np.linalg.lstsq(stacked, targets, rcond=None)[0].T
    assert np.allclose(merged, expected, atol=1e-8)


def test_regmean_shrinks_the_off_diagonal_terms_by_alpha():
    g1, g2 = np.array([[4.0, 2.0], [2.0, 3.0]]), np.array([[1.0, -1.0], [-1.0, 5.0]])
    d1, d2 = np.array([[1.0, 2.0]]), np.array([[-1.0, 0.5]])
    method = RegMean(regmean_alpha=0.5)  # G̃ = 0.5 G + 0.5 diag(G): off-diagonals halved
    method.stats = {"w": [torch.tensor(g1), torch.tensor(g2)]}
    shrunk = [np.array([[4.0, 1.0], [1.0, 3.0]]), np.array([[1.0, -0.5], [-0.5, 5.0]])]
    expected = np.linalg.solve(shrunk[0] + shrunk[1], shrunk[0] @ d1.T + shrunk[1] @ d2.T).T
    assert np.allclose(method.merge([torch.tensor(d1), torch.tensor(d2)], [1.0, 1.0], "w").numpy(), expected)
    assert np.allclose(method.merge([torch.tensor(d1), torch.tensor(d2)], [1.0, 1.0], "other").numpy(),
                       (d1 + d2) / 2)  # no statistics: averaging


@pytest.fixture(scope="module")
def two_runs(sst2_run, tiny_config, tmp_path_factory):
    from fusekit.training.train import train

    out = tmp_path_factory.mktemp("regmean") / "rte"
    train(replace(tiny_config, task="rte", epochs=2, max_train=32, out=str(out)))
    return [sst2_run[0], out]


def delta_w(vector, layer: str) -> torch.Tensor:
    """s·(B·A − B0·A0) of one layer of a vector (merged folders write scale and factors this way)."""
    scale = vector.meta["alpha"] / vector.meta["rank"]
    a0, b0 = vector.init[f"{layer}.lora_A.weight"], vector.init[f"{layer}.lora_B.weight"]
    a = a0 + vector.delta.get(f"{layer}.lora_A.weight", torch.zeros_like(a0))
    b = b0 + vector.delta.get(f"{layer}.lora_B.weight", torch.zeros_like(b0))
    return scale * (b @ a - b0 @ a0)


def test_statistics_cover_every_adapted_layer_and_the_merge_is_the_closed_form(two_runs, tmp_path):
    from fusekit.artifacts.merged_folder import load_merged
    from fusekit.merging.statistics import gram_matrices

    runs = [load_run(folder) for folder in two_runs]
    grams = [gram_matrices(run, 8, torch.device("cpu")) for run in runs]
    layers = sorted({key.rsplit(".lora_", 1)[0] for key in runs[0].vector.init})
    assert sorted(grams[0]) == layers and all(torch.allclose(g, g.T) for g in grams[0].values())
    assert all(torch.linalg.eigvalsh(g).min() > -1e-6 for g in grams[0].values())  # Gram matrices are PSD
    out = tmp_path / "regmean"
    result = invoke("merge", *two_runs, "--select-on-seen", "--method", "regmean", "--regmean-alpha", "0.7",
                    "--rank", "32", "--val-examples", "8", "--device", "cpu", "--out", out)  # rank 32: keeps all
    assert result.exit_code == 0, result.output
    merged = load_merged(out)[1]
    reference = RegMean(0.7)
    for layer in layers[:3]:
        reference.stats = {layer: [g[layer] for g in grams]}
        expected = reference.merge([delta_w(run.vector, layer) for run in runs], [1.0, 1.0], layer)
        assert torch.allclose(delta_w(merged, layer), expected.float(), atol=1e-4)
        average = (delta_w(runs[0].vector, layer) + delta_w(runs[1].vector, layer)) / 2
        assert not torch.allclose(expected.float(), average, atol=1e-4)  # the statistics change the result
    assert invoke("eval", out, "--device", "cpu").exit_code == 0
    assert make_method("regmean").params() == {"regmean_alpha": 0.9}


def test_fisher_merging_by_hand_with_its_floor():
    from fusekit.merging.methods.fisher import FLOOR, FisherMerge

    method = FisherMerge()
    d1, d2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.0, 5.0])
    method.stats = {"w": [torch.tensor([3.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 1.0])]}
    merged = method.merge([d1, d2], [1.0, 1.0], "w")
    assert torch.allclose(merged, torch.tensor([(3 * 1 - 1) / 4, (2 + 0) / 2, 4.0]))  # no Fisher anywhere: mean
    assert FLOOR < 1e-3
    assert torch.allclose(method.merge([d1, d2], [1.0, 3.0], "w")[0], torch.tensor((3 * 1 + 3 * -1) / 6))


def test_fisher_statistics_and_merge_on_the_tiny_model(two_runs, tmp_path):
    from fusekit.artifacts.merged_folder import load_merged
    from fusekit.merging.methods.fisher import FisherMerge
    from fusekit.merging.statistics import fisher_diagonals

    runs = [load_run(folder) for folder in two_runs]
    fishers = [fisher_diagonals(run, 8, torch.device("cpu")) for run in runs]
    assert set(fishers[0]) == set(runs[0].vector.delta) and all((f >= 0).all() for f in fishers[0].values())
    assert any(f.max() > 0 for f in fishers[0].values())
    out = tmp_path / "fisher"
    result = invoke("merge", *two_runs, "--select-on-seen", "--method", "fisher", "--val-examples", "8",
                    "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output  # the method's own space by default
    manifest, merged, _ = load_merged(out)
    assert manifest["space"] == "factors"
    reference = FisherMerge()
    key = max(runs[0].vector.delta, key=lambda k: float(fishers[0][k].mean()))
    reference.stats = {key: [f[key] for f in fishers]}
    expected = reference.merge([run.vector.delta[key] for run in runs], [1.0, 1.0], key)
    assert torch.allclose(merged.delta[key], expected, atol=1e-6)
    assert not torch.allclose(expected, (runs[0].vector.delta[key] + runs[1].vector.delta[key]) / 2)
    result = invoke("merge", *two_runs, "--select-on-seen", "--method", "fisher", "--space", "delta-w",
                    "--device", "cpu", "--out", tmp_path / "x")
    assert result.exit_code == 1 and "use --space factors" in result.stderr


def test_fisher_of_an_adapted_layer_the_prediction_never_reaches_is_zero(tiny_config, tmp_path):
    """Mean pooling leaves BERT's pooler unused; a run that adapts every `dense` layer adapts the pooler too (as the
    5-task study did), and its Fisher there is 0, not a crash."""
    from fusekit.merging.statistics import fisher_diagonals
    from fusekit.training.train import train

    out = tmp_path / "mean"
    train(replace(tiny_config, task="sst2", epochs=1, max_train=16, pooling="mean",
                  target_modules=["query", "value", "dense"], out=str(out)))
    fishers = fisher_diagonals(load_run(out), 4, torch.device("cpu"))
    pooler = [key for key in fishers if "pooler" in key]
    assert pooler and all(float(fishers[key].abs().max()) == 0 for key in pooler)
    assert any(float(f.max()) > 0 for key, f in fishers.items() if "query" in key)


def test_adamerging_learns_layer_coefficients_that_lower_the_entropy(two_runs, tmp_path, monkeypatch):
    """λ starts at 0.3 per task and layer; Adam moves it so that the summed prediction entropy on unlabeled
    held-out inputs falls; the merge applies each layer's λ to each task's τ."""
    from fusekit.artifacts.merged_folder import load_merged
    from fusekit.merging import statistics
    from fusekit.merging.methods.adamerging import AdaMerging

    monkeypatch.setattr(statistics, "ADA_LR", 0.05)  # a tiny model needs bigger steps to move in 20
    runs = [load_run(folder) for folder in two_runs]
    learned = statistics.learn_coefficients(runs, 16, torch.device("cpu"), steps=20)
    assert set(learned) == set(runs[0].vector.init)
    values = torch.stack([torch.stack(v) for v in learned.values()])
    assert not torch.allclose(values, torch.full_like(values, 0.3))  # the coefficients moved
    layer_keys = [k for k in learned if k.rsplit(".lora_", 1)[0] == next(iter(learned)).rsplit(".lora_", 1)[0]]
    assert all(torch.equal(torch.stack(learned[k]), torch.stack(learned[layer_keys[0]])) for k in layer_keys)

    def mean_entropy(coefficients) -> float:
        method = AdaMerging()
        method.stats = coefficients
        from fusekit.merging.stream import merge_vectors

        vector, _ = merge_vectors(runs, method, None, "factors")
        from fusekit.evaluation.eval import TaskScorer
        from fusekit.merging.search import held_out_split

        total = 0.0
        for run in runs:
            logits = TaskScorer(run.config.model, run.config.max_length, held_out_split(run, 16, 0), run.head,
                                torch.device("cpu")).logits(vector)
            p = torch.tensor(logits).softmax(-1)
            total += float(-(p * p.clamp(min=1e-12).log()).sum(-1).mean())
        return total

    start = {k: [torch.tensor(0.3)] * 2 for k in learned}
    assert mean_entropy(learned) < mean_entropy(start)
    out = tmp_path / "ada"
    monkeypatch.setattr(statistics, "ADA_STEPS", 3)
    result = invoke("merge", *two_runs, "--select-on-seen", "--method", "adamerging", "--space", "factors",
                    "--val-examples", "16", "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    manifest = load_merged(out)[0]
    assert manifest["method"] == "adamerging" and len(manifest["coefficients"]) == len(learned) // 2  # A, B
    from fusekit.study.plots import coefficients_figure

    figure = coefficients_figure("ada", manifest["coefficients"], ["sst2", "rte"])
    assert figure.axes[0].get_ylabel() == "adapter layer" and figure.axes[0].get_xlabel() == "task"


def test_statistics_are_cached_beside_the_run_and_checked(two_runs, monkeypatch):
    from fusekit.merging import statistics

    run = load_run(two_runs[1])
    calls = []
    real = statistics.COLLECT["gram"]
    monkeypatch.setitem(statistics.COLLECT, "gram", lambda *a: calls.append(1) or real(*a))
    first = statistics.run_statistics(run, "gram", 6, torch.device("cpu"))  # 6: not cached by the tests above
    again = statistics.run_statistics(run, "gram", 6, torch.device("cpu"))
    assert len(calls) == 1 and all(torch.equal(first[k], again[k]) for k in first)
    cached = next(run.folder.with_name(run.folder.name + ".stats").glob("gram-n6-*.safetensors"))
    cached.write_bytes(cached.read_bytes()[:-4] + b"xxxx")
    with pytest.raises(statistics.FusekitError, match="corrupt or was edited"):
        statistics.run_statistics(run, "gram", 6, torch.device("cpu"))


def test_adamerging_objective_by_hand():
    """Σ_i H_i (the paper); Σ_i H_i / H_i(own) + anchor · mean((λ − 0.3)²) (the normalized variant)."""
    from fusekit.merging.statistics import ada_objective

    entropies, own = torch.tensor([0.2, 0.6]), torch.tensor([0.1, 0.5])
    coefficients = torch.tensor([[0.3, 0.5], [0.1, 0.3]])  # deviations 0, 0.2, −0.2, 0: mean square 0.02
    assert ada_objective(entropies, None, coefficients, 0.0).item() == pytest.approx(0.8)
    assert ada_objective(entropies, own, coefficients, 1.0).item() == pytest.approx(0.2 / 0.1 + 0.6 / 0.5 + 0.02)


def test_normalized_adamerging_divides_by_each_tasks_own_adapter_entropy(two_runs, monkeypatch):
    """The `own` entropies the normalized objective divides by are each run's own adapter, alone, on the held-out
    inputs it is averaged over (here 16 examples, every batch all of them), computed apart through load_run."""
    from fusekit.artifacts.run_folder import model_for_run
    from fusekit.data.tasks import get_task
    from fusekit.merging import statistics
    from fusekit.merging.search import held_out_split

    captured = []
    objective = statistics.ada_objective
    monkeypatch.setattr(statistics, "ada_objective",
                        lambda e, own, c, a: captured.append(own) or objective(e, own, c, a))
    runs = [load_run(folder) for folder in two_runs]
    statistics.learn_coefficients(runs, 16, torch.device("cpu"), steps=1, normalized=True)
    expected = []
    for run in runs:
        base, model = model_for_run(run, get_task(run.head_task))
        data = base.encode(held_out_split(run, 16, 0), run.config.max_length)
        with torch.no_grad():
            probabilities = model.eval()(data.collate([data[i] for i in range(len(data))])).softmax(-1)
        expected.append(float(-(probabilities * probabilities.log()).sum(-1).mean()))
    assert captured[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert abs(expected[0] - expected[1]) > 1e-3  # two different adapters: a swap or a shared value would fail


def test_normalized_adamerging_merges_and_differs_from_the_papers(two_runs, tmp_path, monkeypatch):
    from fusekit.artifacts.merged_folder import load_merged
    from fusekit.merging import statistics

    monkeypatch.setattr(statistics, "ADA_LR", 0.05)
    monkeypatch.setattr(statistics, "ADA_STEPS", 5)
    coefficients = {}
    for method in ("adamerging", "adamerging-normalized"):
        result = invoke("merge", *two_runs, "--select-on-seen", "--method", method, "--val-examples", "16",
                        "--device", "cpu", "--out", tmp_path / method)
        assert result.exit_code == 0, result.output
        manifest = load_merged(tmp_path / method)[0]
        assert manifest["method"] == method
        coefficients[method] = manifest["coefficients"]
    assert coefficients["adamerging"] != coefficients["adamerging-normalized"]
