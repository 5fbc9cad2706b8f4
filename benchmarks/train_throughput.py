"""Training throughput of `fusekit train` against a plain peft + transformers `Trainer` loop, in one run.

Same model, same examples (the first --examples of the task's training split, in the same order), same batch
size, max length, LoRA rank/alpha/targets and optimizer; only the training loop differs. Prints a table of
examples/s and the ratio fusekit / Trainer (> 1: fusekit is faster).

    python benchmarks/train_throughput.py --data ../shared/glue --task sst2 --examples 1920
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch


def _clock_class():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """Times the training loop itself, as fusekit's own timer does (setup and evaluation excluded)."""

        def on_train_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_train_end(self, *args, **kwargs):
            self.end = time.perf_counter()

    return Clock


def trainer_throughput(args, train_split) -> float:
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
                                  disable_tqdm=True)
        clock = Clock()
        trainer = Trainer(model=model, args=targs, train_dataset=rows,
                          data_collator=DataCollatorWithPadding(tokenizer), callbacks=[clock])
        trainer.train()
        return len(rows) / (clock.end - clock.start)


def fusekit_throughput(args) -> float:
    from fusekit.config import TrainConfig
    from fusekit.training.train import train

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(task=args.task, model=args.model, data=args.data, out=str(Path(out) / "run"),
                          rank=args.rank, alpha=args.alpha, lr=1e-3, epochs=1, batch_size=args.batch_size,
                          max_length=args.max_length, max_train=args.examples, max_eval=32)
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
    args = parser.parse_args()

    from fusekit.data.loading import load_split
    from fusekit.data.tasks import get_task

    split = load_split(get_task(args.task), "train", args.data).capped(args.examples, 0)
    results: dict[str, list[float]] = {"peft + Trainer": [], "fusekit train": []}
    for _ in range(args.repeats):
        results["peft + Trainer"].append(trainer_throughput(args, split))
        results["fusekit train"].append(fusekit_throughput(args))
    best = {k: max(v) for k, v in results.items()}
    print(f"\n{args.task}, {len(split)} examples, batch {args.batch_size}, max length {args.max_length}, "
          f"LoRA r={args.rank}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print("| loop | examples/s | runs | ratio vs Trainer |\n|---|---|---|---|")
    for name, value in best.items():
        runs = ", ".join(f"{v:.1f}" for v in results[name])
        print(f"| {name} | {value:.1f} | {runs} | {value / best['peft + Trainer']:.2f}x |")


if __name__ == "__main__":
    main()
