"""`fusekit.merge`: the Python face of `fusekit merge`, for notebooks and scripts."""

from __future__ import annotations

from pathlib import Path

from fusekit.merging.params import PARAMETERS


def merge(inputs: list[str | Path], out: str | Path, method: str = "task-arithmetic", lam: float | str = 0.3,
          weights: list[float] | None = None, space: str = "delta-w", rank: int | None = None,
          val_examples: int = 200, seed: int = 0, device: str = "auto", overwrite: bool = False,
          shared_modules: str = "refuse", **params: float) -> dict:
    """Merge fusekit runs or PEFT LoRA adapters (folders or Hub ids) into `out`, exactly as `fusekit merge` does;
    returns the summary (method, chosen hyperparameters, rank, truncation error, search table).

    `lam="auto"` chooses λ (and a method's other hyperparameters) on held-out training data (fusekit runs only);
    `params` are the method's other hyperparameters: `density` (TIES), `rate` (DARE).

        fusekit.merge(["runs/sst2-lora", "runs/rte-lora"], out="merged/ta", lam=0.5)
        fusekit.merge(["./adapter-a", "./adapter-b"], out="merged/ties", method="ties", lam=1.0, density=0.3)
    """
    from fusekit.errors import FusekitError
    from fusekit.merging.merge import fuse

    known = {p.name for p in PARAMETERS} - {"lam"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise FusekitError(f"unknown merge parameter {unknown[0]!r} (expected one of {', '.join(sorted(known))})")
    fixed = {"lam": None if lam == "auto" else float(lam), **{name: params.get(name) for name in known}}
    return fuse([Path(i) for i in inputs], Path(out), method, fixed, {}, weights, space, rank, val_examples, seed,
                device, overwrite, shared_modules)
