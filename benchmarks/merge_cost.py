"""Time and memory to merge N = 2, 4, 8 LoRA adapters: fusekit's streamed merge against peft's
`add_weighted_adapter`, on the same adapters, in one run.

The adapters are N random LoRA adapters (r = 8, query/value) of the real model, written both as fusekit run
folders and as PEFT folders. Two merges are compared: the exact concatenation (fusekit task arithmetic in ΔW space
vs peft `combination_type="cat"`) and a rank-8 SVD of the summed ΔW (fusekit `--rank 8` vs peft `"svd"`); then
fusekit's other ΔW-space methods (TIES, DARE, TSV-M, KnOTS-TIES) against its task arithmetic. Each
measurement runs in its own process, the peft comparison at the default torch threads and at one thread
(`OMP_NUM_THREADS=1`), so that each tool is compared at its best; the time covers loading the N adapters and
merging them (the base model peft needs is loaded before the clock starts, so peft is not charged for it).
Memory is the growth of the process's RSS high-water mark during the measurement (the mark is reset when it
starts, so imports and the preloaded model do not count). The limit: every merge must at least read the N
adapters' factors; the exact concatenation also writes as many. That traffic at the copy bandwidth measured in the
same run (`limits.copy_bandwidth`) is printed with the table, and each fusekit time as a multiple of it.

    python benchmarks/merge_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from limits import copy_bandwidth  # this folder's module


def make_adapters(folder: Path, n: int, model: str | None) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from fusekit.artifacts.run_folder import build_adapted_model, save_run
    from fusekit.config import TrainConfig
    from fusekit.data.tasks import get_task
    from fusekit.models.adapters import AdapterSpec
    from fusekit.models.base import load_base_model

    task = get_task("sst2")
    for i in range(n):
        torch.manual_seed(100 + i)
        base = load_base_model(model, task)
        adapted = build_adapted_model(base, AdapterSpec(rank=8, alpha=16.0))
        adapted.load_adapter_state({k: v + 0.02 * torch.randn_like(v) for k, v in adapted.init_state().items()})
        (folder / f"a{i}").mkdir(parents=True)
        save_run(folder / f"a{i}", TrainConfig(model=model), base, adapted, task)
        # peft's add_weighted_adapter refuses adapters with modules_to_save: give it the LoRA weights alone
        config = json.loads((folder / f"a{i}" / "adapter_config.json").read_text())
        config["modules_to_save"], config["task_type"] = None, None  # SEQ_CLS would add the head back
        (folder / f"peft{i}").mkdir()
        (folder / f"peft{i}" / "adapter_config.json").write_text(json.dumps(config))
        weights = load_file(str(folder / f"a{i}" / "adapter_model.safetensors"))
        save_file({k: v for k, v in weights.items() if ".lora_" in k},
                  str(folder / f"peft{i}" / "adapter_model.safetensors"))


def measure(tool: str, combination: str, folder: Path, n: int, model: str | None) -> dict:
    from fusekit.study.resources import measure as usage_of

    if tool == "peft":
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        from fusekit.models.base import resolve_model

        base = AutoModelForSequenceClassification.from_pretrained(resolve_model(model), num_labels=2)
        folders = [folder / f"peft{i}" for i in range(n)]
        with usage_of() as usage:
            peft_model = PeftModel.from_pretrained(base, str(folders[0]), adapter_name="a0")
            for i, path in enumerate(folders[1:], start=1):
                peft_model.load_adapter(str(path), adapter_name=f"a{i}")
            extra = {"svd_rank": 8} if combination == "svd" else {}
            peft_model.add_weighted_adapter([f"a{i}" for i in range(n)], [1.0] * n, "merged",
                                            combination_type=combination, **extra)
    else:
        from fusekit.artifacts.run_folder import load_run
        from fusekit.merging.methods import make_method
        from fusekit.merging.stream import merge_vectors

        method = combination if combination in METHOD_ROWS else "task-arithmetic"
        rank = 8 if combination == "svd" else None
        with usage_of() as usage:
            runs = [load_run(folder / f"a{i}") for i in range(n)]
            runs = [replace(r, head_task=f"task{i}") for i, r in enumerate(runs)]
            merge_vectors(runs, make_method(method, lam=1.0), space="delta-w", rank=rank)
    return usage


# fusekit's ΔW-space methods, each timed against task arithmetic's exact merge of the same adapters
METHOD_ROWS = ("ties", "dare", "tsv-m", "knots-ties")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--sizes", default="2,4,8")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)  # tool combination folder n
    args = parser.parse_args()
    if args.measure:
        tool, combination, folder, n = args.measure
        print(json.dumps(measure(tool, combination, Path(folder), int(n), args.model)))
        return
    sizes = [int(n) for n in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        make_adapters(Path(tmp), max(sizes), args.model)
        factors = (Path(tmp) / "peft0" / "adapter_model.safetensors").stat().st_size  # one adapter's
        bandwidth = copy_bandwidth()

        def bound(n: int, combination: str) -> float:
            """Seconds to read n adapters' factors (and, concatenated, write them) at the copy bandwidth."""
            return (2 if combination == "cat" else 1) * n * factors / bandwidth

        print(f"one adapter's factors: {factors / 2**20:.1f} MB; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
        print("| merge | N | threads | fusekit s | peft s | time peft/fusekit | fusekit MB | peft MB | "
              "memory peft/fusekit | fusekit × the memory bound |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for combination in ("cat", "svd"):
            for n in sizes:
                for threads in ("default", "1"):
                    f, p = (run_measure(tool, combination, tmp, n, args.model, threads) for tool in ("fusekit", "peft"))
                    label = "exact concat (cat)" if combination == "cat" else "rank-8 SVD (svd)"
                    fm, pm = f["rss_growth_mb"], p["rss_growth_mb"]
                    print(f"| {label} | {n} | {threads} | {f['seconds']:.2f} | {p['seconds']:.2f} | "
                          f"{p['seconds'] / f['seconds']:.1f}x | {fm:.1f} | {pm:.1f} | {pm / max(fm, 0.1):.1f}x | "
                          f"{f['seconds'] / bound(n, combination):.0f}x |", flush=True)
        print("\n| fusekit method (ΔW space) | N | seconds | × task arithmetic | MB | × the memory bound |")
        print("|---|---|---|---|---|---|")
        for n in sizes:
            reference = run_measure("fusekit", "cat", tmp, n, args.model)
            for method in METHOD_ROWS:
                m = run_measure("fusekit", method, tmp, n, args.model)
                print(f"| {method} | {n} | {m['seconds']:.2f} | {m['seconds'] / reference['seconds']:.1f}x | "
                      f"{m['rss_growth_mb']:.1f} | {m['seconds'] / bound(n, method):.0f}x |", flush=True)


def run_measure(tool: str, combination: str, folder: str, n: int, model: str | None,
                threads: str = "default") -> dict:
    """One measurement in its own process (imports and caches of one never flatter another), at the default
    torch threads or at `threads`."""
    extra = ["--model", model] if model else []
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    done = subprocess.run([sys.executable, __file__, "--measure", tool, combination, folder, str(n), *extra],
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.splitlines()[-1])


if __name__ == "__main__":
    main()
