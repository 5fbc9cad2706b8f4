"""How a text adapter's STS-B answer becomes a number: the expected value under the answer distribution (fusekit's
default) against the parsed answer (the most likely whole number, what greedy decoding writes), on held-out
training examples the adapter never saw (nothing here reads the dev split).

    python benchmarks/stsb_readout.py runs/smollm2-glue/train/stsb-lora --examples 500
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a text run folder of STS-B")
    parser.add_argument("--examples", type=int, default=500)
    args = parser.parse_args()

    from fusekit.artifacts.run_folder import load_run, model_for_run
    from fusekit.data.tasks import get_task
    from fusekit.evaluation.loop import predict
    from fusekit.evaluation.metrics import compute_metrics
    from fusekit.merging.search import held_out_split

    run = load_run(args.run)
    task = get_task("stsb")
    base, model = model_for_run(run, task)
    split = held_out_split(run, args.examples, seed=0)
    scores, labels, _ = predict(model, base.encode(split, run.config.max_length), task, torch.device("cpu"), 64)
    values = torch.tensor(task.answer_values)
    readouts = {"expected value (default)": scores[:, 0],
                "parsed answer (arg-max digit)": values[torch.from_numpy(scores[:, 1:]).argmax(1)].numpy()}
    print(f"\n{args.run}: {len(labels)} held-out STS-B training examples")
    print("| readout | Pearson | Spearman |\n|---|---|---|")
    for name, predictions in readouts.items():
        metrics = compute_metrics(task, labels, predictions)
        print(f"| {name} | {metrics['pearson']:.4f} | {metrics['spearman']:.4f} |")


if __name__ == "__main__":
    main()
