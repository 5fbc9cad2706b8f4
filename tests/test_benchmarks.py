"""benchmarks/publish.py: the tables in docs/ are what a benchmark printed, with its command, date and machine."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "publish.py"


def publish(page: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(page), "--note", "a test.", "--", *command],
                          capture_output=True, text=True)


def test_a_benchmark_page_holds_the_command_the_machine_and_the_output(tmp_path):
    page = tmp_path / "docs" / "bench.md"
    table = "one step:\\n| variant | ms |\\n|---|---|\\n| lora | 12 |"
    result = publish(page, sys.executable, "-c", f"print('{table}')")
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    assert text.startswith(f"# bench\n\n`{sys.executable} -c ")  # the command, shell-quoted
    assert "CPU cores" in text and "torch" in text and "a test." in text
    assert text.endswith("a test.\n\none step:\n\n| variant | ms |\n|---|---|\n| lora | 12 |\n")  # as printed,
    # with the blank line a markdown table needs after text


def test_a_failed_benchmark_leaves_the_page_as_it_was(tmp_path):
    page = tmp_path / "bench.md"
    page.write_text("kept")
    result = publish(page, sys.executable, "-c", "import sys; sys.exit('boom')")
    assert result.returncode != 0 and "boom" in result.stderr and result.stderr.startswith("error:")
    assert page.read_text() == "kept" and not list(tmp_path.glob(".*tmp"))


BENCHMARKS = SCRIPT.parent
# every script a person is told to run, at toy size on the tiny models: a benchmark that no longer runs is a defect
RUNS = {
    "batching": ["--tasks", "sst2,mrpc", "--examples", "16", "--eval-examples", "16", "--batch-size", "8",
                 "--repeats", "1", "--max-length", "32"],
    "train_throughput": ["--examples", "16", "--batch-size", "8", "--repeats", "1", "--max-length", "32"],
    "balancer_overhead": ["--tasks", "sst2,mrpc", "--steps", "4", "--batch-size", "4", "--rounds", "1",
                          "--max-length", "32"],
    "llora_step": ["--batch-size", "2", "--length", "8", "--steps", "1"],
    "text_throughput": ["--examples", "8", "--batch-size", "4", "--eval-batch-size", "4", "--repeats", "1",
                        "--max-length", "64"],
}
TEXT_MODEL = {"text_throughput"}


@pytest.mark.parametrize("name", list(RUNS))
def test_each_benchmark_runs_and_measures_against_the_machine_limit(name, tiny_model, tiny_llama, glue_dir):
    model = tiny_llama if name in TEXT_MODEL else tiny_model
    data = [] if name == "llora_step" else ["--data", str(glue_dir)]
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--model", str(model), *data, *RUNS[name]],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|---|" in done.stdout and "peak" in done.stdout  # a table, and the limit it is measured against


def test_the_merge_benchmark_measures_fusekit_and_peft_on_the_same_adapters(tiny_model, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    merge_cost = importlib.import_module("merge_cost")
    merge_cost.make_adapters(tmp_path, 2, str(tiny_model))
    for tool, combination in (("fusekit", "cat"), ("fusekit", "ties"), ("peft", "cat")):
        usage = merge_cost.measure(tool, combination, tmp_path, 2, str(tiny_model))
        assert usage["seconds"] > 0, (tool, combination)
