"""The command line: recipes with overrides, and one-line errors (exit code 1) for every bad input."""

import shutil

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import make_tiny_model

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern: str) -> None:
    import re

    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def assert_error_line(result, pattern: str) -> None:
    """Exit 1 with exactly one `error:` line, the last one (progress of work done before it may precede it)."""
    import re

    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and re.search(pattern, errors[0]), result.stderr


def common(tiny_model, glue_dir):
    return ["--model", tiny_model, "--data", glue_dir, "--device", "cpu", "--max-length", "16", "--rank", "2"]


def test_train_from_recipe_with_override_then_eval(tiny_model, glue_dir, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: rte\nepochs: 3\nmax_train: 16\nmodel: {tiny_model}\ndata: {glue_dir}\n")
    out = tmp_path / "run"
    result = invoke("train", recipe, "--epochs", "1", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    saved = (out / "config.yaml").read_text()
    assert "task: rte" in saved and "epochs: 1" in saved and "max_train: 16" in saved
    report = tmp_path / "scores.json"
    result = invoke("eval", "--adapter", out, "--out", report, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert '"task": "rte"' in report.read_text() and "accuracy" in result.stderr


def test_eval_several_runs_and_tasks(sst2_run, glue_dir, tmp_path):
    out, _ = sst2_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    result = invoke("eval", out, copy, "--task", "sst2", "--out", tmp_path / "s.json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.json").read_text().count('"task": "sst2"') == 2


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--task", "sst3"], "key 'task' is 'sst3', expected one of cola, sst2"),
        (["--task", "rte", "--data", "/nonexistent/glue"], "data folder /nonexistent/glue does not exist"),
        (["--task", "rte", "--adapter", "ia3"], "key 'adapter' is 'ia3', expected one of lora, l-lora"),
        (["--task", "rte", "--device", "cuda:7"], "cuda"),
    ],
)
def test_train_bad_input(tiny_model, glue_dir, tmp_path, args, pattern):
    result = invoke("train", *common(tiny_model, glue_dir), "--out", tmp_path / "x", *args)
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "x").exists()


def test_malformed_tsv(tiny_model, glue_dir, tmp_path):
    bad = tmp_path / "glue"
    shutil.copytree(glue_dir / "RTE", bad / "RTE")
    with (bad / "RTE" / "train.tsv").open("a") as handle:
        handle.write("99\tonly one sentence\n")
    result = invoke("train", "--task", "rte", "--model", tiny_model, "--data", bad, "--out", tmp_path / "x")
    assert_one_line_error(result, r"RTE/train.tsv:\d+: malformed row with 2 tab-separated fields")


def test_model_path_that_is_not_a_model(glue_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("train", "--task", "rte", "--model", tmp_path / "empty", "--data", glue_dir,
                    "--out", tmp_path / "x")
    assert_one_line_error(result, r"empty is not a model folder \(expected config.json")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    result = invoke("train", "--task", "rte", "--model", tmp_path / "broken", "--data", glue_dir,
                    "--out", tmp_path / "x")
    assert_one_line_error(result, "could not load model")


def test_existing_output_needs_overwrite(sst2_run, tiny_model, glue_dir):
    out, _ = sst2_run
    result = invoke("train", *common(tiny_model, glue_dir), "--task", "sst2", "--out", out)
    assert_one_line_error(result, "not empty .* pass --overwrite")


@pytest.mark.parametrize("text, pattern", [("task: rte\nlearning_rate: 0.1\n", "unknown key 'learning_rate'"),
                                           ("task: rte\nepochs: two\n", "key 'epochs' is 'two', expected int"),
                                           ("- task\n", "expected a mapping"),
                                           ("task: [rte\n", "not valid YAML")])
def test_bad_recipe(tmp_path, text, pattern):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    assert_one_line_error(invoke("train", recipe), f"bad.yaml.*{pattern}|{pattern}")


def test_eval_refuses_a_vector_of_another_base_model(sst2_run, tmp_path):
    out, _ = sst2_run
    other = make_tiny_model(tmp_path / "other")  # same architecture, weights drawn again
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(other)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(1.0)
    model.save_pretrained(other)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    config = copy / "config.yaml"
    config.write_text("\n".join(f"model: {other}" if line.startswith("model:") else line
                                for line in config.read_text().splitlines()))
    assert_one_line_error(invoke("eval", copy), "config.yaml is corrupt or was edited")  # the seal catches the edit
    from fusekit.artifacts.checksums import seal

    seal(copy)  # an edit sealed again (as a forger would) meets the base-model check
    assert_one_line_error(invoke("eval", copy), "fingerprint .*expected the same pretrained weights")


def test_eval_bad_folders(sst2_run, tmp_path):
    out, _ = sst2_run
    assert_one_line_error(invoke("eval", tmp_path), "is not a fusekit run")
    assert_one_line_error(invoke("eval", out, "--task", "rte"), "holds a head for sst2, not for rte")
    assert_one_line_error(invoke("eval"), "no run folder given")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "task_vector.safetensors").write_bytes(b"\x00" * 10)
    assert_one_line_error(invoke("eval", copy), r"task_vector.safetensors is corrupt or was edited \(sha256 mismatch")
    (copy / "checksums.json").unlink()
    assert_one_line_error(invoke("eval", copy), "has lost its checksums.json")
    (copy / ".fusekit.json").unlink()  # a folder from before checksums: a warning, then the reader's own error
    result = invoke("eval", copy)
    assert result.exit_code == 1 and "records no checksums" in result.stderr
    assert "task_vector.safetensors is not a readable safetensors file" in result.stderr.splitlines()[-1]


