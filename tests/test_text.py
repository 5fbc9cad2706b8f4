"""The text objective on generative models (tiny random Llama and T5): prompts and verbalizers, the answer-token
loss by hand, left padding, plain-peft parity of the exported adapter, L-LoRA against finite differences, a merge
of two text adapters and a joint CoBa run."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from fusekit.artifacts.run_folder import build_adapted_model, load_run
from fusekit.artifacts.task_vector import TaskVector
from fusekit.config import JointConfig, TrainConfig
from fusekit.data.loading import Split, load_split, make_loader
from fusekit.data.tasks import get_task
from fusekit.data.text import TextSplit, answer_scores, text_loss, verbalizer
from fusekit.errors import FusekitError
from fusekit.evaluation.loop import task_loss
from fusekit.models.adapters import AdapterSpec, add_lora
from fusekit.models.base import load_base_model
from fusekit.training.train import train

SST2, STSB, RTE = get_task("sst2"), get_task("stsb"), get_task("rte")


@pytest.fixture(scope="module")
def text_config(tiny_llama, glue_dir) -> TrainConfig:
    return TrainConfig(model=str(tiny_llama), data=str(glue_dir), rank=4, alpha=8.0, lr=2e-2, epochs=4, batch_size=8,
                       max_length=64, device="cpu")


@pytest.fixture(scope="module")
def text_runs(text_config, tmp_path_factory) -> dict[str, object]:
    """SST-2 and RTE LoRA adapters trained as text on the tiny Llama, shared by the tests that read them."""
    root = tmp_path_factory.mktemp("text-runs")
    return {task: (root / task, train(replace(text_config, task=task, out=str(root / task))))
            for task in ("sst2", "rte")}


class CharTokenizer:
    """Each character one token (SmolLM2 likewise writes ` 3` as a space, then the digit)."""

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(map(chr, ids))

    pad_token_id = 0


def test_answers_sharing_a_first_token_are_decided_at_the_first_that_differs():
    shared, choices = verbalizer(STSB, CharTokenizer())
    assert shared == [ord(" ")] and choices == [ord(str(d)) for d in range(6)]
    split = Split(STSB, [("a b", "c")], [3.4])
    data = TextSplit(split, CharTokenizer(), 200)
    assert CharTokenizer().decode(data.features[0]["input_ids"]).endswith("Answer: ")
    with pytest.raises(FusekitError, match="do not differ"):
        verbalizer(replace(SST2, answers=(" yes", " yes")), CharTokenizer())


def test_a_long_example_loses_sentence_tokens_not_the_question(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    long = " ".join(["movie"] * 300)
    data = TextSplit(Split(RTE, [(long, "the plot")], [0]), tokenizer, 40)
    text = tokenizer.decode(data.features[0]["input_ids"])
    assert len(data.features[0]["input_ids"]) <= 40 and text.endswith("Answer :") and "the plot" in text
    with pytest.raises(FusekitError, match="max_length"):
        TextSplit(Split(RTE, [(long, "x")], [0]), tokenizer, 8)


def test_answer_scores_and_text_loss_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, -1.0]])
    log_p = logits.log_softmax(-1)
    batch = {"choice_ids": torch.tensor([[3, 1], [3, 1]]), "labels": torch.tensor([1, 0])}
    scores = answer_scores(logits, batch)
    assert torch.allclose(scores, log_p[:, [3, 1]])
    # the cross-entropy of the answer token over the whole vocabulary, not the two-way softmax
    expected = -(log_p[0, 1] + log_p[1, 3]) / 2
    assert math.isclose(float(task_loss(SST2, scores, batch, text=True)), float(expected), rel_tol=1e-6)
    # regression: 3.4 sits between the answers 3 and 4, so the target is 0.6 on 3 and 0.4 on 4
    values = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    batch = {"choice_ids": torch.tensor([[0, 1, 2, 3, 4, 5]]), "choice_values": values, "labels": torch.tensor([3.4])}
    logits = torch.tensor([[0.1, -0.2, 0.3, 1.5, 0.9, -1.0, 2.0]])
    log_p = logits.log_softmax(-1)
    scores = answer_scores(logits, batch)
    renormalized = log_p[0, :6].softmax(-1)
    assert math.isclose(float(scores[0, 0]), float((renormalized * values[0]).sum()), rel_tol=1e-6)
    loss = text_loss(scores, batch["labels"], values)
    assert math.isclose(float(loss), float(-(0.6 * log_p[0, 3] + 0.4 * log_p[0, 4])), rel_tol=1e-5)


def assert_padding_changes_no_score(model_folder, task) -> None:
    """A batch of prompts of different lengths scores each row as that prompt alone."""
    base = load_base_model(str(model_folder), task)
    model = add_lora(base, AdapterSpec(lora_init="nonzero")).eval()
    texts = [("the movie was good",) * 2, ("bad",) * 2, ("a very dull and tedious film , not fun at all",) * 2]
    data = base.encode(Split(task, [t[: len(task.text_columns)] for t in texts], [1, 0, 0]), 64)
    batch = data.collate([data[i] for i in range(3)])
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        together, alone = model(batch), torch.cat([model(data.collate([data[i]])) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("task", [SST2, STSB])
def test_left_padding_changes_no_score(tiny_llama, task):
    assert_padding_changes_no_score(tiny_llama, task)


def test_the_answer_position_is_projected_onto_the_vocabulary_in_one_matrix_product(tiny_llama):
    """The kept last position is a strided view; projected as it is, torch runs one matrix-vector product per
    example over the whole embedding matrix (a batched matmul), not one product for the batch."""
    from torch.profiler import ProfilerActivity, profile

    base = load_base_model(str(tiny_llama), SST2, objective="text")
    model = add_lora(base, AdapterSpec(rank=4, alpha=8.0)).eval()
    data = base.encode(Split(SST2, [("good film",), ("a bad , bad film",)] * 4, [1, 0] * 4), 32)
    batch = data.collate([data[i] for i in range(len(data))])
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(batch)
    vocabulary = base.model.config.vocab_size
    products = [e.input_shapes for e in prof.events() if e.name in ("aten::mm", "aten::bmm")
                and any(vocabulary in shape for shape in e.input_shapes)]
    assert products and all(len(shape) == 2 for shapes in products for shape in shapes)


def test_text_runs_learn_and_hold_no_head(text_runs):
    from fusekit.evaluation.eval import score_folders

    for folder, result in text_runs.values():
        run = load_run(folder)
        assert run.head.weights == {} and run.head.spec.objective == "text"
        assert result.metrics["accuracy"] >= 0.8, result.metrics  # the tiny data's word-sentiment signal
    # no head ties a text adapter to its task: the SST-2 adapter answers RTE's prompt too (zero-shot transfer)
    rows = score_folders([text_runs["sst2"][0]], "rte,sst2", None, None, 16, "cpu", None)
    assert [r["task"] for r in rows] == ["rte", "sst2"]


def plain_peft_scores(adapter, model_folder, task, split) -> torch.Tensor:
    """What a user of the adapter would write: transformers + peft, the task's prompt, the answer words'
    log-probabilities at the last position, one example at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_folder), str(adapter)).eval()
    words = [tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in task.answers]
    rows = []
    with torch.no_grad():
        for texts in split.texts:
            ids = tokenizer(task.prompt.format(*texts), return_tensors="pt")["input_ids"]
            rows.append(plain(input_ids=ids).logits[0, -1].log_softmax(-1)[words])
    return torch.stack(rows)


