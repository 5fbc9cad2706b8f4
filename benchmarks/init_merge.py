"""Which L-LoRA init merges better? Task arithmetic φ0 + λ Σ τ_i over a study's runs, scored on every task.

For each adapter variant of a study folder (benchmarks/glue_study.sh), adds the task vectors of all tasks,
scales by each λ, and evaluates the merged adapter on each task's full dev set with that task's own head
(L-LoRA variants with their linearized forward at the merged point). Prints, per λ, the normalized score
(merged score / the task's own finetuned score) of each task and their average. Every λ is shown: none is
picked on the reported split.

    python benchmarks/init_merge.py runs/study --variants l-lora-module,l-lora-module-b0 --lambdas 0.3,0.5,1.0
"""

from __future__ import annotations

import argparse
import json
from functools import reduce
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--variants", default="l-lora-module,l-lora-module-b0")
    parser.add_argument("--tasks", default="sst2,rte,mrpc,cola,stsb")
    parser.add_argument("--lambdas", default="0.3,0.5,1.0")
    parser.add_argument("--data", default="../shared/glue")
    args = parser.parse_args()

    from fusekit.data import EncodedSplit, load_split
    from fusekit.evaluate import evaluate
    from fusekit.runs import load_run, model_for_run
    from fusekit.tasks import parse_tasks

    tasks = parse_tasks(args.tasks)
    splits = {t.name: load_split(t, "validation", args.data) for t in tasks}
    print("| variant | λ | " + " | ".join(t.name for t in tasks) + " | average normalized |")
    print("|---|---|" + "---|" * len(tasks) + "---|")
    for variant in args.variants.split(","):
        runs = {t.name: load_run(args.study / f"{t.name}-{variant}") for t in tasks}
        own = {name: json.loads((run.folder / "eval.json").read_text())[name]["score"] for name, run in runs.items()}
        total = reduce(lambda a, b: a + b, (run.vector for run in runs.values()))
        for lam in map(float, args.lambdas.split(",")):
            merged = total * lam
            normalized = {}
            for task in tasks:
                base, model = model_for_run(runs[task.name], task, vector=merged)
                data = EncodedSplit(splits[task.name], base.tokenizer, runs[task.name].config.max_length)
                score = evaluate(model, data, task, torch.device("cpu"))["score"]
                normalized[task.name] = score / own[task.name] if own[task.name] else float("nan")
            average = sum(normalized.values()) / len(normalized)
            print(f"| {variant} | {lam} | " + " | ".join(f"{normalized[t.name]:.3f}" for t in tasks)
                  + f" | {average:.3f} |", flush=True)


if __name__ == "__main__":
    main()