def test_l_lora_from_the_cli_and_its_nonlinear_score(tiny_model, glue_dir, tmp_path):
    out = tmp_path / "ll"
    result = invoke("train", *common(tiny_model, glue_dir), "--task", "rte", "--adapter", "l-lora", "--linearize",
                    "network", "--lora-init", "nonzero", "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert "linearize: network" in (out / "config.yaml").read_text()
    result = invoke("eval", out, "--nonlinear", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "nonlinear" in result.stderr and '"rte:nonlinear"' in (out / "eval.json").read_text()


@pytest.mark.parametrize("args, pattern", [(["--adapter", "lora", "--linearize", "network"], "does not fit adapter"),
                                           (["--lora-init", "zeros"], "key 'lora_init' is 'zeros', expected one of")])
def test_bad_linearization_options(tiny_model, glue_dir, tmp_path, args, pattern):
    result = invoke("train", *common(tiny_model, glue_dir), "--task", "rte", "--out", tmp_path / "x", *args)
    assert_one_line_error(result, pattern)


def test_joint_from_the_cli_draws_the_balancer_weights(tiny_model, glue_dir, tmp_path):
    out = tmp_path / "joint"
    result = invoke("joint", *common(tiny_model, glue_dir), "--tasks", "sst2,stsb", "--balancer", "coba",
                    "--coba-warmup", "2", "--coba-window", "3", "--max-train", "16", "--validation-examples", "8",
                    "--epochs", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "weights.png").stat().st_size > 0 and (out / "manifest.json").is_file()


def test_tune_joint_from_the_cli_chooses_on_held_out_examples(tiny_model, glue_dir, tmp_path):
    import json

    out = tmp_path / "tune"
    result = invoke("tune-joint", *common(tiny_model, glue_dir), "--tasks", "sst2,mrpc", "--max-train", "48",
                    "--held-out-examples", "16", "--validation-examples", "8", "--grid", "lr=1e-6,2e-2", "--out", out,
                    "--json")
    assert result.exit_code == 0, result.output
    table = json.loads((out / "tune.json").read_text())
    assert table["tasks"] == ["sst2", "mrpc"] and len(table["rows"]) == 2
    assert all(row["held_out"][task]["examples"] == 16 for row in table["rows"] for task in ("sst2", "mrpc"))
    assert_one_line_error(invoke("tune-joint", *common(tiny_model, glue_dir), "--out", tmp_path / "x"),
                          "no --grid given")
    assert_one_line_error(invoke("tune-joint", *common(tiny_model, glue_dir), "--grid", "balancr=coba,famo",
                                 "--out", tmp_path / "x"), "unknown setting 'balancr' .expected keys of fusekit joint")


@pytest.mark.parametrize("args, pattern", [
    (["--seed", "99999999999"], "key 'seed' is 99999999999, expected an integer ≥ 0 and ≤ 4.29497e\\+09"),
    (["--warmup-ratio", "-0.5"], "key 'warmup_ratio' is -0.5, expected a finite number ≥ 0 and < 1"),
    (["--rank", "abc"], "Invalid value for '--rank'"),
    (["--no-such-flag"], "No such option: --no-such-flag"),
])
def test_train_refuses_bad_values_in_one_line_and_writes_nothing(tiny_model, glue_dir, tmp_path, args, pattern):
    result = invoke("train", *common(tiny_model, glue_dir), "--task", "rte", "--max-train", "16", "--batch-size", "4",
                    "--out", tmp_path / "x", *args)
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("x.*"))


def test_a_diverging_run_stops_with_one_error_line_and_writes_nothing(tiny_model, glue_dir, tmp_path):
    result = invoke("train", *common(tiny_model, glue_dir), "--task", "rte", "--max-train", "16", "--batch-size", "4",
                    "--lr", "1e30", "--out", tmp_path / "x")
    assert_error_line(result, r"training diverged: the loss is \[nan\]")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("x.*"))


def test_unexpected_errors_are_one_line_unless_debugging(monkeypatch, tiny_model, glue_dir, tmp_path):
    import fusekit.training.train as training

    def boom(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(training, "train", boom)
    result = invoke("train", *common(tiny_model, glue_dir), "--out", tmp_path / "x")
    assert_one_line_error(result, "fusekit train failed unexpectedly: RuntimeError: a bug over two lines "
                                  "\\(rerun with --debug")
    result = invoke("--debug", "train", *common(tiny_model, glue_dir), "--out", tmp_path / "x")
    assert isinstance(result.exception, RuntimeError)
    monkeypatch.delenv("FUSEKIT_DEBUG", raising=False)


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"fusekit {version('fusekit')}"
