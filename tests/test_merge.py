"""Merge methods against hand-computed tensors; LoRA merges against the exact sum of ΔW; merged folders."""

from dataclasses import replace

import pytest
import torch

from fusekit.artifacts.run_folder import load_run, model_for_run
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.merging.methods import make_method
from fusekit.merging.methods.average import Average
from fusekit.merging.methods.dare import Dare, drop_and_rescale
from fusekit.merging.methods.task_arithmetic import TaskArithmetic
from fusekit.merging.methods.ties import Ties, trim
from fusekit.merging.stream import merge_vectors
from fusekit.training.train import train

T1, T2, T3 = torch.tensor([3.0, -2.0, 0.5, 1.0]), torch.tensor([-1.0, -4.0, 2.0, 0.2]), \
    torch.tensor([2.0, 1.0, -3.0, 0.1])


def test_task_arithmetic_and_average_by_hand():
    assert torch.allclose(TaskArithmetic(0.5).merge([T1, T2], [1.0, 1.0]), torch.tensor([1.0, -3.0, 1.25, 0.6]))
    assert torch.allclose(TaskArithmetic(0.5).merge([T1, T2], [2.0, 1.0]), torch.tensor([2.5, -4.0, 1.5, 1.1]))
    # weighted average: (1·τ1 + 3·τ2) / 4
    assert torch.allclose(Average().merge([T1, T2], [1.0, 3.0]), torch.tensor([0.0, -3.5, 1.625, 0.4]))


def test_ties_trim_elect_disjoint_mean_by_hand():
    # density 0.5 keeps the two largest magnitudes of each vector
    assert torch.equal(trim(T1, 0.5), torch.tensor([3.0, -2.0, 0.0, 0.0]))
    assert torch.equal(trim(T2, 0.5), torch.tensor([0.0, -4.0, 2.0, 0.0]))
    assert torch.equal(trim(T3, 0.5), torch.tensor([2.0, 0.0, -3.0, 0.0]))
    # elected signs of the sums (5, −6, −1, 0): +, −, −, none
    # disjoint means: (3 + 2)/2, (−2 − 4)/2, −3 (τ2's +2 disagrees), nothing kept → 0
    merged = Ties(lam=1.0, density=0.5).merge([T1, T2, T3], [1.0, 1.0, 1.0])
    assert torch.allclose(merged, torch.tensor([2.5, -3.0, -3.0, 0.0]))
    assert torch.allclose(Ties(lam=0.4, density=0.5).merge([T1, T2, T3], [1.0] * 3), 0.4 * merged)
    assert torch.equal(trim(T1, 1.0), T1) and torch.equal(trim(T1, 0.0), torch.zeros(4))


def test_dare_rescaling_keeps_the_expectation():
    delta = torch.full((200_000,), 2.0)
    dropped = drop_and_rescale(delta, 0.9, torch.Generator().manual_seed(0))
    kept = dropped != 0
    assert torch.all(dropped[kept] == 20.0)  # survivors scaled by 1 / (1 − p)
    assert abs(kept.float().mean().item() - 0.1) < 0.005
    assert abs(dropped.mean().item() - 2.0) < 0.05  # E[τ̃] = τ


def test_dare_is_seeded_per_tensor():
    method = Dare(TaskArithmetic(1.0), rate=0.5, seed=7)
    a = method.merge([T1, T2], [1.0, 1.0], key="layer.0")
    assert torch.equal(a, method.merge([T1, T2], [1.0, 1.0], key="layer.0"))
    assert not torch.equal(a, Dare(TaskArithmetic(1.0), rate=0.5, seed=8).merge([T1, T2], [1.0, 1.0], key="layer.0"))
    assert torch.equal(Dare(TaskArithmetic(1.0), rate=0.0).merge([T1, T2], [1.0, 1.0]), T1 + T2)


def test_unknown_method():
    with pytest.raises(FusekitError, match="unknown merge method 'magic'"):
        make_method("magic")


