"""Per-step overhead of each loss balancer over `uniform` in joint training, in one run.

Same model, tasks, batches and adapter for every balancer; the joint trainer's per-step time (median over the
timed steps, the first steps skipped; the fastest of `--rounds` interleaved rounds, which filters out a busy
machine's slow moments) is compared with uniform's. CoBa is timed at validation interval 1 and 10;
the gradient methods need one backward per task, FAMO one extra no-grad forward per task (the post-step losses),
and the table shows what that costs. Beside each, the fraction of the float32 matmul peak (measured in the same
run) reached by what a step needs to learn from its examples: twice a forward over their real tokens
(`limits.forward_flops`; the mean over each task's training examples of the run), whatever the balancer spends on
top.

    python benchmarks/balancer_overhead.py --data ../shared/glue --tasks sst2,rte,mrpc --steps 12
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

VARIANTS = [("uniform", {}), ("coba", {"coba_interval": 1, "coba_warmup": 2}),
            ("coba", {"coba_interval": 10, "coba_warmup": 2}), ("init-norm", {}), ("realtime", {}),
            ("uncertainty", {}), ("power-mean", {}), ("grad-normalize", {}), ("pcgrad", {}), ("gradnorm", {}),
            ("famo", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/glue")
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default="sst2,rte,mrpc")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from dataclasses import replace

    import torch
    from limits import forward_flops, matmul_peak

    from fusekit.config import JointConfig
    from fusekit.data.loading import load_split
    from fusekit.data.tasks import get_task
    from fusekit.models.base import load_base_model
    from fusekit.training.joint import train_joint

    k = len(args.tasks.split(","))
    base_config = JointConfig(tasks=args.tasks, model=args.model, data=args.data, batch_size=args.batch_size,
                       max_length=args.max_length, max_train=args.steps * args.batch_size, max_eval=8, epochs=1,
                       sampling="uniform", validation_examples=args.batch_size * 4)

    peak = matmul_peak()
    step_flops = 0.0  # a forward and a backward over one batch of each task, at each task's mean real length
    for name in args.tasks.split(","):
        task = get_task(name)
        base = load_base_model(args.model, task)
        data = base.encode(load_split(task, "train", args.data).capped(base_config.max_train, base_config.seed),
                           args.max_length)
        step_flops += 2 * forward_flops(base.model, sum(data.lengths)) / len(data) * args.batch_size

    def median_step(name: str, options: dict) -> float:
        with tempfile.TemporaryDirectory() as out:
            train_joint(replace(base_config, balancer=name, out=str(Path(out) / "run"), **options))
            records = [json.loads(line) for line in (Path(out) / "run" / "metrics.jsonl").read_text().splitlines()]
        steps = sorted([r["seconds"] for r in records if "seconds" in r][2:])  # the first steps warm up
        return steps[len(steps) // 2]

    timings: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, options in VARIANTS:
            label = name + (f" (interval {options['coba_interval']})" if name == "coba" else "")
            timings[label] = min(timings.get(label, float("inf")), median_step(name, options))
    print(f"\njoint step, {k} tasks × batch {args.batch_size}, max length {args.max_length}, median step time, "
          f"best of {args.rounds} rounds; float32 matmul peak {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} "
          f"threads); a step needs {step_flops / 1e9:.1f} GFLOP")
    print("| balancer | s/step | vs uniform | fraction of peak |\n|---|---|---|---|")
    for label, seconds in timings.items():
        print(f"| {label} | {seconds:.3f} | {seconds / timings['uniform']:.2f}x | {step_flops / seconds / peak:.2f} |")


if __name__ == "__main__":
    main()
