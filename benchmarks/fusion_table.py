"""Markdown table of merged adapters (benchmarks/glue_fusion.sh): normalized score per task and their average.

    python benchmarks/fusion_table.py runs/study/merged
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: Path) -> None:
    rows = []
    for merged in sorted(folder.iterdir()):
        if not (merged / "eval.json").is_file():
            continue
        manifest = json.loads((merged / "manifest.json").read_text())
        scores = json.loads((merged / "eval.json").read_text())
        tasks = [item["task"] for item in manifest["inputs"]]
        params = ", ".join(f"{k}={v}" for k, v in manifest["params"].items() if k in ("lam", "density", "rate"))
        variant = merged.name[: -len(f"-{manifest['space']}-{manifest['method']}")]
        rows.append((variant, manifest["space"], manifest["method"], params or "–", manifest["rank"],
                     [scores[t]["normalized"] for t in tasks], scores["average_normalized"]["normalized"], tasks))
    if not rows:
        return
    tasks = rows[0][-1]
    print("| adapters | space | method | chosen on held-out | rank | " + " | ".join(tasks) + " | **average** |")
    print("|---" * (6 + len(tasks)) + "|")
    for variant, space, method, params, rank, per_task, average, _ in rows:
        print(f"| {variant} | {space} | {method} | {params} | {rank} | "
              + " | ".join(f"{v:.3f}" for v in per_task) + f" | **{average:.3f}** |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study/merged"))
