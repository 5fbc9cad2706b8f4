"""Training throughput of `fusekit train` against a plain peft + transformers `Trainer` loop, in one run.

Same model, same examples (the first --examples of the task's training split, in the same order), same batch
size, max length, LoRA rank/alpha/targets and optimizer; only the training loop differs. The Trainer runs at its
best documented setting for variable-length text, batches grouped by length (`train_sampling_strategy=
"group_by_length"`), and, for reference, with plain random batches. Prints examples/s, the ratio to the grouped
Trainer (> 1: fusekit is faster), and the FLOPs the work needs at that speed (2 · non-embedding parameters per
token, padding excluded, twice that for a training step) as a fraction of the float32 matmul peak measured in the
same run.

    python benchmarks/train_throughput.py --data ../shared/glue --task sst2 --examples 1920
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from limits import forward_flops, matmul_peak  # this folder's module


def _clock_class():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """Times the training loop itself, as fusekit's own timer does (setup and evaluation excluded)."""

        def on_train_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_train_end(self, *args, **kwargs):
            self.end = time.perf_counter()

    return Clock


def training_flops_per_example(args, train_split) -> float:
    """A training step's needed FLOPs per example: forward and backward through the frozen body, twice a
    forward's FLOPs per real token (padding excluded; the head and LoRA's own matmuls are negligible)."""
    from transformers import AutoModel, AutoTokenizer

    from fusekit.models.base import resolve_model

    path = resolve_model(args.model)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    columns = [list(c) for c in zip(*train_split.texts)]
    tokens = sum(map(len, tokenizer(*columns[:2], truncation=True, max_length=args.max_length)["input_ids"]))
    return 2 * forward_flops(model, tokens) / len(train_split)


def trainer_throughput(args, train_split, grouped: bool, bf16: bool = False) -> float:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from fusekit.models.base import resolve_model

    Clock = _clock_class()
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=args.rank, lora_alpha=args.alpha))
    columns = [list(c) for c in zip(*train_split.texts)]
    encoded = tokenizer(*columns[:2], truncation=True, max_length=args.max_length)
    rows = [{**{k: encoded[k][i] for k in encoded.keys()}, "labels": train_split.labels[i]}
            for i in range(len(train_split))]
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(out, per_device_train_batch_size=args.batch_size, num_train_epochs=1,
                                  learning_rate=1e-3, lr_scheduler_type="linear",
                                  warmup_steps=math.ceil(0.06 * math.ceil(len(rows) / args.batch_size)),
                                  max_grad_norm=1.0, report_to=[], save_strategy="no", logging_strategy="no",
                                  use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0,
                                  disable_tqdm=True, bf16=bf16, **({"train_sampling_strategy": "group_by_length"}
                                                                   if grouped else {}))
        clock = Clock()
        trainer = Trainer(model=model, args=targs, train_dataset=rows,
                          data_collator=DataCollatorWithPadding(tokenizer), callbacks=[clock])
        trainer.train()
        return len(rows) / (clock.end - clock.start)


def fusekit_throughput(args, precision: str = "auto") -> float:
    from fusekit.config import TrainConfig
    from fusekit.training.train import train

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(task=args.task, model=args.model, data=args.data, out=str(Path(out) / "run"),
                          rank=args.rank, alpha=args.alpha, lr=1e-3, epochs=1, batch_size=args.batch_size,
                          max_length=args.max_length, max_train=args.examples, max_eval=32, precision=precision)
        return train(cfg).examples_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/glue")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", default=None)
    parser.add_argument("--examples", type=int, default=1920)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is kept")
    parser.add_argument("--bf16", action="store_true", help="the grouped Trainer and fusekit once more in bf16 "
                                                                "autocast (fast on CPUs with AMX)")
    args = parser.parse_args()

    from fusekit.data.loading import load_split
    from fusekit.data.tasks import get_task

    split = load_split(get_task(args.task), "train", args.data).capped(args.examples, 0)
    flops = training_flops_per_example(args, split)
    peak = {"fp32": matmul_peak(), "bf16": matmul_peak(torch.bfloat16) if args.bf16 else None}
    loops = {"peft + Trainer (group_by_length)": lambda: trainer_throughput(args, split, grouped=True),
             "peft + Trainer (random batches)": lambda: trainer_throughput(args, split, grouped=False),
             "fusekit train": lambda: fusekit_throughput(args)}
    if args.bf16:
        loops |= {"peft + Trainer (group_by_length, bf16=True)":
                  lambda: trainer_throughput(args, split, grouped=True, bf16=True),
                  "fusekit train --precision bf16": lambda: fusekit_throughput(args, "bf16")}
    results: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, loop in loops.items():
            results[name].append(loop())
    best = {k: max(v) for k, v in results.items()}
    reference = best["peft + Trainer (group_by_length)"]
    print(f"\n{args.task}, {len(split)} examples, batch {args.batch_size}, max length {args.max_length}, "
          f"LoRA r={args.rank}, {torch.get_num_threads()} threads, best of {args.repeats}; float32 matmul peak "
          f"{peak['fp32'] / 1e9:.1f} GFLOP/s" + (f", bf16 {peak['bf16'] / 1e9:.1f} (bf16 rows: of that)" if args.bf16
                                                  else ""))
    print("| loop | examples/s | runs | ratio vs grouped Trainer | needed GFLOP/s at this speed | fraction of peak |"
          "\n|---|---|---|---|---|---|")
    for name, value in best.items():
        runs = ", ".join(f"{v:.1f}" for v in results[name])
        limit = peak["bf16" if "bf16" in name else "fp32"]
        print(f"| {name} | {value:.1f} | {runs} | {value / reference:.2f}x | {value * flops / 1e9:.1f} | "
              f"{value * flops / limit:.2f} |")


if __name__ == "__main__":
    main()