@pytest.fixture(scope="module")
def runs(tiny_config, tmp_path_factory):
    """Three tiny LoRA runs (one per task) sharing φ0; max_train leaves held-out examples for the search."""
    folder = tmp_path_factory.mktemp("merge-runs")
    out = {}
    for task in ("sst2", "rte", "mrpc"):
        train(replace(tiny_config, task=task, epochs=2, max_train=64, out=str(folder / task)))
        out[task] = load_run(folder / task)
    return out


def delta_w(vector, layer: str) -> torch.Tensor:
    """s·(B·A − B0·A0) of one layer, computed from the vector's weights."""
    s = vector.meta["alpha"] / vector.meta["rank"]
    phi, phi0 = vector.weights(), vector.init
    a, b = phi[f"{layer}.lora_A.weight"], phi[f"{layer}.lora_B.weight"]
    a0, b0 = phi0[f"{layer}.lora_A.weight"], phi0[f"{layer}.lora_B.weight"]
    return s * (b @ a - b0 @ a0)


def test_delta_w_merge_equals_the_sum_of_products(runs):
    inputs = [runs["sst2"], runs["rte"]]
    merged, report = merge_vectors(inputs, TaskArithmetic(0.7), space="delta-w")
    layers = sorted({k.rsplit(".lora_", 1)[0] for k in merged.init})
    assert report.rank == 8 and report.truncation_error == 0.0  # factors concatenated: rank 4 + 4, exact
    for layer in layers:
        expected = 0.7 * (delta_w(inputs[0].vector, layer) + delta_w(inputs[1].vector, layer))
        assert torch.allclose(delta_w(merged, layer), expected, atol=1e-6)
    factors, _ = merge_vectors(inputs, TaskArithmetic(0.7), space="factors")  # (ΣB)(ΣA) has cross terms
    assert not torch.allclose(delta_w(factors, layers[0]),
                              0.7 * sum(delta_w(r.vector, layers[0]) for r in inputs), atol=1e-6)


def test_svd_truncation_reports_its_error(runs):
    inputs = [runs["sst2"], runs["rte"], runs["mrpc"]]
    full, exact = merge_vectors(inputs, Ties(1.0, 0.5), space="delta-w", rank=32)  # hidden size 32: no truncation
    _, default = merge_vectors(inputs, Ties(1.0, 0.5), space="delta-w")  # TIES output is full rank: cut to Σ r_i = 12
    _, truncated = merge_vectors(inputs, Ties(1.0, 0.5), space="delta-w", rank=2)
    assert exact.truncation_error < 1e-6 and default.rank == 12 and truncated.rank == 2
    assert 0 < default.truncation_error < truncated.truncation_error < 1
    assert truncated.worst_layer_error >= truncated.truncation_error * 0.5
    layer = sorted({k.rsplit(".lora_", 1)[0] for k in full.init})[0]
    target = Ties(1.0, 0.5).merge([delta_w(r.vector, layer) for r in inputs], [1.0] * 3)
    assert torch.allclose(delta_w(full, layer), target, atol=1e-5)


@pytest.mark.parametrize("space", ["delta-w", "factors"])
def test_single_vector_with_lambda_one_reproduces_the_adapter(runs, glue_dir, space):
    from fusekit.data.loading import EncodedSplit, load_split, make_loader

    run, task = runs["rte"], get_task("rte")
    merged, _ = merge_vectors([run], TaskArithmetic(1.0), space=space)
    base, own = model_for_run(run, task)
    _, fused = model_for_run(run, task, vector=merged)
    batch = next(iter(make_loader(EncodedSplit(load_split(task, "validation", str(glue_dir)), base.tokenizer, 32),
                                  8, shuffle=False)))
    with torch.no_grad():
        assert torch.allclose(fused.eval()(batch), own.eval()(batch), atol=1e-5)


