"""Text to text on a generative model: fusekit's training and scoring against their peers, in one run, and
against the machine's limit.

- Training: `fusekit train` (text objective) against peft + transformers' `Trainer` at its best documented
  settings for this job: causal-LM finetuning on prompt + answer with the prompt's labels masked (-100), batches
  padded per batch by `DataCollatorForSeq2Seq` and grouped by length (`train_sampling_strategy="group_by_length"`).
  Same model, examples, LoRA (rank, alpha, targets), optimizer, learning rate and batch size.
- Scoring: fusekit's evaluation (logits at the answer position only, the answer words compared) against
  generate-then-compare, FusionBench's way: greedy `generate` of the answer's tokens on left-padded batches,
  decoded, compared with the label word.
- The limit: the FLOPs the work needs, 2 · N · tokens for a forward (N the non-embedding parameters, prompt
  tokens counted without padding) plus 2 · hidden · vocabulary for the one answer position read per example, and
  twice that for LoRA training (the backward pass carries gradients through the frozen weights to the
  activations, as many FLOPs as the forward, but computes no gradient of those weights); at each loop's speed,
  as a fraction of the float32 matmul peak measured in the same run (2048 × 2048, best of 5). Work a loop
  spends beyond that (padding, logits nobody reads, generation's extra steps, attention, norms) lowers it.
- With `--bf16`, each loop once more in bf16 autocast (the Trainer's `bf16=True`, fusekit's `--precision bf16`,
  generation under `torch.autocast`), against the bf16 matmul peak: on CPUs with AMX the fast way.

    python benchmarks/text_throughput.py --model smollm2-135m --data ../shared/glue --task sst2 --examples 640
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from limits import forward_flops, matmul_peak  # this folder's modules
from train_throughput import _clock_class, fusekit_throughput  # the same fusekit run


def prompt_ids(base, split, max_length: int) -> list[list[int]]:
    return [f["input_ids"] for f in base.encode(split, max_length).features]


def needed_flops(base, split, max_length: int) -> float:
    """A forward over the split's prompts (no padding) and the logits of one answer position per example."""
    return forward_flops(base.model, sum(map(len, prompt_ids(base, split, max_length))), len(split))


def trainer_training(args, base, split, bf16: bool = False) -> float:
    """Examples/s of peft + Trainer on prompt + answer, the prompt's labels masked."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from fusekit.data.text import verbalizer
    from fusekit.models.base import resolve_model

    shared, choices = verbalizer(split.task, base.tokenizer)
    rows = []
    for ids, label in zip(prompt_ids(base, split, args.max_length), split.labels):
        answer = choices[int(round(label))] if split.task.is_regression else choices[label]
        rows.append({"input_ids": ids + [answer], "attention_mask": [1] * (len(ids) + 1),
                     "labels": [-100] * len(ids) + [answer]})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=args.rank, lora_alpha=args.alpha))
    clock = _clock_class()()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(out, per_device_train_batch_size=args.batch_size, num_train_epochs=1,
                                  learning_rate=1e-3, lr_scheduler_type="linear", warmup_steps=0.06,
                                  max_grad_norm=1.0, report_to=[], save_strategy="no", logging_strategy="no",
                                  use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=0,
                                  disable_tqdm=True, train_sampling_strategy="group_by_length", bf16=bf16)
        Trainer(model=model, args=targs, train_dataset=rows, callbacks=[clock],
                data_collator=DataCollatorForSeq2Seq(base.tokenizer, padding=True)).train()
    return len(rows) / (clock.end - clock.start)


def fusekit_scoring(args, split, precision: str = "auto") -> float:
    """Examples/s of fusekit's evaluation (of the untrained model: the same work)."""
    from fusekit.evaluation.loop import evaluate
    from fusekit.models.adapters import AdapterSpec, add_lora
    from fusekit.models.base import load_base_model

    base = load_base_model(args.model, split.task, objective="text")  # fresh: peft adds its layers in place
    model = add_lora(base, AdapterSpec(rank=args.rank, alpha=args.alpha))
    data = base.encode(split, args.max_length)
    start = time.perf_counter()
    evaluate(model, data, split.task, torch.device("cpu"), args.eval_batch_size, precision=precision)
    return len(split) / (time.perf_counter() - start)


