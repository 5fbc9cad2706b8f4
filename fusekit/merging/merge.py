"""`fusekit merge`: load runs, choose hyperparameters if asked, merge, write the merged folder (one entry point,
`run_merge(config, inputs, out)`, as mergekit's `run_merge`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.table import Table

from fusekit.artifacts.merged_folder import write_merged
from fusekit.artifacts.output import claim_output
from fusekit.artifacts.run_folder import load_run
from fusekit.config import from_mapping
from fusekit.errors import FusekitError
from fusekit.evaluation.calibration import held_out_calibration
from fusekit.merging.config import MergeConfig
from fusekit.merging.criteria import CRITERIA
from fusekit.merging.methods import MergeMethod, make_method, method_parameters
from fusekit.merging.peft_inputs import is_peft_folder, merge_peft
from fusekit.merging.search import held_out_scorers, nothing_held_out, search, searched
from fusekit.merging.stream import merge_vectors
from fusekit.models.base import resolve_device
from fusekit.progress import console, tracked


def run_merge(config: MergeConfig, inputs: list[Path], out: Path, overwrite: bool = False) -> dict:
    """Write the merged folder of `inputs` (fusekit runs, or PEFT LoRA folders and Hub ids); return what was done
    (out, method, params, space, rank, truncation error, search)."""
    config = from_mapping(MergeConfig, dataclasses.asdict(config), "merge settings")  # also when built in Python
    method = make_method(config.method)
    for item in inputs:
        if Path(item).is_symlink() and not Path(item).exists():
            raise FusekitError(f"{item} is a symbolic link that leads nowhere (a loop, or its target is gone)")
    plain = [is_peft_folder(Path(f)) or not Path(f).exists() for f in inputs]
    if any(plain):
        if not all(plain):
            kinds = ", ".join(f"{f} ({'PEFT adapter or Hub id' if p else 'fusekit run'})"
                              for f, p in zip(inputs, plain))
            raise FusekitError(f"a mix of fusekit runs and other PEFT adapters: {kinds}; merge one kind at a time")
        return _merge_peft(config, method, inputs, out, overwrite)
    runs = [load_run(folder) for folder in inputs]
    config = dataclasses.replace(config, precision=config.precision or runs[0].config.precision)  # as it trained
    space = config.space or method.space or ("delta-w" if runs[0].vector.meta["kind"] == "lora" else "factors")
    if method.space is not None and space != method.space:
        raise FusekitError(f"{config.method} merges in {method.space} space: use --space {method.space} (its "
                           "default)")
    device = resolve_device(config.device)
    claimed = [*inputs, *(r.config.data for r in runs), *(r.config.model for r in runs)]
    with claim_output(out, overwrite, claimed):  # never over an input (runs, their data and model), one writer
        values = config.candidates(method_parameters(config.method))
        _check_held_out(runs, config, any(len(v) > 1 for v in values.values()) or method.statistics is not None
                        or config.calibrate)
        statistics = statistics_for(runs, method, config.val_examples, device, config.seed)
        if config.per_task and "lam" not in values:
            raise FusekitError(f"--per-task chooses one λ per task: {config.method} has no λ")
        params, weights, searched_on, calibration = _choose(runs, config, values, space, device, statistics)
        chosen = make_method(config.method, seed=config.seed, **params)
        if statistics is not None:
            chosen.stats = statistics
        vector, report = merge_vectors(runs, chosen, weights, space, config.rank, progress=True)
        summary = {
            "method": chosen.name, "params": chosen.params(), "space": space,
            "weights": weights or [1.0] * len(runs), "rank": report.rank,
            "truncation_error": report.truncation_error,
            "worst_layer_truncation_error": report.worst_layer_error, **searched_on,
            "settings": config.recorded(),
        }
        if chosen.statistics == "coefficients":  # AdaMerging's learned λ per layer and task, for the report
            summary["coefficients"] = {key.rsplit(".lora_", 1)[0]: [float(c) for c in values]
                                       for key, values in statistics.items()}
        if config.calibrate:  # a search has fitted them at the point it chose; without one, fitted here
            summary["calibration"] = _calibration(runs, vector, config.val_examples, device, config.seed,
                                                  config.precision) \
                if calibration is None else calibration
            _print_offsets(runs, summary["calibration"])
        write_merged(out, runs, vector, summary, overwrite)
        note = f", SVD truncation error {report.truncation_error:.4f}" if report.truncation_error else ""
        console.print(f"wrote {out} · {chosen.name} {chosen.params()} · {space} · rank {report.rank}{note}")
    return {"out": str(out), **summary}


def _choose(runs: list, config: MergeConfig, values: dict[str, list[float]], space: str, device,
            statistics: dict | None) -> tuple[dict[str, float], list[float] | None, dict, dict | None]:
    """(hyperparameters, weights, what the manifest records of the search, the chosen point's answer offsets when
    calibrated): the values given, or the best of a search on held-out training data when a hyperparameter has
    several."""
    params, weights = {name: v[0] for name, v in values.items()}, config.weights
    if not any(len(v) > 1 for v in values.values()):
        return params, weights, {"search": None}, None
    result = search(runs, config.method, values, space, config.rank, config.weights, config.val_examples,
                    device, config.seed, statistics, config.criterion, config.per_task, config.calibrate,
                    config.precision)
    params, weights = {**params, **result.best}, result.weights or weights
    _print_search(result.rows, result.own, searched(config.method), config.criterion)
    best = ", ".join(f"{k}={v}" for k, v in result.best.items())
    spread = "".join(f"; of the chosen {k}: {v:.3f}"
                     for k, v in result.choice_standard_error.get(config.criterion, {}).items())
    error = "" if result.standard_error is None else f" (standard error {result.standard_error:.3f}{spread})"
    per_task = "" if not config.per_task else " · per task λ " + ", ".join(
        f"{run.head_task} {params['lam'] * w:g}" for run, w in zip(runs, weights))
    console.print(f"chose {best}{per_task} on held-out training data{error}")
    return params, weights, {"search": result.rows, "search_examples": result.examples, "search_own": result.own,
                             "search_standard_error": result.standard_error,
                             "search_choice_standard_error": result.choice_standard_error.get(config.criterion, {}),
                             "search_choice_standard_error_by_criterion": result.choice_standard_error,
                             "search_criterion": config.criterion,
                             **({"per_task_search": result.task_rows} if config.per_task else {})}, \
        result.calibration


def _merge_peft(config: MergeConfig, method: MergeMethod, sources: list[Path], out: Path, overwrite: bool) -> dict:
    """PEFT LoRA adapters fusekit did not train: merged in ΔW space with the values given (no search: fusekit
    knows neither their task heads nor their data)."""
    if (config.space or "delta-w") != "delta-w":
        raise FusekitError("adapters without φ0 merge only in ΔW space: use --space delta-w")
    if config.searching or method.statistics or config.calibrate:
        raise FusekitError("--search, search grids, --calibrate and data-aware methods (regmean, fisher, adamerging) "
                           "need fusekit runs (their heads and data): give the values and a data-free method")
    params = config.candidates(method_parameters(config.method))
    chosen = make_method(config.method, seed=config.seed, **{name: v[0] for name, v in params.items()})
    return merge_peft([str(s) for s in sources], out, chosen, config.weights, config.rank, config.shared_modules,
                      overwrite)


def _check_held_out(runs: list, config: MergeConfig, selecting: bool) -> None:
    """A search or a data-aware merge reads held-out training examples: a run that left none of its task's unseen
    (it trained on all) is refused unless `select_on_seen` says so."""
    if not selecting or config.select_on_seen:
        return
    for run in runs:
        why = nothing_held_out(run)
        if why:
            raise FusekitError(f"{run.folder} left no training example unseen ({why}): a search or a data-aware "
                               "merge would select on examples it trained on (retrain with a smaller --max-train, "
                               "or pass --select-on-seen to accept that)")


def _calibration(runs: list, vector, examples: int, device, seed: int, precision: str) -> dict[str, list[float]]:
    """Each task's answer offsets, fitted on the held-out examples a search scores (never the reported split), for
    the tasks whose examples score better calibrated out of fold."""
    fitted = {}
    scorers = held_out_scorers(runs, examples, device, seed, precision)
    for run, scorer in tracked(list(zip(runs, scorers)), "calibrate answers", len(runs)):
        offsets = held_out_calibration(scorer.task, *scorer.outputs(vector))[1]
        if offsets is not None:
            fitted[run.head_task] = offsets
    return fitted


def _print_offsets(runs: list, calibration: dict[str, list[float]]) -> None:
    for run in runs:
        offsets = calibration.get(run.head_task)
        console.print(f"answer offsets {run.head_task}: " + (" ".join(f"{v:+.3f}" for v in offsets) if offsets
                      else "none (calibrated out of fold, its held-out examples scored no better)"))


def statistics_for(runs, method: MergeMethod, examples: int, device, seed: int) -> dict | None:
    """key → each run's statistic, for methods that merge with data (`kind`): input Gram matrices per layer
    (RegMean, ΔW space), diagonal Fishers per parameter (Fisher merging, factor space) or AdaMerging's learned
    coefficients; None for the others."""
    kind = method.statistics
    if kind is None:
        return None
    from fusekit.merging.statistics import learn_coefficients, run_statistics

    if kind == "coefficients":  # learned jointly over the runs, not one run at a time
        return learn_coefficients(runs, examples, device, seed, normalized=method.normalized, anchor=method.anchor)
    per_run = [run_statistics(run, kind, examples, device, seed)
               for run in tracked(runs, f"{method.name} statistics", len(runs))]
    return {key: [stats[key] for stats in per_run] for key in per_run[0]}


def _print_search(rows: list[dict], own: dict[str, float], names: tuple[str, ...], criterion: str) -> None:
    """The search table: every criterion (the one that chooses marked), the own adapters' scores last."""
    table = Table(title="hyperparameter search on held-out training data")
    for column in (*names, *own, *(f"{c} *" if c == criterion else c for c in CRITERIA)):
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{row[n]:g}" for n in names), *(f"{row[t]:.4f}" for t in own),
                      *(f"{row['criteria'][c]:.4f}" for c in CRITERIA))
    table.add_row(*(["own"] + [""] * (len(names) - 1)), *(f"{v:.4f}" for v in own.values()), *[""] * len(CRITERIA),
                  style="dim")
    console.print(table)
