"""Markdown table of a study folder (benchmarks/glue_study.sh): validation score per task and adapter kind.

    python benchmarks/study_table.py runs/study
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

COLUMNS = {"lora": "LoRA", "l-lora-module": "L-LoRA module", "l-lora-network": "L-LoRA network",
           "l-lora-module-b0": "L-LoRA module, B0 = 0"}


def main(folder: Path) -> None:
    scores: dict[str, dict[str, str]] = {}
    seconds: dict[str, float] = {}
    for run in sorted(folder.iterdir()):
        if not (run / "eval.json").is_file():
            continue
        task = yaml.safe_load((run / "config.yaml").read_text())["task"]
        kind = run.name[len(task) + 1:]
        results = json.loads((run / "eval.json").read_text())
        metric = results[task]
        cell = " / ".join(f"{metric[m]:.4f}" for m in _official(task))
        if f"{task}:nonlinear" in results:
            cell += f" (export {results[f'{task}:nonlinear']['score']:.4f})"
        scores.setdefault(task, {})[kind] = cell
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        seconds[kind] = seconds.get(kind, 0.0) + sum(r.get("train_seconds", 0.0) for r in log)
    columns = {k: v for k, v in COLUMNS.items() if k in seconds}  # the variants this study ran
    print("| task (metric) | " + " | ".join(columns.values()) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for task, row in scores.items():
        names = "/".join(_official(task))
        print(f"| {task} ({names}) | " + " | ".join(row.get(k, "–") for k in columns) + " |")
    print("| train time, these runs | " + " | ".join(f"{seconds[k] / 60:.1f} min" for k in columns) + " |")


def _official(task: str) -> tuple[str, ...]:
    from fusekit.tasks import get_task

    return get_task(task).metrics


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study"))