def generate_scoring(args, base, split, bf16: bool = False) -> float:
    """Examples/s of greedy generation on left-padded batches, compared with the answer (FusionBench's way)."""
    tokenizer, model = base.tokenizer, base.model.eval()
    tokenizer.padding_side = "left"
    prompts = [split.task.prompt.format(*t) for t in split.texts]
    answers = [split.task.answers[int(round(y))].strip() for y in split.labels]
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in split.task.answers)
    hits, start = 0, time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(prompts), args.eval_batch_size):
            batch = tokenizer(prompts[i:i + args.eval_batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=args.max_length)
            out = model.generate(**batch, max_new_tokens=longest, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            hits += sum(t.strip() == a for t, a in zip(texts, answers[i:i + args.eval_batch_size]))
    return len(split) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="../shared/glue")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is kept")
    parser.add_argument("--bf16", action="store_true", help="each loop once more in bf16 autocast")
    args = parser.parse_args()

    from fusekit.data.loading import load_split
    from fusekit.data.tasks import get_task
    from fusekit.models.base import load_base_model

    task = get_task(args.task)
    split = load_split(task, "train", args.data).capped(args.examples, 0)
    dev = load_split(task, "validation", args.data).capped(args.examples, 0)
    base = load_base_model(args.model, task, objective="text")
    peak = {"fp32": matmul_peak(), "bf16": matmul_peak(torch.bfloat16) if args.bf16 else None}
    flops = {"train": 2 * needed_flops(base, split, args.max_length) / len(split),
             "score": needed_flops(base, dev, args.max_length) / len(dev)}  # per example
    runs = {"train: peft + Trainer (group_by_length)": lambda: trainer_training(args, base, split),
            "train: fusekit": lambda: fusekit_throughput(args),
            "score: generate, then compare": lambda: generate_scoring(args, base, dev),
            "score: fusekit": lambda: fusekit_scoring(args, dev)}
    if args.bf16:  # each pair again, peer first
        runs |= {"train, bf16: peft + Trainer (group_by_length, bf16=True)":
                 lambda: trainer_training(args, base, split, bf16=True),
                 "train, bf16: fusekit --precision bf16": lambda: fusekit_throughput(args, "bf16"),
                 "score, bf16: generate, then compare": lambda: generate_scoring(args, base, dev, bf16=True),
                 "score, bf16: fusekit --precision bf16": lambda: fusekit_scoring(args, dev, "bf16")}
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            results[name].append(run())
    print(f"\n{args.model}, {task.name}: {len(split)} training / {len(dev)} dev examples, batch {args.batch_size} "
          f"(scoring {args.eval_batch_size}), LoRA r={args.rank}, {torch.get_num_threads()} threads, best of "
          f"{args.repeats}; matmul peak float32 {peak['fp32'] / 1e9:.1f} GFLOP/s"
          + (f", bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s" if args.bf16 else ""))
    print("| work | examples/s | runs | ratio vs peer | needed GFLOP/s at this speed | fraction of peak |\n"
          "|---|---|---|---|---|---|")
    names = list(runs)
    for i, name in enumerate(names):
        rate, peer = max(results[name]), max(results[names[i - i % 2]])
        work = name.split(":")[0]
        achieved = flops[work.split(",")[0]] * rate
        limit = peak["bf16" if work.endswith("bf16") else "fp32"]
        print(f"| {name} | {rate:.1f} | {', '.join(f'{r:.1f}' for r in results[name])} | {rate / peer:.2f}x | "
              f"{achieved / 1e9:.1f} | {achieved / limit:.2f} |")
    if args.bf16:
        gain = {work: max(results[f"{work}, bf16: {name}"]) / max(results[f"{work}: fusekit"])
                for work, name in (("train", "fusekit --precision bf16"), ("score", "fusekit --precision bf16"))}
        print(f"\nfusekit in bf16 against fp32: training {gain['train']:.2f}x, scoring {gain['score']:.2f}x")


if __name__ == "__main__":
    main()
