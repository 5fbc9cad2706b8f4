"""`fusekit.merge`: the Python face of `fusekit merge`, for notebooks and scripts."""

from __future__ import annotations

from pathlib import Path


def merge(inputs: list[str | Path], out: str | Path, overwrite: bool = False, **settings) -> dict:
    """Merge fusekit runs or PEFT LoRA adapters (folders or Hub ids) into `out`, exactly as `fusekit merge` does;
    returns the summary (method, chosen hyperparameters, rank, truncation error, search table).

    `settings` are `MergeConfig`'s fields (fusekit.merging.config): `method`, `lam`, `density` (TIES), `rate`
    (DARE), `search=True` or grids (`lambdas=[...]`) to choose them on held-out training data (fusekit runs only),
    `weights`, `space`, `rank`, `val_examples`, `seed`, `device`, `shared_modules`.

        fusekit.merge(["runs/sst2-lora", "runs/rte-lora"], out="merged/ta", lam=0.5)
        fusekit.merge(["./adapter-a", "./adapter-b"], out="merged/ties", method="ties", lam=1.0, density=0.3)
    """
    from fusekit.config import from_mapping
    from fusekit.merging.config import MergeConfig
    from fusekit.merging.merge import run_merge

    config = from_mapping(MergeConfig, dict(settings), "fusekit.merge")
    return run_merge(config, [Path(i) for i in inputs], Path(out), overwrite)
