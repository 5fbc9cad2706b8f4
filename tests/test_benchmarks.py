"""benchmarks/publish.py: the tables in docs/ are what a benchmark printed, with its command, date and machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