def test_incompatible_runs_are_refused(runs, tiny_config, tmp_path):
    other = tmp_path / "rank8"
    train(replace(tiny_config, task="cola", rank=8, epochs=1, max_train=16, out=str(other)))
    with pytest.raises(FusekitError, match="differ in rank"):
        merge_vectors([runs["sst2"], load_run(other)], TaskArithmetic())
    with pytest.raises(FusekitError, match="two runs for task sst2"):
        merge_vectors([runs["sst2"], runs["sst2"]], TaskArithmetic())
    with pytest.raises(FusekitError, match="--weights has 1 values for 2 runs"):
        merge_vectors([runs["sst2"], runs["rte"]], TaskArithmetic(), weights=[1.0])


def test_merge_cli_search_folder_peft_round_trip_and_eval(runs, tiny_model, tmp_path):
    import json

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from fusekit.artifacts.merged_folder import load_merged
    from fusekit.artifacts.run_folder import model_for_vector
    from tests.test_cli import invoke

    out = tmp_path / "merged"
    folders = [runs[t].folder for t in ("sst2", "rte", "mrpc")]
    result = invoke("merge", *folders, "--method", "task-arithmetic", "--lambdas", "0.5,1.0", "--out", out,
                    "--device", "cpu", "--val-examples", "16", "--criterion", "worst")
    assert result.exit_code == 0, result.output
    assert "held-out" in result.stderr
    manifest, vector, heads = load_merged(out)
    assert [row["lam"] for row in manifest["search"]] == [0.5, 1.0] and manifest["rank"] == 12
    assert manifest["search_criterion"] == "worst"
    assert all(set(row["criteria"]) == {"normalized", "above-chance", "raw", "worst"} for row in manifest["search"])
    best = max(manifest["search"], key=lambda row: row["criteria"]["worst"])
    assert manifest["params"]["lam"] == best["lam"]  # chosen by the criterion asked
    assert manifest["search_examples"] == {"sst2": 16, "rte": 16, "mrpc": 16}
    assert set(manifest["search_own"]) == {"sst2", "rte", "mrpc"} and "own" in result.stderr
    assert manifest["search_standard_error"] is None or manifest["search_standard_error"] >= 0
    assert 0 <= manifest["search_choice_standard_error"]["lam"] <= 0.26  # λ ∈ {0.5, 1}: at most half their gap
    by_criterion = manifest["search_choice_standard_error_by_criterion"]  # every criterion, the same resamples
    assert set(by_criterion) == set(best["criteria"])
    assert by_criterion["worst"] == manifest["search_choice_standard_error"]
    assert manifest["params"]["lam"] in (0.5, 1.0) and len(manifest["inputs"][0]["sha256"]) == 64
    task = get_task("mrpc")
    base, fused = model_for_vector(str(tiny_model), vector, heads["mrpc"], task, str(out))
    plain = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2),
                                      str(out / "peft" / "mrpc")).eval()
    inputs = base.tokenizer(["the movie was good fun", "bad and boring"], ["a", "b"], return_tensors="pt",
                            padding=True)
    with torch.no_grad():
        assert torch.allclose(plain(**inputs).logits, fused.eval()(dict(inputs)), atol=1e-5)
    result = invoke("eval", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "eval.json").read_text())
    assert set(scores) == {"sst2", "rte", "mrpc", "average_normalized"}
    own = json.loads((runs["rte"].folder / "eval.json").read_text())["rte"]["score"]
    assert scores["rte"]["normalized"] == pytest.approx(scores["rte"]["score"] / own)


def test_l_lora_vectors_merge_in_factor_space(tiny_config, tmp_path):
    for task in ("sst2", "rte"):
        train(replace(tiny_config, task=task, adapter="l-lora", lora_init="nonzero", epochs=1, max_train=16,
                      out=str(tmp_path / task)))
    inputs = [load_run(tmp_path / t) for t in ("sst2", "rte")]
    with pytest.raises(FusekitError, match="use --space factors"):
        merge_vectors(inputs, TaskArithmetic(), space="delta-w")
    merged, _ = merge_vectors(inputs, TaskArithmetic(0.5), space="factors")
    assert merged.meta["kind"] == "l-lora" and merged.tasks == ["sst2", "rte"]
    _, model = model_for_run(inputs[1], get_task("rte"), vector=merged)
    assert type(model).__name__ == "LinearizedModel"


