"""Adapters fusekit did not train: plain PEFT LoRA folders on a tiny causal LM (GPT-2), of different ranks, one with
rsLoRA, merged exactly in ΔW space and loaded back with plain peft."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from fusekit.errors import FusekitError
from tests.test_cli import assert_error_line, assert_one_line_error, invoke


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(folder)
    return folder


def make_adapter(base_dir, out, seed, **config):
    torch.manual_seed(seed)
    model = get_peft_model(GPT2LMHeadModel.from_pretrained(base_dir), LoraConfig(**config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B0 = 0 at init: give each adapter a change to merge
    model.save_pretrained(out)
    return out


def merged_weights(base_dir, adapter) -> dict[str, torch.Tensor]:
    model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base_dir), str(adapter))
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def adapters(base_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    one = make_adapter(base_dir, folder / "one", 1, r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                       rank_pattern={"h.1.attn.c_attn": 2}, alpha_pattern={"h.1.attn.c_attn": 3})
    two = make_adapter(base_dir, folder / "two", 2, r=8, lora_alpha=4, target_modules=["c_attn"], use_rslora=True)
    return one, two


def test_task_arithmetic_of_peft_adapters_is_exact_and_loads_in_plain_peft(base_dir, adapters, tmp_path):
    out = tmp_path / "merged"
    result = invoke("merge", *adapters, "--lambda", "0.7", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    base = GPT2LMHeadModel.from_pretrained(base_dir).state_dict()
    deltas = [{k: v - base[k] for k, v in merged_weights(base_dir, a).items()} for a in adapters]
    merged = merged_weights(base_dir, out)
    for key, value in base.items():
        expected = value + 0.7 * (deltas[0][key] + deltas[1][key])
        assert torch.allclose(merged[key], expected, atol=1e-5), key
    assert any(d.abs().max() > 0.1 for d in deltas[0].values())  # the adapters do change the weights
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir) and not config["use_rslora"]
    card = (out / "README.md").read_text()
    assert "base_model:" not in card and f"the local folder `{base_dir.name}`" in card  # the Hub takes ids only
    assert "task-arithmetic" in card and str(adapters[0]) in card
    summary = json.loads(result.stdout)
    assert summary["truncation_error"] == 0 and summary["rank"] == 12  # 4 + 8 where both adapt a layer


@pytest.mark.parametrize("targets", [
    (["q_proj", "v_proj"], ["q_proj", "k_proj", "up_proj", "down_proj"]),  # the first input adapts fewer layers
    (["q_proj"], "model.layers.1.self_attn.(k|v)_proj"),  # a regex: the merged layers are named one by one
    (["q_proj", "k_proj"], ["q_proj", "k_proj"]),  # the first adapts layer 0 only (layers_to_transform)
])
def test_a_merge_of_adapters_of_different_layers_keeps_every_layer(tiny_llama, tmp_path, targets):
    """Plain peft builds the merged folder's every layer: its ΔW equals the sum of the inputs' ΔW, layer by
    layer, where the config named only the first input's targets before."""
    from transformers import AutoModelForCausalLM

    extra = [{"layers_to_transform": [0]} if targets[0] == targets[1] else {}, {}]
    folders = []
    for i, (target, more) in enumerate(zip(targets, extra)):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                               LoraConfig(r=4, lora_alpha=8, target_modules=target, **more))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
        model.save_pretrained(tmp_path / f"in{i}")
        folders.append(tmp_path / f"in{i}")
    result = invoke("merge", *folders, "--lambda", "1.0", "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output

    def delta(folder):
        base = AutoModelForCausalLM.from_pretrained(tiny_llama)
        before = {k: v.clone() for k, v in base.state_dict().items()}
        merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload().state_dict()
        return {k: merged[k] - before[k] for k in before}

    inputs, merged = [delta(f) for f in folders], delta(tmp_path / "merged")
    changed = [k for k in merged if inputs[0][k].abs().max() > 0 or inputs[1][k].abs().max() > 0]
    assert len(changed) > len([k for k in changed if inputs[0][k].abs().max() > 0])  # the second adds layers
    for key in merged:
        assert torch.allclose(merged[key], inputs[0][key] + inputs[1][key], atol=1e-5), key


def test_ties_on_products_is_truncated_by_svd_and_still_loads(base_dir, adapters, tmp_path):
    out = tmp_path / "ties"
    result = invoke("merge", *adapters, "--method", "ties", "--lambda", "1.0", "--density", "0.5", "--rank", "2",
                    "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.stdout)["truncation_error"] < 1
    merged_weights(base_dir, out)  # plain peft loads it


@pytest.mark.parametrize("alpha", [float("nan"), "16", -4])
def test_a_scale_that_is_not_a_finite_positive_number_is_refused(adapters, tmp_path, alpha):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(adapters[1], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": alpha}))
    assert_one_line_error(invoke("merge", adapters[1], bad, "--lambda", "1", "--out", tmp_path / "m"),
                          "adapter_config.json lora_alpha is .*expected a finite number > 0")
    assert not (tmp_path / "m").exists()


def test_what_cannot_be_merged_exactly_is_refused(base_dir, adapters, tmp_path):
    dora = make_adapter(base_dir, tmp_path / "dora", 3, r=4, target_modules=["c_attn"], use_dora=True)
    assert_one_line_error(invoke("merge", adapters[0], dora, "--lambda", "1", "--out", tmp_path / "x"),
                          "DoRA .*cannot be merged exactly")
    assert_one_line_error(invoke("merge", *adapters, "--search", "--out", tmp_path / "x"),
                          "need fusekit runs")
    assert_one_line_error(invoke("merge", *adapters, "--lambda", "1", "--calibrate", "--out", tmp_path / "x"),
                          "--calibrate and data-aware methods .* need fusekit runs")
    assert_one_line_error(invoke("merge", *adapters, "--space", "factors", "--out", tmp_path / "x"),
                          "only in ΔW space")
    head = make_adapter(base_dir, tmp_path / "head", 4, r=4, target_modules=["c_attn"], modules_to_save=["lm_head"])
    head2 = make_adapter(base_dir, tmp_path / "head2", 5, r=4, target_modules=["c_attn"], modules_to_save=["lm_head"])
    assert_one_line_error(invoke("merge", head, head2, "--lambda", "1", "--out", tmp_path / "x"),
                          "modules_to_save .*--shared-modules average or first")
    result = invoke("merge", head, head2, "--lambda", "1", "--shared-modules", "average", "--out", tmp_path / "y")
    assert result.exit_code == 0, result.output
    assert_one_line_error(invoke("merge", adapters[0], head, "--lambda", "1", "--shared-modules", "first", "--out",
                                 tmp_path / "w"), "first adapter's modules_to_save, and it has no .*lm_head")
    assert invoke("merge", head, adapters[0], "--lambda", "1", "--shared-modules", "first", "--out",
                  tmp_path / "w").exit_code == 0
    assert_one_line_error(invoke("merge", tmp_path / "missing", "--lambda", "1", "--out", tmp_path / "z"),
                          "missing is not a folder \\(expected a run folder, a PEFT adapter folder or a Hub id")


def test_bases_of_one_name_are_compared_by_their_weights(base_dir, tmp_path):
    """Two local bases called alike are one base only if the adapted layers' weights agree."""
    import shutil

    twin, other = tmp_path / "a" / base_dir.name, tmp_path / "b" / base_dir.name
    shutil.copytree(base_dir, twin)
    torch.manual_seed(7)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(other)
    first = make_adapter(base_dir, tmp_path / "first", 1, r=4, target_modules=["c_attn"])
    for base, folder in ((twin, "same"), (other, "differs")):
        make_adapter(base, tmp_path / folder, 2, r=4, target_modules=["c_attn"])
    assert invoke("merge", first, tmp_path / "same", "--lambda", "1", "--out", tmp_path / "m1").exit_code == 0
    assert_one_line_error(invoke("merge", first, tmp_path / "differs", "--lambda", "1", "--out", tmp_path / "m2"),
                          "name bases of one name whose weights differ")


def test_the_python_api_merges_as_the_cli_does(base_dir, adapters, tmp_path):
    import fusekit

    summary = fusekit.merge([str(a) for a in adapters], out=tmp_path / "api", lam=0.7)
    with pytest.raises(FusekitError, match=r"api is a plain PEFT adapter .*PeftModel\.from_pretrained"):
        fusekit.load_adapter(tmp_path / "api")
    cli = tmp_path / "cli"
    assert invoke("merge", *adapters, "--lambda", "0.7", "--out", cli).exit_code == 0
    api_weights, cli_weights = merged_weights(base_dir, tmp_path / "api"), merged_weights(base_dir, cli)
    assert all(torch.equal(api_weights[k], cli_weights[k]) for k in api_weights)
    assert summary["method"] == "task-arithmetic" and summary["params"] == {"lam": 0.7}
    with pytest.raises(fusekit.errors.FusekitError, match="unknown key 'densty'"):
        fusekit.merge([str(a) for a in adapters], out=tmp_path / "x", densty=0.3)


def test_fusekit_runs_name_a_portable_base_and_load_by_string_path(sst2_run):
    import fusekit

    config = json.loads((sst2_run[0] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-bert0"  # the folder's name, not this machine's path
    vector = fusekit.TaskVector.load(str(sst2_run[0] / "task_vector.safetensors"))  # a str path works
    assert vector.tasks == ["sst2"]


def test_a_merged_causal_lm_adapter_is_scored_on_prompts(base_dir, adapters, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(100)} | {"[UNK]": 0}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()  # a word-level tokenizer for the tiny model: wN → id N
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(base_dir)
    out = tmp_path / "merged"
    assert invoke("merge", *adapters, "--lambda", "0.5", "--out", out).exit_code == 0
    prompts = tmp_path / "task.jsonl"
    prompts.write_text('{"prompt": "w1 w2 w3", "answer": " w4 w5"}\n{"prompt": "w7 w8", "answer": " w9"}\n')
    result = invoke("eval-lm", out, "--prompts", prompts, "--base", base_dir, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base_dir), str(out)).eval()
    total = 0.0
    with torch.no_grad():
        for ids, answer in (([1, 2, 3, 4, 5], [4, 5]), ([7, 8, 9], [9])):
            logits = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            total += sum(float(logits[len(ids) - len(answer) - 1 + j, a]) for j, a in enumerate(answer))
    assert scored["loglik_per_token"] == pytest.approx(total / 3, rel=1e-5)  # by hand: 3 answer tokens
    result = invoke("eval-lm", out, "--prompts", prompts, "--base", base_dir, "--metric", "exact", "--device",
                    "cpu", "--json")
    assert result.exit_code == 0 and 0 <= json.loads(result.stdout)["exact_match"] <= 1
    prompts.write_text('{"prompt": "w1"}\n')
    assert_one_line_error(invoke("eval-lm", out, "--prompts", prompts, "--base", base_dir),
                          "task.jsonl:1: expected")
    prompts.write_text('{"prompt": "w1 w2 w3", "answer": " w4"}\n{"prompt": "w7", "answ')  # a last line cut short
    assert_one_line_error(invoke("eval-lm", out, "--prompts", prompts, "--base", base_dir),
                          "task.jsonl:2 is not a JSON record")
    prompts.write_text('{"prompt": "", "answer": " w4"}\n')
    assert_one_line_error(invoke("eval-lm", out, "--prompts", prompts, "--base", base_dir),
                          "task.jsonl:1: expected .*non-empty text")
    prompts.write_text(json.dumps({"prompt": " ".join(["w1"] * 70), "answer": " w4"}) + "\n")  # 64 positions
    assert_error_line(invoke("eval-lm", out, "--prompts", prompts, "--base", base_dir, "--device", "cpu"),
                      "task.jsonl:1: prompt and answer are 71 tokens, more than the model's 64 positions")


def test_push_to_hub_uploads_the_folder_or_fails_in_one_line(adapters, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo, private=False, exist_ok=False):
            calls.append(("create", repo))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    result = invoke("merge", *adapters, "--lambda", "1", "--out", tmp_path / "m", "--push-to-hub", "me/merged",
                    "--json")
    assert result.exit_code == 0, result.output
    assert calls[0] == ("create", "me/merged") and "README.md" in calls[1][2] and "adapter_config.json" in calls[1][2]
    assert json.loads(result.stdout)["hub"] == "https://hub/me/merged/commit/1"

    class OfflineApi:
        def create_repo(self, *args, **kwargs):
            raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    result = invoke("merge", *adapters, "--lambda", "1", "--out", tmp_path / "n", "--push-to-hub", "me/merged")
    assert result.exit_code == 1 and "could not push" in result.stderr.splitlines()[-1]
    assert (tmp_path / "n" / "adapter_model.safetensors").is_file()  # the merge itself is kept


def test_encoder_adapters_made_by_plain_peft_merge_exactly_with_or_without_heads(tiny_model, tmp_path):
    """An encoder (tiny BERT): feature-extraction adapters merge exactly; SEQ_CLS adapters carry their classifier as
    modules_to_save, which merge only when the user says how (here: the first input's head)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    def make(cls, out, seed, **config):
        torch.manual_seed(seed)
        model = get_peft_model(cls.from_pretrained(tiny_model), LoraConfig(r=4, lora_alpha=8, **config))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
        model.save_pretrained(out)
        return out

    def weights(cls, adapter):
        torch.manual_seed(0)  # the classifier of a SEQ_CLS base is drawn fresh: the same draw for every load
        model = PeftModel.from_pretrained(cls.from_pretrained(tiny_model), str(adapter))
        return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}

    for cls, extra in ((AutoModel, {}), (AutoModelForSequenceClassification, {"task_type": "SEQ_CLS"})):
        inputs = [make(cls, tmp_path / f"{cls.__name__}-{i}", i, target_modules=["query", "value"], **extra)
                  for i in (1, 2)]
        out = tmp_path / f"{cls.__name__}-merged"
        flags = ["--shared-modules", "first"] if extra else []
        result = invoke("merge", *inputs, "--lambda", "0.5", *flags, "--out", out)
        assert result.exit_code == 0, result.output
        torch.manual_seed(0)
        base = cls.from_pretrained(tiny_model).state_dict()
        adapted = [weights(cls, a) for a in inputs]
        merged = weights(cls, out)
        for key, value in base.items():
            if "classifier" in key:  # the first input's trained head, not a sum
                assert torch.equal(merged[key], adapted[0][key]), key
                continue
            expected = value + 0.5 * ((adapted[0][key] - value) + (adapted[1][key] - value))
            assert torch.allclose(merged[key], expected, atol=1e-5), key
        assert any((adapted[0][k] - v).abs().max() > 0.1 for k, v in base.items() if "query" in k)
