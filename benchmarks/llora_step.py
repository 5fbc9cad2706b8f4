"""Time and peak memory of one training step: L-LoRA (module and network scope) against LoRA, in one run.

Each variant runs in its own subprocess (so peak memory is its own), on the same model, batch and sequence
length; the table gives ms/step, the step's peak memory over the loaded model (CPU: peak RSS growth; CUDA:
peak allocated growth) and ratios against LoRA, and the FLOPs the step needs (`limits.forward_flops` of the batch:
LoRA and module scope twice a forward, the forward and a backward that carries gradients through the frozen
weights to the activations but computes none of theirs; network scope three times, its jvp carrying a tangent
beside the primal) as a fraction of the float32 matmul peak measured in the same run.

    python benchmarks/llora_step.py --batch-size 32 --length 128 --steps 10
    python benchmarks/llora_step.py --model smollm2-135m --batch-size 8 --length 64 --steps 5   # text to text
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = {"lora": ("lora", None, None), "l-lora module": ("l-lora", "module", None),
            "l-lora network, lean backward": ("l-lora", "network", "lean"),
            "l-lora network, jvp backward": ("l-lora", "network", "jvp")}


def current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def measure(kind: str, scope: str | None, backward: str | None, args) -> dict:
    import torch
    from limits import forward_flops

    from fusekit.artifacts.run_folder import build_adapted_model
    from fusekit.data.tasks import get_task
    from fusekit.data.text import CHOICES
    from fusekit.evaluation.loop import autocast, task_loss
    from fusekit.models.adapters import AdapterSpec
    from fusekit.models.base import load_base_model, resolve_device

    device = resolve_device(args.device)
    task = get_task("sst2")
    torch.manual_seed(0)
    base = load_base_model(args.model, task)
    spec = AdapterSpec(kind=kind, rank=args.rank, alpha=2.0 * args.rank, linearize=scope, lora_init=args.lora_init)
    model = build_adapted_model(base, spec, network_backward=backward or "lean").to(device).train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    vocab = base.tokenizer.vocab_size
    batch = {"input_ids": torch.randint(min(1000, vocab // 2), vocab, (args.batch_size, args.length), device=device),
             "attention_mask": torch.ones(args.batch_size, args.length, dtype=torch.long, device=device),
             "labels": torch.randint(0, 2, (args.batch_size,), device=device)}
    if model.text:  # a generative model writes the answer: its two answer tokens, read at the last position
        batch[CHOICES] = torch.tensor([[vocab // 3, vocab // 2]], device=device).expand(args.batch_size, -1)

    def step() -> None:
        with autocast(device):
            loss = task_loss(task, model(batch), batch, model.text)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = current_rss()
    step()  # warm-up (allocator, lazy init), counted in the peak: the first step is a step too
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:  # high-water mark of the process, less what the loaded model already held
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times.sort()
    passes = 3 if scope == "network" else 2
    needed = passes * forward_flops(base.model, args.batch_size * args.length, args.batch_size if model.text else 0)
    return {"ms": 1000 * times[len(times) // 2], "peak_mb": peak / 2**20, "device": str(device), "flops": needed,
            "params": sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lora-init", default="nonzero")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(*VARIANTS[args.variant], args)))
        return

    import torch
    from limits import matmul_peak

    results = {}
    for name in VARIANTS:
        run = subprocess.run([sys.executable, __file__, "--variant", name, *sys.argv[1:]],
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(run.stdout.splitlines()[-1])
    ref = results["lora"]
    peak = matmul_peak(device=ref["device"])
    print(f"\none training step, batch {args.batch_size} x {args.length} tokens, r={args.rank}, "
          f"lora_init={args.lora_init}, {ref['device']}, median of {args.steps}; float32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    print("| variant | ms/step | time vs LoRA | peak MB | memory vs LoRA | parameters + buffers | needed GFLOP/step "
          "| fraction of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ms']:.0f} | {r['ms'] / ref['ms']:.2f}x | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] / ref['peak_mb']:.2f}x | {r['params']:,} | {r['flops'] / 1e9:.1f} | "
              f"{r['flops'] / (r['ms'] / 1000) / peak:.2f} |")


if __name__ == "__main__":
    main()