def test_a_run_merged_alone_at_lambda_1_keeps_exactly_its_own_score(tiny_config, tmp_path):
    """Regression: the own adapter's recorded score was reused whenever the example count matched, though a run
    trained with --seed 1 scored a different dev subset than the merged folder (seed 0): 0.87 instead of 1.0."""
    from fusekit.evaluation.eval import score_folders
    from fusekit.merging.config import MergeConfig
    from fusekit.merging.merge import run_merge

    run = tmp_path / "rte"
    train(replace(tiny_config, task="rte", seed=1, max_eval=16, epochs=2, out=str(run)))
    merged = tmp_path / "alone"
    run_merge(MergeConfig(lam=1.0, val_examples=8, device="cpu"), [run], merged)
    rows = score_folders([merged], None, None, 16, 128, "cpu", None)
    assert rows[0]["task"] == "rte" and rows[0]["normalized"] == pytest.approx(1.0)


def test_a_merge_never_writes_nan(runs, tmp_path):
    """A second run whose task vector holds NaN (resealed, so that its checksum passes; the merge streams it
    rather than loading it whole) merges into nothing: the merge checks what it is about to write."""
    import shutil

    from safetensors.torch import save_file

    from fusekit.artifacts.atomic import load_tensors
    from fusekit.artifacts.checksums import reseal
    from tests.test_cli import invoke

    damaged = tmp_path / "damaged"
    shutil.copytree(runs["rte"].folder, damaged)
    tensors, metadata = load_tensors(damaged / "task_vector.safetensors")
    tensors[next(k for k in tensors if k.startswith("delta/"))][0, 0] = float("nan")
    save_file(tensors, str(damaged / "task_vector.safetensors"), metadata=metadata)
    reseal(damaged, "task_vector.safetensors")
    result = invoke("merge", runs["sst2"].folder, damaged, "--lambda", "0.5", "--device", "cpu",
                    "--out", tmp_path / "m")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.exit_code == 1 and len(errors) == 1 and "NaN or infinite" in errors[0]
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob("m.tmp-*"))


def test_selection_criteria_by_hand():
    """Three tasks, merged against own and chance scores: each criterion from its formula."""
    import numpy as np

    from fusekit.data.tasks import get_task
    from fusekit.evaluation.metrics import chance_score
    from fusekit.merging.criteria import criterion_values

    merged, own, chance = [0.80, 0.05, 0.40], [0.90, 0.20, 0.50], [0.50, 0.0, 0.45]
    values = criterion_values(merged, own, chance)
    assert values["normalized"] == pytest.approx((0.80 / 0.90 + 0.05 / 0.20 + 0.40 / 0.50) / 3)
    # the third task fell below chance: it counts 0, not a negative share
    assert values["above-chance"] == pytest.approx(((0.80 - 0.50) / (0.90 - 0.50) + 0.05 / 0.20 + 0.0) / 3)
    assert values["raw"] == pytest.approx(1.25 / 3)
    assert values["worst"] == pytest.approx(0.05 / 0.20)
    assert criterion_values([0.1], [-0.1], [0.0]) == {"normalized": 0.1, "above-chance": 0.1, "raw": 0.1,
                                                      "worst": 0.1}  # nothing defined: the raw mean
    labels = np.array([1, 1, 1, 0])
    assert chance_score(get_task("sst2"), labels) == pytest.approx(0.75)
    assert chance_score(get_task("mrpc"), labels) == pytest.approx((2 * 0.75 / 1.75 + 0.75) / 2)  # F1, accuracy
    assert chance_score(get_task("cola"), labels) == 0.0


