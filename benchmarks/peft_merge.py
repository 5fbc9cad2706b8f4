"""Merging adapters users already have: N rank-16 LoRA adapters of a ~124M-parameter causal LM (GPT-2 small's
config, random weights), made with plain peft, merged by fusekit (`fusekit merge` on PEFT folders, exact
concatenation in ΔW space, written as a PEFT folder) against peft's own `add_weighted_adapter(combination_type=
"cat")` followed by `save_pretrained` of the merged adapter, in one run.

Each measurement runs in its own process, at the default torch threads and at one thread (`OMP_NUM_THREADS=1`),
so that each tool is compared at its best. The time covers reading the N adapters, merging and writing the result;
peft also needs the base model in memory, which is loaded before its clock starts (fusekit never loads it). Memory
is the growth of the process's RSS high-water mark during the measurement. The limit: concatenation is memory
work, reading every adapter's factors and writing as many, so each time is also given as a multiple of that
traffic at the copy bandwidth measured in the same run (`limits.copy_bandwidth`).

    python benchmarks/peft_merge.py --adapters 8 --rank 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from limits import copy_bandwidth  # this folder's module

TARGETS = ["c_attn", "c_proj", "c_fc"]


def make_adapters(folder: Path, n: int, rank: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder / "base")  # GPT-2 small: 124M parameters
    for i in range(n):
        torch.manual_seed(100 + i)
        model = get_peft_model(GPT2LMHeadModel.from_pretrained(folder / "base"),
                               LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        model.save_pretrained(folder / f"a{i}")


def measure(tool: str, folder: Path, n: int) -> dict:
    from fusekit.study.resources import measure as usage_of

    adapters = [folder / f"a{i}" for i in range(n)]
    out = folder / f"merged-{tool}-{os.getpid()}"  # one folder per measurement
    if tool == "peft":
        from peft import PeftModel
        from transformers import GPT2LMHeadModel

        base = GPT2LMHeadModel.from_pretrained(folder / "base")
        with usage_of() as usage:
            model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="a0")
            for i, path in enumerate(adapters[1:], start=1):
                model.load_adapter(str(path), adapter_name=f"a{i}")
            model.add_weighted_adapter([f"a{i}" for i in range(n)], [1.0] * n, "merged", combination_type="cat")
            model.save_pretrained(str(out), selected_adapters=["merged"])
    else:
        from fusekit.merging.methods.task_arithmetic import TaskArithmetic
        from fusekit.merging.peft_inputs import merge_peft

        with usage_of() as usage:
            merge_peft([str(a) for a in adapters], out, TaskArithmetic(1.0), None, None, "refuse", False)
    return usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # tool folder n
    args = parser.parse_args()
    if args.measure:
        tool, folder, n = args.measure
        print(json.dumps(measure(tool, Path(folder), int(n))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        make_adapters(Path(tmp), args.adapters, args.rank)
        result = {(tool, threads): run_measure(tool, tmp, args.adapters, threads)
                  for threads in ("default", "1") for tool in ("fusekit", "peft")}
        f = min((result["fusekit", t] for t in ("default", "1")), key=lambda r: r["seconds"])
        traffic = 2 * sum((Path(tmp) / f"a{i}" / "adapter_model.safetensors").stat().st_size
                          for i in range(args.adapters))
        bound = traffic / copy_bandwidth()
        print(f"\n{args.adapters} rank-{args.rank} LoRA adapters of GPT-2 small (124M), targets {', '.join(TARGETS)}; "
              f"reading and writing their {traffic / 2**20:.0f} MB of factors at the measured copy bandwidth takes "
              f"{1000 * bound:.1f} ms")
        print("| merge (exact concatenation) | threads | seconds | vs fusekit's best | RSS growth MB | "
              "vs fusekit's best | × the memory bound |")
        print("|---|---|---|---|---|---|---|")
        for (tool, threads), r in result.items():
            label = "fusekit merge (PEFT inputs)" if tool == "fusekit" else "peft add_weighted_adapter cat + save"
            print(f"| {label} | {threads} | {r['seconds']:.2f} | {r['seconds'] / f['seconds']:.2f}x | "
                  f"{r['rss_growth_mb']:.0f} | {r['rss_growth_mb'] / max(f['rss_growth_mb'], 0.1):.2f}x | "
                  f"{r['seconds'] / bound:.0f}x |")


def run_measure(tool: str, folder: str, n: int, threads: str) -> dict:
    """One measurement in its own process, at the default torch threads or at `threads`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    done = subprocess.run([sys.executable, __file__, "--measure", tool, folder, str(n)], capture_output=True,
                          text=True, check=True, env=env)
    return json.loads(done.stdout.splitlines()[-1])


if __name__ == "__main__":
    main()