def test_the_peft_folder_gives_fusekit_s_predictions_in_plain_peft(text_runs, tiny_llama, glue_dir):
    from fusekit.artifacts.run_folder import model_for_run

    folder, _ = text_runs["sst2"]
    split = load_split(SST2, "validation", str(glue_dir))
    base, model = model_for_run(load_run(folder), SST2)
    data = base.encode(split, 64)
    with torch.no_grad():
        ours = model.eval()(data.collate([data[i] for i in range(len(split))]))
    assert torch.allclose(plain_peft_scores(folder, tiny_llama, SST2, split), ours, atol=1e-4)


def l_lora_pair(tiny_llama, scope: str):
    """An L-LoRA model of `scope` and the plain LoRA model at the same φ0 and base, in float64."""
    spec = AdapterSpec("l-lora", 4, 8.0, linearize=scope, lora_init="nonzero")
    linear = build_adapted_model(load_base_model(str(tiny_llama), SST2), spec).double().eval()
    plain = build_adapted_model(load_base_model(str(tiny_llama), SST2), replace(spec, kind="lora", linearize=None))
    return linear, plain.double().eval()


def random_step(model, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator, dtype=torch.float64) for k, v in model.init_state().items()}


def test_network_l_lora_on_llama_is_the_first_order_expansion(tiny_llama, glue_dir):
    """f_lin(φ0 + s·t) − f(φ0) = s·J t, J t by central finite differences of the plain model, and a gap to the
    plain model that shrinks as O(s²)."""
    linear, plain = l_lora_pair(tiny_llama, "network")
    data = load_base_model(str(tiny_llama), SST2).encode(load_split(SST2, "validation", str(glue_dir)), 64)
    batch = next(iter(make_loader(data, 4, shuffle=False)))
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "choice_ids")}
    step = random_step(linear)

    def output(model, scale):
        model.load_adapter_state({k: v + scale * step[k] for k, v in model.init_state().items()})
        with torch.no_grad():
            return model.network(inputs)

    # Llama's rotary tables stay float32 in a float64 model, so a difference quotient carries ~1e-7 / h of
    # rounding; at h = 1e-3 that and the O(h²) remainder stay under 6e-4 on outputs up to 3.5 (a tangent lost in
    # one layer moves them by 1e-2 or more)
    h = 1e-3
    derivative = (output(plain, h) - output(plain, -h)) / (2 * h)
    f0 = output(plain, 0.0)
    assert derivative.abs().max() > 1.0
    for scale in (0.5, 1.0):
        assert torch.allclose(output(linear, scale) - f0, scale * derivative, atol=2e-3)
    gaps = [float((output(linear, e) - output(plain, e)).abs().max()) for e in (0.02, 0.01)]
    assert gaps[0] > 1e-5 and 3.0 < gaps[0] / gaps[1] < 5.0