def test_the_spread_of_a_searched_choice_over_resamples_of_the_held_out_examples():
    """A point that is right where the other is wrong on every example is chosen on every resample (spread 0); two
    points right on disjoint halves of the examples are a coin toss, so the chosen λ ∈ {0, 1} has a standard
    deviation near 0.5 (that of a fair coin)."""
    import numpy as np

    from fusekit.merging.criteria import CRITERIA
    from fusekit.merging.search import choice_standard_error

    task, labels = get_task("sst2"), [np.array([0, 1] * 50)]
    own = [labels[0].copy()]
    wrong = [1 - labels[0]]
    points = [{"lam": 0.0}, {"lam": 1.0}]
    firm = choice_standard_error([task], labels, own, [wrong, own], points, seed=0)
    assert firm == {criterion: {"lam": 0.0} for criterion in CRITERIA}
    first_half = labels[0].copy()
    first_half[50:] = 1 - first_half[50:]
    second_half = labels[0].copy()
    second_half[:50] = 1 - second_half[:50]
    spread = choice_standard_error([task], labels, own, [[first_half], [second_half]], points, seed=0,
                                   resamples=400)
    assert all(0.45 < spread[criterion]["lam"] <= 0.51 for criterion in ("normalized", "raw", "worst"))
    # above chance: a resample where both points fall below the majority class scores both 0, and the tie goes to
    # the first point, so λ = 0 wins more than half the tosses
    assert 0.3 < spread["above-chance"]["lam"] < 0.45


def test_per_task_coefficients_are_chosen_by_coordinate_ascent_and_merged_as_recorded(runs, tmp_path):
    """--per-task: after the shared λ, each task's coefficient from the grid, the others held; the merged vector is
    φ0 + Σ λ_i τ_i with the recorded λ_i, and the held-out criterion never falls below the shared choice's."""
    import json

    from fusekit.artifacts.merged_folder import load_merged
    from fusekit.artifacts.task_vector import TaskVector
    from tests.test_cli import invoke

    out = tmp_path / "per-task"
    folders = [runs[t].folder for t in ("sst2", "rte")]
    result = invoke("merge", *folders, "--lambdas", "0.5,1.0,2.0", "--per-task", "--space", "factors", "--out", out,
                    "--device", "cpu", "--val-examples", "16")
    assert result.exit_code == 0, result.output
    manifest, vector, _ = load_merged(out)
    lam, weights = manifest["params"]["lam"], manifest["weights"]
    shared = max(row["criteria"]["normalized"] for row in manifest["search"])
    tried = manifest["per_task_search"]
    assert len(tried) == 2 * 2 and {row["task"] for row in tried} == {"sst2", "rte"}  # 2 tasks × 2 other λ
    best_tried = max(tried, key=lambda row: row["criteria"]["normalized"])
    if best_tried["criteria"]["normalized"] > shared:  # the ascent only climbs: it ends at its best row
        assert [lam * w for w in weights] == pytest.approx(best_tried["coefficients"])
    else:
        assert weights == [1.0, 1.0]
    vectors = [TaskVector.load(f / "task_vector.safetensors") for f in folders]
    expected = sum((lam * w * v for w, v in zip(weights, vectors)), start=0 * vectors[0])
    for key, delta in expected.delta.items():
        assert torch.allclose(vector.delta[key], delta, atol=1e-6), key
    assert json.loads((out / "manifest.json").read_text())["search_criterion"] == "normalized"
    assert "per task λ" in result.stderr


def test_tsv_m_by_hand():
    """Task singular vectors (CVPR 2025) on two full-rank 4×6 changes: each keeps ⌊4/2⌋ = 2 singular triplets, U
    and V are replaced by their nearest orthonormal matrices (Procrustes), ΔW = λ U⊥ Σ V⊥ᵀ. Computed in numpy."""
    import numpy as np

    from fusekit.merging.methods import make_method

    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=(4, 6)), rng.normal(size=(4, 6))]
    weights, lam = [1.0, 0.5], 0.7
    us, ss, vs = [], [], []
    for w, d in zip(weights, deltas):
        u, s, vh = np.linalg.svd(w * d, full_matrices=False)
        us.append(u[:, :2]), ss.append(s[:2]), vs.append(vh[:2].T)
    u, s, v = np.hstack(us), np.concatenate(ss), np.hstack(vs)

    def orthonormal(m):
        p, _, qh = np.linalg.svd(m, full_matrices=False)
        return p @ qh

    expected = lam * orthonormal(u) @ np.diag(s) @ orthonormal(v).T
    method = make_method("tsv-m", lam=lam)
    merged = method.merge([torch.tensor(d) for d in deltas], weights)
    assert np.allclose(merged.numpy(), expected, atol=1e-10)
    assert np.allclose(orthonormal(u).T @ orthonormal(u), np.eye(4), atol=1e-10)  # 4 orthonormal columns
    # a low-rank change keeps only its nonzero singular values; a vector (bias) is task arithmetic
    low = [torch.tensor(np.outer(rng.normal(size=4), rng.normal(size=6))) for _ in range(2)]
    assert torch.linalg.matrix_rank(method.merge(low, [1.0, 1.0])) == 2
    bias = [torch.ones(3), 2 * torch.ones(3)]
    assert torch.allclose(method.merge(bias, [1.0, 1.0]), lam * 3 * torch.ones(3))
    assert method.space == "delta-w"


