"""Run one benchmark and keep what it printed as a markdown page, so that the tables in docs/ are the scripts'
output, never typed by hand: the page holds the command, the date, the machine and the output as printed.

    python benchmarks/publish.py docs/benchmarks/llora-step-minilm.md -- python benchmarks/llora_step.py --steps 5
    python benchmarks/publish.py PAGE --note "beside a running study" -- COMMAND ...

The page is written to a temporary file and renamed, and only when the benchmark succeeded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def machine() -> str:
    """What the numbers depend on: cores, threads, torch and its build, Python."""
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", f"torch default ({torch.get_num_threads()})")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch threads {threads}, "
            f"{gpu}, torch {torch.__version__}, Python {platform.python_version()}")


def as_markdown(output: str) -> str:
    """The output with a blank line before each table, which markdown needs to see one after a line of text."""
    lines = []
    for line in output.strip().splitlines():
        if line.startswith("|") and lines and lines[-1].strip() and not lines[-1].startswith("|"):
            lines.append("")
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s PAGE [--note TEXT] -- COMMAND ...")
    parser.add_argument("page", type=Path, help="markdown file to write")
    parser.add_argument("--note", default="", help="conditions worth saying (e.g. the machine was shared)")
    argv = sys.argv[1:]
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("give the benchmark command after --")
    args = parser.parse_args(argv[:argv.index("--")])
    command = argv[argv.index("--") + 1:]
    started = datetime.datetime.now(datetime.timezone.utc)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"error: {shlex.join(command)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    lines = [f"# {args.page.stem}", "", f"`{shlex.join(command)}`", "",
             f"Run {started:%Y-%m-%d %H:%M} UTC on {machine()}." + (f" {args.note}" if args.note else ""), "",
             as_markdown(result.stdout), ""]
    args.page.parent.mkdir(parents=True, exist_ok=True)
    staged = args.page.with_name(f".{args.page.name}.tmp")
    staged.write_text("\n".join(lines), encoding="utf-8")
    staged.replace(args.page)
    print(args.page)


if __name__ == "__main__":
    main()
