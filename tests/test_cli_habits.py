"""What a user sees: help on every option, --json, --quiet, progress lines in logs, labelled plots."""

import json
import shutil

import pytest
from typer.main import get_command

from cli.main import app
from tests.test_cli import common, invoke


def test_every_option_of_every_command_has_help():
    root = get_command(app)
    missing = [f"{name or 'fusekit'} {param.name}" for name, command in [("", root), *root.commands.items()]
               for param in command.params if not (getattr(param, "help", None) or "").strip()]
    assert missing == []


def test_json_output_parses(sst2_run, tmp_path):
    result = invoke("eval", sst2_run[0], "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["task"] == "sst2" and 0 <= rows[0]["accuracy"] <= 1
    other = tmp_path / "copy"
    shutil.copytree(sst2_run[0], other)
    result = invoke("merge", sst2_run[0], "--lambda", "0.5", "--out", tmp_path / "m", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "task-arithmetic" and summary["params"] == {"lam": 0.5}


def test_logs_get_plain_progress_lines_and_quiet_silences_them(tiny_model, glue_dir, tmp_path):
    args = [*common(tiny_model, glue_dir), "--task", "rte", "--max-train", "16", "--epochs", "1", "--batch-size", "8"]
    result = invoke("train", *args, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "rte: 2/2 (100%) · " in result.stderr and "━" not in result.stderr  # a log line, not a bar
    result = invoke("--quiet", "train", *args, "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    assert json.loads(result.stdout)["out"] == str(tmp_path / "b")


def test_quiet_and_verbose_contradict():
    result = invoke("--quiet", "--verbose", "report", ".")
    assert result.exit_code == 1 and "contradict" in result.stderr


@pytest.fixture
def sweep():
    rows = [{"lam": lam, "sst2": 0.9 - 0.4 * lam, "stsb": 0.8 + 0.1 * lam, "normalized": 0.95 - 0.1 * abs(lam - 0.5)}
            for lam in (0.3, 0.5, 1.0)]
    return {("lora-delta-w", "task-arithmetic"): rows}


def test_the_sweep_figure_shows_each_task_and_marks_the_choice(sweep):
    from fusekit.study.plots import sweeps_figure

    figure = sweeps_figure(sweep, ["sst2", "stsb"])
    average, per_task = figure.axes
    assert average.get_xlabel() == "λ" and "normalized" in average.get_ylabel()
    assert per_task.get_ylabel() == "task score (held-out)"
    labels = [text.get_text() for text in per_task.get_legend().get_texts()]
    assert labels == ["sst2", "stsb", "chosen λ = 0.5"]


def test_a_sweep_without_lambda_draws_its_own_hyperparameter_in_its_panel(sweep):
    from fusekit.study.plots import sweeps_figure

    regmean = [{"regmean_alpha": a, "sst2": 0.8 + 0.1 * a, "stsb": 0.8, "normalized": 0.9 + 0.05 * a}
               for a in (0.5, 0.9)]
    figure = sweeps_figure({**sweep, ("lora-delta-w", "regmean"): regmean}, ["sst2", "stsb"])
    average, _, regmean_panel = figure.axes
    assert [line.get_label() for line in average.get_lines()][0] == "task-arithmetic"  # λ methods only on top
    assert len(average.get_lines()) == 2  # its line and its star
    assert regmean_panel.get_xlabel() == "α"
    labels = [text.get_text() for text in regmean_panel.get_legend().get_texts()]
    assert labels == ["regmean (average)", "sst2", "stsb", "chosen α = 0.9"]


def test_the_joint_figure_has_labelled_axes_and_states_the_noise(tmp_path):
    from fusekit.study.plots import joint_figure

    metrics = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "losses": [1 / s, 2 / s], "weights": [1 + 0.01 * s, 1 - 0.01 * s]} for s in range(1, 30)]
    lines += [{"step": s, "validation_losses": [1 / s, 3 / s]} for s in range(1, 30)]
    metrics.write_text("\n".join(json.dumps(line) for line in lines))
    figure, noise = joint_figure(metrics, ["sst2", "stsb"])
    losses, weights = figure.axes
    assert losses.get_ylabel() and losses.get_xlabel() == "step" and weights.get_ylabel().startswith("ω_i")
    assert noise == pytest.approx(0.0, abs=1e-9) and "noise fraction 0.00" in weights.get_title()


def test_the_merge_help_names_every_registered_method():
    from fusekit.merging.methods import METHODS

    text = next(p.help for p in get_command(app).commands["merge"].params if p.name == "method")
    assert all(name in text for name in METHODS)


def test_the_merge_flags_are_generated_from_merge_config():
    """One declaration: every MergeConfig field is a `fusekit merge` option with the field's own help."""
    import dataclasses

    from fusekit.merging.config import MergeConfig

    params = {p.name: p for p in get_command(app).commands["merge"].params}
    for field in dataclasses.fields(MergeConfig):
        assert params[field.name].help == field.metadata["help"], field.name
    assert "--lambda" in params["lam"].opts and "--drop-rates" in params["rates"].opts