@pytest.mark.parametrize("method", ["tsv-m", "knots-ties"])
def test_svd_based_merges_run_end_to_end_in_their_space(runs, tmp_path, method):
    from fusekit.artifacts.merged_folder import load_merged
    from tests.test_cli import invoke

    out = tmp_path / method
    result = invoke("merge", runs["sst2"].folder, runs["rte"].folder, "--method", method, "--lambda", "1.0",
                    "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    manifest, vector, _ = load_merged(out)
    assert manifest["method"] == method and manifest["space"] == "delta-w"
    assert invoke("eval", out, "--device", "cpu").exit_code == 0


def test_knots_ties_by_hand():
    """KnOTS on two rank-2 changes of a 3×4 weight: one SVD of [ΔW_1 ΔW_2] gives the shared basis U Σ and each
    task's V_i; TIES (density 1: elect each entry's sign by the sum, average the agreeing entries, scale by λ)
    merges the V_i; ΔW = U Σ V*ᵀ. Computed in numpy, signs of the singular vectors whatever numpy chose."""
    import numpy as np

    from fusekit.merging.methods import make_method

    rng = np.random.default_rng(1)
    deltas = [rng.normal(size=(3, 2)) @ rng.normal(size=(2, 4)) for _ in range(2)]
    weights, lam = [1.0, 2.0], 0.6
    u, s, vh = np.linalg.svd(np.hstack([w * d for w, d in zip(weights, deltas)]), full_matrices=False)
    keep = int((s > 1e-6 * s[0]).sum())
    u, s, vh = u[:, :keep], s[:keep], vh[:keep]
    blocks = np.stack([vh[:, :4].T, vh[:, 4:].T])  # V_i: 4 × keep
    elected = np.sign(blocks.sum(axis=0))
    agree = (np.sign(blocks) == elected) & (blocks != 0)
    merged_v = lam * (blocks * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)
    expected = u @ np.diag(s) @ merged_v.T
    merged = make_method("knots-ties", lam=lam, density=1.0).merge([torch.tensor(d) for d in deltas], weights)
    assert keep == 3 and np.allclose(merged.numpy(), expected, atol=1e-10)
    # with one task, TIES of one V is λ V: KnOTS gives back λ ΔW exactly
    one = make_method("knots-ties", lam=lam, density=1.0).merge([torch.tensor(deltas[0])], [1.0])
    assert np.allclose(one.numpy(), lam * deltas[0], atol=1e-10)


def test_selecting_on_examples_a_run_trained_on_is_refused_unless_asked(tiny_config, tmp_path):
    """A run trained on its task's whole training split leaves no held-out example: a search or a data-aware merge
    stops before any work, unless --select-on-seen accepts selecting on seen examples."""
    from fusekit.training.train import train
    from tests.test_cli import assert_one_line_error, invoke

    folders = []
    for task in ("sst2", "rte"):
        folders.append(tmp_path / task)
        train(replace(tiny_config, task=task, epochs=1, max_train=None if task == "rte" else 16, out=str(folders[-1])))
    assert_one_line_error(invoke("merge", *folders, "--search", "--out", tmp_path / "m", "--device", "cpu"),
                          r"rte left no training example unseen \(it trained on every rte training example\): "
                          r"a search .*--select-on-seen")
    assert not (tmp_path / "m").exists()
    assert invoke("merge", *folders, "--lambda", "0.5", "--out", tmp_path / "fixed", "--device", "cpu").exit_code == 0
    result = invoke("merge", *folders, "--search", "--select-on-seen", "--val-examples", "8", "--out", tmp_path / "m",
                    "--device", "cpu")
    assert result.exit_code == 0
    assert "it trained on every rte training example; selecting on a sample of all of them" in result.stderr


def test_a_criterion_is_judged_on_the_half_its_choice_did_not_read():
    from fusekit.merging.criteria import cross_fitted

    def half(normalized, worst, t1, t2):
        return {"criteria": {"normalized": normalized, "worst": worst}, "normalized": {"t1": t1, "t2": t2}}

    rows = [{"lam": 0.3, "halves": [half(0.9, 0.5, 1.0, 0.8), half(0.85, 0.6, 0.9, 0.8)]},
            {"lam": 1.0, "halves": [half(0.8, 0.7, 0.9, 0.7), half(0.95, 0.65, 1.0, 0.9)]}]
    # normalized: chooses λ 0.3 on the first half, scored on the second (0.85, worst 0.8); λ 1.0 on the second,
    # scored on the first (0.8, worst 0.7)
    assert cross_fitted(rows, "normalized") == pytest.approx({"average": 0.825, "worst": 0.75})
    # worst: λ 1.0 on both halves: (0.95, 0.9) and (0.8, 0.7)
    assert cross_fitted(rows, "worst") == pytest.approx({"average": 0.875, "worst": 0.8})
    assert cross_fitted([{"lam": 0.3}], "worst") is None  # a search recorded before halves


def test_each_merged_task_is_scored_at_its_own_run_s_max_length(tiny_config, tmp_path):
    """A merge of runs trained at different max lengths scores each task at its own (the first run's, before, cut
    MRPC's and RTE's prompts to SST-2's length): here the merge is MRPC's vector alone, so it scores MRPC exactly as
    MRPC's own run does."""
    import json

    from fusekit.artifacts.merged_folder import input_max_length
    from fusekit.evaluation.eval import score_folders
    from fusekit.merging.config import MergeConfig
    from fusekit.merging.merge import run_merge

    short, long = tmp_path / "sst2", tmp_path / "mrpc"
    train(replace(tiny_config, task="sst2", epochs=1, max_train=16, max_length=8, out=str(short)))
    train(replace(tiny_config, task="mrpc", epochs=1, max_train=16, max_length=32, out=str(long)))
    run_merge(MergeConfig(lam=1.0, weights=[0.0, 1.0], device="cpu"), [short, long], tmp_path / "merged")
    manifest = json.loads((tmp_path / "merged/manifest.json").read_text())
    assert [item["max_length"] for item in manifest["inputs"]] == [8, 32]
    rows = {r["task"]: r for r in score_folders([tmp_path / "merged"], None, None, None, 16, "cpu", None)}
    own = json.loads((long / "eval.json").read_text())["mrpc"]
    assert rows["mrpc"]["loss"] == pytest.approx(own["loss"], abs=1e-6) and rows["mrpc"]["normalized"] == 1.0
    # merges written before inputs recorded their length: the run's config while its folder is there
    older = {"max_length": 8, "method": "task-arithmetic"}
    assert input_max_length(older, {"run": str(long), "task": "mrpc"}) == 32
    assert input_max_length(older, {"run": str(tmp_path / "gone"), "task": "mrpc"}) == 8
    assert input_max_length({**older, "method": "joint"}, {"run": str(long), "task": "mrpc"}) == 8  # one length


def test_a_vector_is_predicted_once_per_process_and_again_when_its_content_changes(sst2_run, monkeypatch):
    """A study's merges score the same vectors again (each adapter on its held-out examples, a calibrated or
    per-task merge its twin's grid): the scorer predicts each content once."""
    from fusekit.data.loading import load_split
    from fusekit.evaluation import eval as scoring

    calls = []
    real = scoring.predict
    monkeypatch.setattr(scoring, "predict", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    monkeypatch.setattr(scoring, "PREDICTED", {})
    run = load_run(sst2_run[0])
    split = load_split(get_task("sst2"), "validation", run.config.data)
    scorer = scoring.TaskScorer(run.config.model, 32, split, run.head, torch.device("cpu"))
    first = scorer.score(run.vector)
    logits, _ = scorer.outputs(run.vector)
    logits[:] = 0  # a caller's change stays its own
    again = scoring.TaskScorer(run.config.model, 32, split, run.head, torch.device("cpu")).score(load_run(sst2_run[0])
                                                                                                  .vector)
    assert len(calls) == 1 and again == first
    changed = load_run(sst2_run[0]).vector
    key = next(iter(changed.delta))
    changed.delta[key] = changed.delta[key] * 0.5
    scorer.score(changed)
    scoring.TaskScorer(run.config.model, 32, split, run.head, torch.device("cpu"), precision="bf16").score(run.vector)
    assert len(calls) == 3  # another vector; another precision


@pytest.mark.parametrize("method, grid", [("task-arithmetic", {}), ("dare", {"rates": [0.5]})])
def test_each_criterions_choice_is_scored_on_dev_as_a_merge_made_at_that_point(runs, tmp_path, method, grid):
    """For the report: the point another criterion prefers is rebuilt from the runs and scored on dev exactly as a
    merge made at that point (a seeded method with the seed it drew with); the merge's own criterion reads the
    folder's scores; nothing else is touched."""
    import json

    from fusekit.evaluation.eval import score_folders
    from fusekit.merging.config import MergeConfig
    from fusekit.merging.merge import run_merge
    from fusekit.study.criterion_choices import missing, record_choices

    folders = [runs[t].folder for t in ("sst2", "rte")]
    config = MergeConfig(method=method, lambdas=[0.5, 1.0, 2.0], val_examples=16, device="cpu", seed=3, **grid)
    run_merge(config, folders, tmp_path / "searched")
    score_folders([tmp_path / "searched"], None, None, None, 128, "cpu", None)
    assert missing(tmp_path / "searched")
    path = tmp_path / "searched" / "manifest.json"
    manifest = json.loads(path.read_text())
    chosen = manifest["params"]["lam"]
    other = next(row["lam"] for row in manifest["search"] if row["lam"] != chosen)
    for row in manifest["search"]:  # make `raw` prefer another point than the merge's own criterion
        row["criteria"]["raw"] = 1.0 if row["lam"] == other else 0.0
    path.write_text(json.dumps(manifest))
    vector_before = (tmp_path / "searched" / "task_vector.safetensors").read_bytes()
    record_choices(tmp_path / "searched", config)

    scores = json.loads((tmp_path / "searched" / "eval.json").read_text())
    choices = scores["criteria"]
    assert choices["normalized"]["point"]["lam"] == chosen and choices["raw"]["point"]["lam"] == other
    assert choices["normalized"]["scores"] == {t: scores[t]["score"] for t in ("sst2", "rte")}
    fixed = {"rate": grid["rates"][0]} if grid else {}
    run_merge(MergeConfig(method=method, lam=other, device="cpu", seed=3, **fixed), folders, tmp_path / "at-other")
    made = {r["task"]: r for r in score_folders([tmp_path / "at-other"], None, None, None, 128, "cpu", None)}
    assert choices["raw"]["scores"] == pytest.approx({t: made[t]["score"] for t in ("sst2", "rte")})
    assert choices["raw"]["average_normalized"] == pytest.approx(made["average"]["normalized"])
    normalized = [made[t]["normalized"] for t in ("sst2", "rte") if made[t]["normalized"] is not None]
    assert choices["raw"]["worst_normalized"] == pytest.approx(min(normalized))
    assert (tmp_path / "searched" / "task_vector.safetensors").read_bytes() == vector_before
    assert not missing(tmp_path / "searched")
