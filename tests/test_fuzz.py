"""Fuzzing the command line, data files and recipes (hypothesis, derandomized so CI is repeatable).

Whatever the input, fusekit either succeeds or exits 1 with exactly one `error:` line, never a traceback, and
never changes a file it was given as input.
"""

import math
import os
import shutil
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import tree_hash

# CI runs 30 derandomized examples per test; FUSEKIT_FUZZ_EXAMPLES=500 (and random seeds) for a deeper local hunt
EXAMPLES = int(os.environ.get("FUSEKIT_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 30,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
runner = CliRunner()


def assert_clean_outcome(result, after_progress: bool = False) -> None:
    """Success, or one `error:` line and exit code 1 (`after_progress`: the last line, after the progress of work
    done before the input's fault could be seen); never a traceback."""
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    if result.exit_code == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and (after_progress or len(lines) == 1), result.stderr


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda x: "nan" if math.isnan(x) else repr(x)),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.sampled_from(["", "0", "-0", "1e309", "0x10", "1,2", " ", "１"]),
    st.text(max_size=12),
)

TRAIN_OPTIONS = ["--rank", "--alpha", "--dropout", "--lr", "--head-lr", "--weight-decay", "--warmup-ratio",
                 "--max-grad-norm", "--epochs", "--batch-size", "--max-length", "--max-train", "--max-eval",
                 "--seed", "--init-seed", "--checkpoint-every", "--held-out-examples", "--eval-batch-size",
                 "--task", "--adapter", "--pooling", "--pair-encoding", "--lora-init", "--linearize", "--eval-on",
                 "--device", "--target-modules"]


@pytest.fixture(scope="module")
def second_run(tiny_config, tmp_path_factory):
    from fusekit.training.train import train

    out = tmp_path_factory.mktemp("fuzz-runs") / "rte-lora"
    train(replace(tiny_config, task="rte", epochs=1, max_train=16, out=str(out)))
    return out


@FUZZ
@given(option=st.sampled_from(TRAIN_OPTIONS), value=numbers)
def test_train_options(tiny_model, glue_dir, tmp_path, option, value):
    before = tree_hash(tiny_model, glue_dir)
    out = tmp_path / "fuzz-train"
    shutil.rmtree(out, ignore_errors=True)
    result = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(glue_dir), "--task", "rte",
                                 "--device", "cpu", "--max-train", "8", "--max-eval", "8", "--epochs", "1",
                                 "--max-length", "16", "--rank", "2", "--out", str(out), option, value])
    assert_clean_outcome(result)
    assert tree_hash(tiny_model, glue_dir) == before


MERGE_OPTIONS = ["--lambda", "--weights", "--density", "--drop-rate", "--rank", "--val-examples", "--method",
                 "--space", "--seed", "--lambdas", "--densities"]


@FUZZ
@given(option=st.sampled_from(MERGE_OPTIONS), value=numbers)
def test_merge_options(sst2_run, second_run, tmp_path, option, value):
    runs = [sst2_run[0], second_run]
    before = tree_hash(*runs)
    out = tmp_path / "fuzz-merge"
    shutil.rmtree(out, ignore_errors=True)
    result = runner.invoke(app, ["merge", *map(str, runs), "--out", str(out), "--device", "cpu",
                                 "--val-examples", "4", option, value])
    assert_clean_outcome(result)
    assert tree_hash(*runs) == before


@pytest.fixture(scope="module")
def peft_pair(tmp_path_factory):
    """Two plain-peft LoRA adapters of a tiny GPT-2, of different targets and ranks."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("fuzz-peft")
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32)).save_pretrained(
        folder / "base")
    for name, config in (("a", LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"])),
                         ("b", LoraConfig(r=4, lora_alpha=4, target_modules=["c_attn", "c_proj"]))):
        get_peft_model(GPT2LMHeadModel.from_pretrained(folder / "base"), config).save_pretrained(folder / name)
    return folder


PEFT_FIELDS = ["lora_alpha", "r", "use_rslora", "target_modules", "rank_pattern", "alpha_pattern", "use_dora",
               "lora_bias", "bias", "modules_to_save", "layers_to_transform", "peft_type", "fan_in_fan_out"]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


@FUZZ
@given(field=st.sampled_from(PEFT_FIELDS), value=json_values, weight=numbers)
def test_merges_of_foreign_peft_configs(peft_pair, tmp_path, field, value, weight):
    """Any value in any field of a foreign adapter's config, any --weights: a finite, loadable merge or one
    `error:` line; the inputs untouched."""
    import json

    from safetensors.torch import load_file

    second = tmp_path / "b"
    shutil.rmtree(second, ignore_errors=True)
    shutil.copytree(peft_pair / "b", second)
    config = json.loads((second / "adapter_config.json").read_text())
    (second / "adapter_config.json").write_text(json.dumps({**config, field: value}))
    before = tree_hash(peft_pair / "a", second)
    out = tmp_path / "merged"
    shutil.rmtree(out, ignore_errors=True)
    result = runner.invoke(app, ["merge", str(peft_pair / "a"), str(second), "--weights", f"1,{weight}",
                                 "--out", str(out)])
    assert_clean_outcome(result, after_progress=True)
    assert tree_hash(peft_pair / "a", second) == before
    if result.exit_code == 0:
        assert all(bool(t.isfinite().all()) for t in load_file(out / "adapter_model.safetensors").values())


@FUZZ
@given(rows=st.lists(st.lists(st.text(max_size=8), max_size=4).map("\t".join), min_size=0, max_size=6),
       raw=st.binary(max_size=24))
def test_train_on_fuzzed_tsv(tiny_model, glue_dir, tmp_path, rows, raw):
    data = tmp_path / "glue"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(glue_dir, data)
    train_tsv = data / "RTE" / "train.tsv"
    train_tsv.write_bytes(train_tsv.read_bytes() + ("\n".join(rows) + "\n").encode() + raw)
    before = tree_hash(data)
    out = tmp_path / "fuzz-tsv"
    shutil.rmtree(out, ignore_errors=True)
    result = runner.invoke(app, ["train", "--model", str(tiny_model), "--data", str(data), "--task", "rte",
                                 "--device", "cpu", "--max-train", "8", "--max-eval", "8", "--epochs", "1",
                                 "--max-length", "16", "--rank", "2", "--out", str(out)])
    assert_clean_outcome(result)
    assert tree_hash(data) == before


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children,
                                                                               max_size=3)),
    max_leaves=8,
)
STUDY_KEYS = ["out", "tasks", "seeds", "checkpoint_every", "train", "adapters", "task_settings", "tune", "baselines",
              "merge", "joint"]


@FUZZ
@given(recipe=st.dictionaries(st.sampled_from(STUDY_KEYS), yaml_values, max_size=4), text=st.text(max_size=40))
def test_study_recipes(tmp_path, recipe, text):
    import yaml

    for name, content in (("dict.yaml", yaml.safe_dump({"out": str(tmp_path / "s"), **recipe})),
                          ("text.yaml", text)):
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8"))
        result = runner.invoke(app, ["run", str(path), "--dry-run"])
        assert_clean_outcome(result)
        assert path.read_bytes() == content.encode("utf-8")  # bytes: read_text would turn '\r' into '\n'

