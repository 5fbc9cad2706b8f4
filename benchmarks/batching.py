"""Examples per second of training steps and of evaluation: batches as drawn at random (every batch padded to its
longest example) against fusekit's batches grouped by length, on the real model and real GLUE data, in one run.

Training: LoRA steps (forward, backward, AdamW) over the same examples, once in random batches and once in
length-grouped batches, alternating, best of --repeats. Evaluation: the dev split in file order under no_grad
against fusekit's `evaluate` (sorted by length, inference_mode). Beside each rate, the fraction of the float32
matmul peak (measured in the same run) that the FLOPs the work needs reach at that rate (`limits.forward_flops` of
the examples' real tokens; training twice that). Also prints the token-length percentiles that decide a task's max
length.

    python benchmarks/batching.py --data ../shared/glue --tasks sst2,mrpc --examples 640
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from limits import forward_flops, matmul_peak  # this folder's module
from torch.utils.data import DataLoader

from fusekit.artifacts.run_folder import build_adapted_model
from fusekit.data.loading import EncodedSplit, load_split, make_loader
from fusekit.data.tasks import get_task
from fusekit.evaluation.loop import evaluate, task_loss
from fusekit.models.adapters import AdapterSpec
from fusekit.models.base import load_base_model


def train_rate(model, data: EncodedSplit, loader, task) -> float:
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    start = time.perf_counter()
    for batch in loader:
        loss = task_loss(task, model(batch), batch, model.text)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return len(data) / (time.perf_counter() - start)


def eval_rate_random(model, data: EncodedSplit, batch_size: int) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=batch_size, collate_fn=data.collate):
            model(batch)
    return len(data) / (time.perf_counter() - start)


def eval_rate_fusekit(model, data: EncodedSplit, task, batch_size: int) -> float:
    start = time.perf_counter()
    evaluate(model, data, task, torch.device("cpu"), batch_size)
    return len(data) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/glue")
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default="sst2,mrpc")
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument("--eval-examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    peak = matmul_peak()
    rows = []
    for name in args.tasks.split(","):
        task = get_task(name)
        base = load_base_model(args.model, task, "auto")
        model = build_adapted_model(base, AdapterSpec(target_modules=("query", "key", "value", "dense")))
        train = EncodedSplit(load_split(task, "train", args.data).capped(args.examples, 0), base.tokenizer,
                             args.max_length)
        dev = EncodedSplit(load_split(task, "validation", args.data).capped(args.eval_examples, 0), base.tokenizer,
                           args.max_length)
        lengths = np.array(EncodedSplit(load_split(task, "train", args.data), base.tokenizer, 512).lengths)
        per_example = {"train": 2 * forward_flops(base.model, sum(train.lengths)) / len(train),
                       "eval": forward_flops(base.model, sum(dev.lengths)) / len(dev)}
        best = {"random": 0.0, "grouped": 0.0}
        for _ in range(args.repeats):
            generator = torch.Generator().manual_seed(0)
            random_batches = DataLoader(train, batch_size=args.batch_size, shuffle=True, collate_fn=train.collate,
                                        generator=generator)
            best["random"] = max(best["random"], train_rate(model, train, random_batches, task))
            best["grouped"] = max(best["grouped"], train_rate(model, train, make_loader(train, args.batch_size, True),
                                                              task))
        evals = (max(eval_rate_random(model, dev, 128) for _ in range(args.repeats)),
                 max(eval_rate_fusekit(model, dev, task, 128) for _ in range(args.repeats)))
        rows.append((name, best["random"], best["grouped"], *evals, per_example,
                     *np.percentile(lengths, [50, 95, 99]), lengths.max()))
    print(f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads); in brackets, the "
          "fraction of it the needed FLOPs reach at each rate")
    print("| task | train ex/s random | train ex/s grouped | ratio | eval ex/s random, no_grad | eval ex/s fusekit "
          "| ratio | tokens p50 / p95 / p99 / max |")
    print("|---|---|---|---|---|---|---|---|")
    for name, tr, tg, er, ef, flops, p50, p95, p99, top in rows:
        train, score = (lambda rate: f"{rate:.1f} ({rate * flops['train'] / peak:.2f})",
                        lambda rate: f"{rate:.1f} ({rate * flops['eval'] / peak:.2f})")
        print(f"| {name} | {train(tr)} | {train(tg)} | {tg / tr:.2f}x | {score(er)} | {score(ef)} | {ef / er:.2f}x "
              f"| {p50:.0f} / {p95:.0f} / {p99:.0f} / {top} |")


if __name__ == "__main__":
    main()
