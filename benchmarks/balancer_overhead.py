"""Per-step overhead and peak memory of each loss balancer over `uniform` in joint training, in one run.

Same model, tasks, batches and adapter for every balancer, each run in its own process (so its peak memory is its
own); the joint trainer's per-step time (median over the timed steps, the first steps skipped; the fastest of
`--rounds` interleaved rounds, which filters out a busy machine's slow moments) is compared with uniform's. CoBa is
timed at validation interval 1 and 10; FAMO needs one extra no-grad forward per task (the post-step losses), and
the table shows what that costs. The trainer backpropagates each task alone, so a step holds one task's
activations whatever the balancer. Beside each, the fraction of the float32 matmul peak (measured in the same
run) reached by what a step needs to learn from its examples: twice a forward over their real tokens
(`limits.forward_flops`; the mean over each task's training examples of the run), whatever the balancer spends on
top.

    python benchmarks/balancer_overhead.py --data ../shared/glue --tasks sst2,rte,mrpc --steps 12
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = [("uniform", {}), ("coba", {"coba_interval": 1, "coba_warmup": 2}),
            ("coba", {"coba_interval": 10, "coba_warmup": 2}), ("init-norm", {}), ("realtime", {}),
            ("uncertainty", {}), ("power-mean", {}), ("grad-normalize", {}), ("pcgrad", {}), ("gradnorm", {}),
            ("famo", {})]


def one_variant(args) -> dict:
    """Train one balancer's short joint run in this process: its median step time and the process's peak RSS."""
    from dataclasses import replace

    from fusekit.study.resources import measure
    from fusekit.training.joint import train_joint

    name, options = VARIANTS[args.variant]
    with tempfile.TemporaryDirectory() as out, measure() as usage:
        train_joint(replace(base_config(args), balancer=name, out=str(Path(out) / "run"), **options))
        records = [json.loads(line) for line in (Path(out) / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = sorted([r["seconds"] for r in records if "seconds" in r][2:])  # the first steps warm up
    return {"seconds": steps[len(steps) // 2], "peak_mb": usage["peak_rss_mb"]}


def base_config(args):
    from fusekit.config import JointConfig

    return JointConfig(tasks=args.tasks, model=args.model, data=args.data, batch_size=args.batch_size,
                       max_length=args.max_length, max_train=args.steps * args.batch_size, max_eval=8, epochs=1,
                       sampling="uniform", validation_examples=args.batch_size * 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/glue")
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default="sst2,rte,mrpc")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        print(json.dumps(one_variant(args)))
        return

    import torch
    from limits import forward_flops, matmul_peak

    from fusekit.data.loading import load_split
    from fusekit.data.tasks import get_task
    from fusekit.models.base import load_base_model

    k, config = len(args.tasks.split(",")), base_config(args)
    peak = matmul_peak()
    step_flops = 0.0  # a forward and a backward over one batch of each task, at each task's mean real length
    for name in args.tasks.split(","):
        task = get_task(name)
        base = load_base_model(args.model, task)
        data = base.encode(load_split(task, "train", args.data).capped(config.max_train, config.seed),
                           args.max_length)
        step_flops += 2 * forward_flops(base.model, sum(data.lengths)) / len(data) * args.batch_size

    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for number, (name, options) in enumerate(VARIANTS):
            label = name + (f" (interval {options['coba_interval']})" if name == "coba" else "")
            run = subprocess.run([sys.executable, __file__, "--variant", str(number), *sys.argv[1:]],
                                 capture_output=True, text=True, check=True)
            measured = json.loads(run.stdout.splitlines()[-1])
            best = results.setdefault(label, measured)
            best["seconds"] = min(best["seconds"], measured["seconds"])
            best["peak_mb"] = min(best["peak_mb"], measured["peak_mb"])
    uniform = results["uniform"]
    print(f"\njoint step, {k} tasks × batch {args.batch_size}, max length {args.max_length}, median step time, "
          f"best of {args.rounds} rounds, each balancer in its own process; float32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads); a step needs {step_flops / 1e9:.1f} GFLOP")
    print("| balancer | s/step | vs uniform | peak RSS (MiB) | vs uniform | fraction of peak |")
    print("|---|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['seconds']:.3f} | {r['seconds'] / uniform['seconds']:.2f}x | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] / uniform['peak_mb']:.2f}x | {step_flops / r['seconds'] / peak:.2f} |")


if __name__ == "__main__":
    main()