def test_network_l_lora_on_llama_trains_the_same_both_ways(tiny_llama, glue_dir):
    """In training, the lean backward (plain backward at φ0, a fused attention kernel: Llama drops no attention
    weights) gives the value and gradients of differentiating through the jvp."""
    linear, _ = l_lora_pair(tiny_llama, "network")
    data = load_base_model(str(tiny_llama), SST2).encode(load_split(SST2, "validation", str(glue_dir)), 64)
    batch = next(iter(make_loader(data, 4, shuffle=False)))
    step = random_step(linear)
    linear.load_adapter_state({k: v + step[k] for k, v in linear.init_state().items()})
    linear.train()
    assert not linear._attention_dropout()
    results = []
    for backward in ("lean", "jvp"):
        linear.network_backward = backward
        linear.zero_grad()
        scores = linear(batch)
        scores[:, 0].sum().backward()
        results.append((scores.detach(), {k: p.grad.clone() for k, p in linear.adapter_params.items()}))
    (lean, lean_grads), (through, through_grads) = results
    assert torch.allclose(lean, through, atol=1e-6)
    assert all(torch.allclose(lean_grads[k], through_grads[k], atol=1e-6) for k in lean_grads)
    assert max(float(g.abs().max()) for g in lean_grads.values()) > 1e-3


def test_module_l_lora_on_llama_expands_each_layer(tiny_llama):
    """Every q/v projection of the module scope is its own first-order expansion in (A, B): against central
    finite differences of the plain layer, on a random input."""
    from torch.func import functional_call

    from fusekit.models.adapters import lora_layers

    linear, plain = l_lora_pair(tiny_llama, "module")
    step = random_step(linear)
    linear.load_adapter_state({k: v + step[k] for k, v in linear.init_state().items()})
    plain_layers = lora_layers(plain.peft_model)
    assert linear.linearized_layers == list(plain_layers) and len(plain_layers) == 4
    x = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    h = 1e-4
    for name, layer in lora_layers(linear.peft_model).items():
        keys = [k for k, n in plain.param_names.items() if n.rsplit(".lora_", 1)[0] == name]
        local = [plain.param_names[k][len(name) + 1:] for k in keys]

        def at(scale):
            params = {n: plain.init_tensor(k) + scale * step[k] for n, k in zip(local, keys)}
            return functional_call(plain_layers[name], params, (x,))

        with torch.no_grad():
            assert torch.allclose(layer(x) - at(0.0), (at(h) - at(-h)) / (2 * h), atol=1e-7), name


