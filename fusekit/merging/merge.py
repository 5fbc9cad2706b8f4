"""`fusekit merge`: load runs, choose hyperparameters if asked, merge, write the merged folder."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from fusekit.artifacts.merged_folder import write_merged
from fusekit.artifacts.output import claim_output
from fusekit.artifacts.run_folder import load_run
from fusekit.config import SEED, short
from fusekit.errors import FusekitError
from fusekit.merging.methods import make_method, method_parameters
from fusekit.merging.params import PARAMETERS
from fusekit.merging.peft_inputs import is_peft_folder, merge_peft
from fusekit.merging.search import search, searched
from fusekit.merging.stream import merge
from fusekit.models.base import resolve_device
from fusekit.progress import console, tracked


def fuse(folders: list[Path], out: Path, method: str, fixed: dict, grid: dict, weights: list[float] | None,
         space: str, rank: int | None, val_examples: int, seed: int, device: str, overwrite: bool,
         shared_modules: str = "refuse") -> dict:
    """Write the merged folder; return what was done (out, method, params, space, rank, truncation error, search).

    `fixed` holds λ (None: 'auto'), density and rate (None: not given); `grid` the values to search.

    A hyperparameter is searched when it has a grid, or when λ is 'auto' and it was not given (default grid).
    """
    make_method(method)  # an unknown method or a bad value fails before any loading
    check_merge_settings(fixed, grid, weights, rank, val_examples, seed)
    plain = [is_peft_folder(Path(f)) or not Path(f).exists() for f in folders]
    if any(plain):
        if not all(plain):
            raise FusekitError("mix of fusekit runs and other PEFT adapters: merge one kind at a time")
        return _fuse_peft(folders, out, method, fixed, grid, weights, space, rank, seed, overwrite, shared_modules)
    runs = [load_run(folder) for folder in folders]
    inputs = [*folders, *(r.config.data for r in runs), *(r.config.model for r in runs)]
    with claim_output(out, overwrite, inputs):  # never over an input (runs, their data and model), one writer
        values = _candidates(method, fixed, grid)
        statistics = _statistics(runs, method, space, val_examples, resolve_device(device), seed)
        params, searched_on = {name: v[0] for name, v in values.items()}, {"search": None}
        if any(len(v) > 1 for v in values.values()):
            result = search(runs, method, values, space, rank, weights, val_examples, resolve_device(device), seed,
                            statistics)
            params = {**params, **result.best}
            searched_on = {"search": result.rows, "search_examples": result.examples, "search_own": result.own,
                           "search_standard_error": result.standard_error}
            _print_search(result.rows, result.own, searched(method))
            best = ", ".join(f"{k}={v}" for k, v in result.best.items())
            error = "" if result.standard_error is None else f" (standard error {result.standard_error:.3f})"
            console.print(f"chose {best} on held-out training data{error}")
        chosen = make_method(method, seed=seed, **params)
        if statistics is not None:
            chosen.stats = statistics
        vector, report = merge(runs, chosen, weights, space, rank, progress=True)
        summary = {
            "method": chosen.name, "params": chosen.params(), "space": space, "weights": weights or [1.0] * len(runs),
            "rank": report.rank, "truncation_error": report.truncation_error,
            "worst_layer_truncation_error": report.worst_layer_error, **searched_on,
        }
        if chosen.statistics == "coefficients":  # AdaMerging's learned λ per layer and task, for the report
            summary["coefficients"] = {key.rsplit(".lora_", 1)[0]: [float(c) for c in values]
                                       for key, values in statistics.items()}
        write_merged(out, runs, vector, summary, overwrite)
        note = f", SVD truncation error {report.truncation_error:.4f}" if report.truncation_error else ""
        console.print(f"wrote {out} · {chosen.name} {chosen.params()} · {space} · rank {report.rank}{note}")
    return {"out": str(out), **summary}


def _fuse_peft(sources, out, method, fixed, grid, weights, space, rank, seed, overwrite, shared_modules) -> dict:
    """PEFT LoRA adapters fusekit did not train: merged in ΔW space with the values given (no search: fusekit
    knows neither their task heads nor their data)."""
    if space != "delta-w":
        raise FusekitError("adapters without φ0 merge only in ΔW space: use --space delta-w")
    if fixed["lam"] is None or any(grid.values()) or make_method(method).statistics:
        raise FusekitError("--lambda auto, search grids and data-aware methods (regmean) need fusekit runs "
                           "(their heads and data): give --lambda and a data-free method")
    params = {p.name: fixed.get(p.name) if fixed.get(p.name) is not None else p.default
              for p in method_parameters(method)}
    return merge_peft([str(s) for s in sources], out, make_method(method, seed=seed, **params), weights, rank,
                      shared_modules, overwrite)


def check_merge_settings(fixed: dict, grid: dict, weights: list[float] | None, rank: int | None,
                         val_examples: int, seed: int) -> None:
    """Every hyperparameter, weight, rank and sample size in range (one line naming the flag otherwise)."""
    for param in PARAMETERS:
        for value in [fixed.get(param.name), *(grid.get(param.name) or [])]:
            if value is not None:
                param.check(value)
    if weights is not None and (not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0):
        raise FusekitError(f"--weights {short(weights)}: expected finite numbers ≥ 0, not all 0")
    if rank is not None and rank < 1:
        raise FusekitError(f"--rank {rank}: expected an integer ≥ 1")
    if val_examples < 1:
        raise FusekitError(f"--val-examples {val_examples}: expected an integer ≥ 1")
    if SEED.problem(seed):
        raise FusekitError(f"--seed {seed}: expected {SEED.problem(seed)}")


def _statistics(runs, method: str, space: str, examples: int, device, seed: int) -> dict | None:
    """key → each run's statistic, for methods that merge with data: input Gram matrices per layer (RegMean, ΔW
    space) or diagonal Fishers per parameter (Fisher merging, factor space); None for the others."""
    made = make_method(method)
    kind = made.statistics
    if kind is None:
        return None
    if space != made.space:
        raise FusekitError(f"{method} merges in {made.space} space: use --space {made.space}")
    from fusekit.merging.statistics import learn_coefficients, run_statistics

    if kind == "coefficients":  # learned jointly over the runs, not one run at a time
        return learn_coefficients(runs, examples, device, seed)
    per_run = [run_statistics(run, kind, examples, device, seed)
               for run in tracked(runs, f"{method} statistics", len(runs))]
    return {key: [stats[key] for stats in per_run] for key in per_run[0]}


def _candidates(method: str, fixed: dict, grid: dict) -> dict[str, list[float]]:
    """The values to try of each hyperparameter the method takes: its grid, else the value given, else (λ 'auto')
    the default grid, else the default."""
    values = {}
    for param in method_parameters(method):
        if grid.get(param.name):
            values[param.name] = grid[param.name]
        elif fixed.get(param.name) is not None:
            values[param.name] = [fixed[param.name]]
        elif fixed["lam"] is None:
            values[param.name] = list(param.grid)
        else:
            values[param.name] = [param.default]
    return values


def _print_search(rows: list[dict], own: dict[str, float], names: tuple[str, ...]) -> None:
    """The search table, with the own adapters' scores that normalize it as its last row."""
    table = Table(title="hyperparameter search on held-out training data")
    for column in (*names, *own, "avg normalized"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{row[n]:g}" for n in names), *(f"{row[t]:.4f}" for t in own), f"{row['normalized']:.4f}")
    table.add_row(*(["own"] + [""] * (len(names) - 1)), *(f"{v:.4f}" for v in own.values()), "1", style="dim")
    console.print(table)