def test_the_words_of_adapters_made_before_words_were_recorded_are_still_the_words_fusekit_asks():
    """Text adapters and published results from before fusekit recorded each task's prompt and answer words carry
    none, and are read as made in the words fusekit has asked since it first asked in text (2026-12-02). Changing a
    task's words breaks that: first make a missing record an error (check_verbalizers, check_verbalizers_published),
    then update this fingerprint."""
    import hashlib

    from fusekit.data.tasks import TASKS

    words = {name: task.verbalizer_record() for name, task in sorted(TASKS.items())}
    fingerprint = hashlib.sha256(json.dumps(words, sort_keys=True).encode()).hexdigest()
    assert fingerprint == "f7d8ce2ceffb923403ce3c7f081e38ed1ea3e7c494a5925453141945edf9e85d"


def test_an_adapter_trained_on_other_words_is_refused_not_misread(text_runs, tmp_path, monkeypatch):
    from fusekit.artifacts.merged_folder import load_merged
    from fusekit.data import tasks
    from fusekit.merging.config import MergeConfig
    from fusekit.merging.merge import run_merge

    folder = text_runs["rte"][0]
    assert load_run(folder).vector.meta["verbalizers"] == {"rte": RTE.verbalizer_record()}
    merged = tmp_path / "merged"
    run_merge(MergeConfig(lam=0.5, device="cpu"), [text_runs["sst2"][0], folder], merged)
    monkeypatch.setitem(tasks.TASKS, "rte", replace(RTE, answers=(" true", " false")))
    with pytest.raises(FusekitError, match=r"rte adapter was trained with answers \[' yes', ' no'\]; fusekit now "
                                           r"asks rte .* answered by \[' true', ' false'\]: train it again"):
        load_run(folder)
    with pytest.raises(FusekitError, match="rte adapter was trained with"):
        load_merged(merged)


def test_two_text_adapters_merge_into_one_model_for_both(text_runs, tiny_llama, glue_dir, tmp_path):
    from fusekit.artifacts.merged_folder import load_merged
    from fusekit.artifacts.run_folder import model_for_vector
    from fusekit.evaluation.eval import score_folders
    from fusekit.merging.config import MergeConfig
    from fusekit.merging.merge import run_merge

    out = tmp_path / "merged"
    run_merge(MergeConfig(lambdas=[0.5, 1.0], val_examples=8, device="cpu", select_on_seen=True),
              [text_runs["sst2"][0], text_runs["rte"][0]], out)  # λ chosen on held-out examples
    rows = {r["task"]: r for r in score_folders([out], None, None, None, 16, "cpu", None)}
    assert set(rows) == {"sst2", "rte", "average"} and rows["sst2"]["accuracy"] > 0.55
    manifest, vector, heads = load_merged(out)
    assert all(head.weights == {} for head in heads.values())  # no head: the merge is the whole model
    for task in (SST2, RTE):  # each task's PEFT folder is that model, in plain peft
        split = load_split(task, "validation", str(glue_dir)).capped(6, 0)
        base, model = model_for_vector(str(tiny_llama), vector, heads[task.name], task, str(out))
        data = base.encode(split, 64)
        with torch.no_grad():
            ours = model.eval()(data.collate([data[i] for i in range(len(split))]))
        assert torch.allclose(plain_peft_scores(out / "peft" / task.name, tiny_llama, task, split), ours, atol=1e-4)


def test_a_calibrated_text_merge_answers_with_offsets_fitted_on_held_out_examples(text_runs, glue_dir, tmp_path):
    """--calibrate: one offset per answer in the manifest for each task that scores better calibrated on its held-out
    examples, fitted on them; eval reads each task's answers after adding them, and keeps the plain score."""
    from fusekit.artifacts.run_folder import load_run
    from fusekit.evaluation.calibration import apply_offsets, held_out_calibration
    from fusekit.evaluation.eval import TaskScorer, score_folders
    from fusekit.evaluation.metrics import compute_metrics, predictions
    from fusekit.merging.config import MergeConfig
    from fusekit.merging.merge import run_merge
    from fusekit.merging.methods import make_method
    from fusekit.merging.search import held_out_split
    from fusekit.merging.stream import merge_vectors

    folders = [text_runs["sst2"][0], text_runs["rte"][0]]
    run_merge(MergeConfig(lam=0.7, val_examples=32, device="cpu", select_on_seen=True), folders, tmp_path / "plain")
    run_merge(MergeConfig(lam=0.7, val_examples=32, device="cpu", select_on_seen=True, calibrate=True), folders,
              tmp_path / "calibrated")
    manifest = json.loads((tmp_path / "calibrated/manifest.json").read_text())
    assert manifest["calibration"]  # on these runs calibrating helps somewhere (both tasks, when this was written)
    plain = {r["task"]: r for r in score_folders([tmp_path / "plain"], None, None, None, 16, "cpu", None)}
    rows = {r["task"]: r for r in score_folders([tmp_path / "calibrated"], None, None, None, 16, "cpu", None)}
    vector = TaskVector.load(tmp_path / "calibrated/task_vector.safetensors")
    for folder, task in zip(folders, (SST2, RTE)):
        run = load_run(folder)
        held_out = TaskScorer(run.config.model, 64, held_out_split(run, 32, 0), run.head, torch.device("cpu"))
        offsets = held_out_calibration(task, *held_out.outputs(vector))[1]
        assert manifest["calibration"].get(task.name) == (None if offsets is None else pytest.approx(offsets))
        dev = TaskScorer(run.config.model, 64, load_split(task, "validation", str(glue_dir)), run.head,
                         torch.device("cpu"))
        logits, labels = dev.outputs(vector)
        calibrated = logits if offsets is None else apply_offsets(task, logits, offsets)
        assert rows[task.name]["score"] == pytest.approx(compute_metrics(task, labels, predictions(task, calibrated))
                                                         ["score"])
        assert rows[task.name].get("uncalibrated_score", rows[task.name]["score"]) == pytest.approx(
            plain[task.name]["score"])
    searched = tmp_path / "searched"  # a calibrated search scores each λ with its answers calibrated out of fold
    run_merge(MergeConfig(lambdas=[0.5, 1.0], val_examples=32, device="cpu", select_on_seen=True, calibrate=True),
              folders, searched)
    row = json.loads((searched / "manifest.json").read_text())["search"][1]
    runs = [load_run(folder) for folder in folders]
    merged, _ = merge_vectors(runs, make_method("task-arithmetic", lam=1.0), space="delta-w")
    gains = []
    for run, task in zip(runs, (SST2, RTE)):
        held_out = TaskScorer(run.config.model, 64, held_out_split(run, 32, 0), run.head, torch.device("cpu"))
        logits, labels = held_out.outputs(merged)
        calibrated = compute_metrics(task, labels, predictions(task, held_out_calibration(task, logits, labels)[0]))
        gains.append(calibrated["score"] - compute_metrics(task, labels, predictions(task, logits))["score"])
        assert row["lam"] == 1.0 and row[task.name] == pytest.approx(calibrated["score"])
    assert min(gains) >= 0 and max(gains) > 0
    chosen = json.loads((searched / "manifest.json").read_text())  # offsets the search fitted at its choice
    final = TaskVector.load(searched / "task_vector.safetensors")  # are those of the merged vector it wrote
    for run, task in zip(runs, (SST2, RTE)):
        held_out = TaskScorer(run.config.model, 64, held_out_split(run, 32, 0), run.head, torch.device("cpu"))
        offsets = held_out_calibration(task, *held_out.outputs(final))[1]
        assert chosen["calibration"].get(task.name) == (None if offsets is None else pytest.approx(offsets))
    from fusekit.artifacts.checksums import reseal

    manifest = json.loads((searched / "manifest.json").read_text())
    task = next(iter(manifest["calibration"]))
    for bad in ([0.0], {"sst2": [0.0, 1.0], "cola": [0.0, 1.0]}):  # one answer short; a task the merge lacks
        calibration = {**manifest["calibration"], task: bad} if isinstance(bad, list) else bad
        (searched / "manifest.json").write_text(json.dumps({**manifest, "calibration": calibration}))
        reseal(searched, "manifest.json")
        with pytest.raises(FusekitError, match="manifest.json: calibration"):
            score_folders([searched], None, None, None, 16, "cpu", None)


@pytest.mark.parametrize(("method", "space"), [("ties", "delta-w"), ("dare", "factors"), ("regmean", "delta-w"),
                                             ("fisher", "factors"), ("adamerging", "factors"), ("tsv-m", "delta-w"),
                                             ("knots-ties", "delta-w")])
def test_every_merge_method_fuses_text_adapters(text_runs, tmp_path, method, space, monkeypatch):
    """Data-aware merges read prompt tokens (RegMean's Gram matrices), the answer token's likelihood (Fisher) and
    the answer words' distribution (AdaMerging's entropy)."""
    from fusekit.merging import statistics
    from fusekit.merging.config import MergeConfig
    from fusekit.merging.merge import run_merge

    monkeypatch.setattr(statistics, "ADA_STEPS", 3)
    out = tmp_path / method
    run_merge(MergeConfig(method=method, lam=0.5, space=space, val_examples=8, device="cpu", select_on_seen=True),
              [text_runs["sst2"][0], text_runs["rte"][0]], out)
    vector = TaskVector.load(out / "task_vector.safetensors")
    assert vector.norm() > 0 and all(torch.isfinite(v).all() for v in vector.delta.values())


def test_disentanglement_of_two_text_adapters(text_runs, tmp_path):
    from fusekit.study.disentangle import disentangle_folders

    rows = disentangle_folders([text_runs["sst2"][0], text_runs["rte"][0]], tmp_path / "d", [0.0, 1.0], 8,
                               "factors", "cpu", 0, None, False)
    assert len(rows) == 1 and (tmp_path / "d").is_dir()


def test_a_joint_coba_run_balances_text_losses(tiny_llama, glue_dir, tmp_path):
    from fusekit.training.joint import train_joint

    cfg = JointConfig(model=str(tiny_llama), data=str(glue_dir), tasks="sst2,stsb", balancer="coba", rank=4,
                      alpha=8.0, lr=2e-2, epochs=2, batch_size=8, max_length=64, device="cpu", max_train=48,
                      validation_examples=16, coba_interval=1, coba_warmup=2, coba_window=3, out=str(tmp_path / "j"))
    results = train_joint(cfg)
    assert set(results) == {"sst2", "stsb"} and all(math.isfinite(m["score"]) for m in results.values())


def test_zero_shot_prompting_is_the_text_baseline(tiny_llama, glue_dir, tmp_path):
    from fusekit.evaluation.baselines import run_baselines

    cfg = TrainConfig(task="rte", model=str(tiny_llama), data=str(glue_dir), max_length=64, device="cpu")
    result = run_baselines(cfg, tmp_path / "b.json")
    assert result["head_only"] is None and 0.0 <= result["zero_shot"]["accuracy"] <= 1.0
    assert result["head"]["objective"] == "text"


def test_an_encoder_cannot_be_asked_in_text(tiny_model):
    with pytest.raises(FusekitError, match="generative"):
        load_base_model(str(tiny_model), SST2, objective="text")


def make_tiny_gpt2(folder):
    """GPT-2: absolute positions (left padding must not shift them), Conv1D layers, no pad token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import make_text_tokenizer

    folder.mkdir(parents=True)
    tokenizer = make_text_tokenizer(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tokenizer), n_positions=128,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)) \
        .save_pretrained(folder)
    return folder


@pytest.mark.parametrize("architecture", ["t5", "gpt2"])
def test_other_generative_architectures_write_their_answers_too(tmp_path, glue_dir, architecture):
    from tests.conftest import make_tiny_t5

    model = make_tiny_t5(tmp_path / "m") if architecture == "t5" else make_tiny_gpt2(tmp_path / "m")
    if architecture == "gpt2":  # absolute positions: the position ids must count real tokens only
        assert_padding_changes_no_score(model, SST2)
    cfg = TrainConfig(task="sst2", model=str(model), data=str(glue_dir), rank=4, alpha=8.0, lr=2e-2, epochs=4,
                      batch_size=8, max_length=64, device="cpu", out=str(tmp_path / "run"))
    result = train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-6:]) < sum(losses[:6])  # the answer-token loss falls (tiny GPT-2 learns the words slowly)
    assert result.metrics["accuracy"] >= (0.7 if architecture == "t5" else 0.0)
    assert load_run(tmp_path / "run").head.spec.objective == "text"
