"""`fusekit report`: turn a study folder (`fusekit run`) into a markdown report with tables and PNG plots.

Everything is read from what the stages wrote (scores, manifests, training logs, stage costs; read back by
`records.py`), so a report can be rendered at any time, even of an unfinished study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusekit.artifacts.atomic import atomic_write_text
from fusekit.artifacts.layout import (
    BASELINE,
    CONFIG,
    DISENTANGLEMENT_PLOT,
    EVAL,
    METRICS,
    REPORT,
    REPORT_FIGURES,
    SCALING_PLOT,
    SIMILARITY_PLOT,
    STAGES,
    STUDY_RECIPE,
    SWEEP_PLOT,
    TUNE,
    joint_plot,
)
from fusekit.artifacts.merged_folder import manifest_tasks
from fusekit.artifacts.output import written_by_fusekit
from fusekit.artifacts.reading import read_jsonl
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.evaluation.metrics import format_ci, mean_defined
from fusekit.merging.criteria import CRITERIA, cross_fitted
from fusekit.merging.params import PARAMETERS
from fusekit.study.criterion_choices import CHOICES
from fusekit.study.plan import StageId
from fusekit.study.plots import (
    coefficients_figure,
    disentanglement_figure,
    plot_joint,
    plot_scaling,
    plot_sweeps,
    save,
    similarity_figure,
)
from fusekit.study.records import (
    declared_tasks,
    declared_variants,
    disentanglement_grids,
    finished_runs,
    in_recipe_order,
    latest_records,
    multitask_rows,
    planned_stages,
    read_record,
    scaling_points,
    similarity_matrices,
    stage_ids,
    train_scores,
)
from fusekit.study.restore import published_scores
from fusekit.study.run import is_done


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def reproduction_line(study: Path) -> str | None:
    """In a study continued with --restore: whether the adapters trained again scored what was published, naming
    each that did not."""
    pairs = [(s.name, train_scores(study, s.id), published_scores(study, s.name)) for s in planned_stages(study)
             if s.kind == "train" and (study / s.name / CONFIG).is_file() and published_scores(study, s.name)]
    if not pairs:
        return None
    differing = [(name, mine, theirs) for name, mine, theirs in pairs if _metrics(mine) != _metrics(theirs)]
    line = (f"Trained again on this machine: {len(pairs)} adapters the study had published; "
            f"{len(pairs) - len(differing)} scored exactly the published dev scores")
    if not differing:
        return line + "."
    shown = [f"{name.removeprefix('train/')} {_score(mine, theirs)}" for name, mine, theirs in differing]
    return f"{line}; the others (now against published): {', '.join(shown)}."


def _score(mine: dict, theirs: dict) -> str:
    """The official score now against the published one; a last-digit difference shown as one, not as equal."""
    task = next(t for t in theirs if t in mine)
    now, then = mine[task]["score"], theirs[task]["score"]
    shown = f"{now:.4f} against {then:.4f}"
    return shown if f"{now:.4f}" != f"{then:.4f}" else f"{shown} ({abs(now - then):.1e} apart)"


def _metrics(scores: dict) -> dict:
    """A training stage's dev scores without its dev loss, whose last digits follow the thread count (design.md)."""
    return {task: {k: v for k, v in record.items() if k != "loss"} if isinstance(record, dict) else record
            for task, record in scores.items()}


def individual_table(study: Path) -> tuple[str, list[str]]:
    """Per-task scores of each adapter variant; over several seeds, mean ± 95% CI."""
    runs = finished_runs(study)
    found = {stage_id.task for stage_id in runs}
    tasks = [t for t in declared_tasks(study) if t in found]  # the recipe's order
    grouped: dict[tuple[str, str], list[dict]] = {}
    for stage_id, scores in runs.items():
        grouped.setdefault((stage_id.task, stage_id.variant), []).append(scores)
    variants = list(dict.fromkeys(v for _, v in grouped))
    rows = []
    for variant in variants:
        cells = []
        for task in tasks:
            found_scores = grouped.get((task, variant))
            official = get_task(task).metrics
            cells.append("/".join(format_ci([s[m] for s in found_scores]) for m in official)
                         if found_scores else "–")
        seeds = max(len(grouped.get((task, variant), [])) for task in tasks)
        rows.append([variant + (f" ({seeds} seeds)" if seeds > 1 else ""), *cells])
    rows += baseline_rows(study, tasks)
    header = ["adapter", *(f"{t} ({'/'.join(get_task(t).metrics)})" for t in tasks)]
    return _table(header, rows), tasks


def seed_differences(mine: dict[int, float | None], reference: dict[int, float | None]) -> list[float]:
    """Per-seed differences, over the seeds where both have a defined value."""
    return [mine[s] - reference[s] for s in sorted(mine.keys() & reference.keys())
            if mine[s] is not None and reference[s] is not None]


def paired_table(study: Path, tasks: list[str]) -> str | None:
    """Each variant minus the first, task by task, paired by seed: mean ± 95% CI of the per-seed differences
    (None unless some variant has two or more seeds in common with the first)."""
    by_seed: dict[str, dict[int, dict[str, float]]] = {}
    for stage_id, scores in finished_runs(study).items():
        if stage_id.seed is not None:
            by_seed.setdefault(stage_id.variant, {}).setdefault(stage_id.seed, {})[stage_id.task] = scores["score"]
    if len(by_seed) < 2:
        return None
    first, *others = in_recipe_order(study, list(by_seed))
    rows = []
    for variant in others:
        cells = []
        for task in tasks:
            differences = seed_differences({s: v.get(task) for s, v in by_seed[variant].items()},
                                           {s: v.get(task) for s, v in by_seed[first].items()})
            cells.append(format_ci(differences) if len(differences) > 1 else "–")
        rows.append([f"{variant} − {first}", *cells])
    if all(cell == "–" for row in rows for cell in row[1:]):
        return None
    return _table(["paired by seed", *tasks], rows)


def baseline_rows(study: Path, tasks: list[str]) -> list[list[str]]:
    """Majority class, zero-shot and head-only scores (baseline/<task>/), in the per-task table's format."""
    found = {t: read_record(study / "baseline" / t / BASELINE) for t in tasks}
    if not any(found.values()):
        return []
    rows = []
    for label, key in (("head-only (frozen checkpoint)", "head_only"), ("zero-shot", "zero_shot"),
                       ("majority class", "majority")):
        cells = []
        for task in tasks:
            scores = (found[task] or {}).get(key)
            cells.append("/".join(f"{scores[m]:.3f}" for m in get_task(task).metrics) if scores else "–")
        rows.append([label, *cells])
    return rows


def search_precision(manifests: list[dict]) -> list[str]:
    """How precisely the held-out searches chose: examples per task, the standard error of the selection score at
    the chosen point and that of the chosen λ (recorded by each search), as a paragraph; nothing when no merge
    recorded one."""
    errors = [m["search_standard_error"] for m in manifests if m.get("search_standard_error") is not None]
    if not errors:
        return []
    sizes = sorted({n for m in manifests for n in (m.get("search_examples") or {}).values()})
    examples = ("an unrecorded number of" if not sizes else
                f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}")
    verdict = ("below 0.02" if max(errors) < 0.02 else
               "above 0.02: grid points closer than about twice this are not told apart")
    text = (f"Held-out searches used {examples} examples per task; the standard error of the selection score (the "
            f"average normalized score, bootstrap over those examples) at the chosen point is {np.median(errors):.3f} "
            f"(median), {max(errors):.3f} (largest) over {len(errors)} searched merges: {verdict}.")
    spreads = [m["search_choice_standard_error"]["lam"] for m in manifests
               if "lam" in (m.get("search_choice_standard_error") or {})]
    if spreads:
        text += (f" The chosen λ's standard error (its spread over 200 bootstrap resamples of the held-out examples, "
                 f"each choosing again) is {np.median(spreads):.3f} (median), {max(spreads):.3f} (largest) over "
                 f"{len(spreads)} searches of λ.")
    recorded = [m["search_choice_standard_error_by_criterion"] for m in manifests
                if "search_choice_standard_error_by_criterion" in m]
    by_criterion = {c: [spread[c]["lam"] for spread in recorded if "lam" in spread.get(c, {})] for c in CRITERIA}
    if any(by_criterion.values()):
        text += " Had another criterion chosen, on the same resamples (median, largest): " + "; ".join(
            f"{c} {np.median(v):.3f}, {max(v):.3f}" for c, v in by_criterion.items() if v) + \
            f" (over {max(len(v) for v in by_criterion.values())} searches)."
    return [text, ""]


def _params(manifest: dict) -> str:
    params = manifest.get("params", {})
    shown = {**{p.name: p.label for p in PARAMETERS}, "balancer": "", "sampling": "", "temperature": "T"}
    chosen = ", ".join(f"{shown[k]}={v}" if shown[k] else str(v) for k, v in params.items() if k in shown) or "–"
    if manifest.get("method") == "joint" and "lr" in manifest.get("config", {}):  # a tune may have chosen it
        chosen += f", lr={manifest['config']['lr']:g}"
    calibrated = manifest.get("calibration")
    return chosen if calibrated is None else f"{chosen}, offsets: {', '.join(calibrated) or 'none'}"


def task_average(scores: dict, tasks: list[str], key: str) -> float | None:
    """A merged/joint folder's average over tasks of one key (score or normalized), undefined ones left out."""
    return mean_defined([scores[t][key] if t in scores else None for t in tasks])


FLAG_BELOW = 0.9  # a task keeping less than this share of its own adapter's score is flagged in the tables


def multitask_table(rows: list[tuple[StageId, dict, dict]], tasks: list[str], normalized: bool) -> str:
    """One row per merged/joint folder (per folder name across seeds: mean ± 95% CI): per-task normalized (or raw)
    scores and their average; '–' marks a task whose own adapter has no skill to normalize by, left out of the
    average; ⚠ a task that keeps less than FLAG_BELOW of its own adapter's score."""
    key = "normalized" if normalized else "score"
    groups: dict[str, list[tuple[dict, dict]]] = {}
    for stage_id, manifest, scores in rows:
        groups.setdefault(stage_id.setting, []).append((manifest, scores))
    body = []
    for name, members in groups.items():
        cells = []
        for task in tasks:
            values = [scores[task][key] for _, scores in members if task in scores and scores[task][key] is not None]
            kept = [scores[task]["normalized"] for _, scores in members
                    if task in scores and scores[task]["normalized"] is not None]
            flag = " ⚠" if kept and sum(kept) / len(kept) < FLAG_BELOW else ""
            cells.append(format_ci(values) + flag if values else "–")
        averages = [a for a in (task_average(scores, tasks, key) for _, scores in members) if a is not None]
        chosen = "; ".join(dict.fromkeys(_params(manifest) for manifest, _ in members))
        label = name + (f" ({len(members)} seeds)" if len(members) > 1 else "")
        body.append([label, chosen, *cells, f"**{format_ci(averages)}**" if averages else "–"])
    return _table(["adapter", "chosen", *tasks, "**average**"], body)


def paired_merge_table(study: Path, rows: list[tuple[StageId, dict, dict]], tasks: list[str]) -> str | None:
    """Each merge setting minus the first adapter variant's setting of the same method (another variant: in the same
    space where the first has it, the paper's comparison of L-LoRA with LoRA; the first variant's other spaces:
    against its first space), and a calibrated merge minus the same merge uncalibrated, paired by seed: mean ± 95%
    CI of the per-seed differences of the average normalized and the average raw score (None unless some pair
    shares two or more seeds)."""
    from fusekit.merging.config import SPACES

    normalized: dict[StageId, dict[int, float | None]] = {}
    raw: dict[StageId, dict[int, float | None]] = {}
    for stage_id, _, scores in rows:
        if stage_id.seed is not None:
            setting = dataclasses.replace(stage_id, seed=None)
            normalized.setdefault(setting, {})[stage_id.seed] = task_average(scores, tasks, "normalized")
            raw.setdefault(setting, {})[stage_id.seed] = task_average(scores, tasks, "score")
    first = declared_variants(study)[:1]
    body = []
    for setting in raw:
        spaces = SPACES if setting.variant in first else (setting.space, *SPACES)
        candidates = (dataclasses.replace(setting, variant=v, space=space) for v in first for space in spaces)
        variant_reference = next((r for r in candidates if r in raw), setting)
        twin = dataclasses.replace(setting, calibrated=False) if setting.calibrated else None  # what calibration adds
        for reference in (r for r in (variant_reference, twin) if r in raw and r != setting):
            raw_differences = seed_differences(raw[setting], raw[reference])
            normalized_differences = seed_differences(normalized[setting], normalized[reference])
            if len(raw_differences) > 1:
                body.append([f"{setting.leaf} − {reference.leaf}",
                             format_ci(normalized_differences) if len(normalized_differences) > 1 else "–",
                             format_ci(raw_differences), str(len(raw_differences))])
    return _table(["paired by seed", "Δ average normalized", "Δ average raw", "seeds"], body) if body else None


def scaling_table(points: dict[str, dict[int, list[float]]]) -> str:
    sizes = sorted({k for by_k in points.values() for k in by_k})
    rows = [[name, *(f"{np.mean(by_k[k]):.3f} ± {np.std(by_k[k]):.3f} (n={len(by_k[k])})" if k in by_k else "–"
                     for k in sizes)] for name, by_k in points.items()]
    return _table(["merge", *(f"k = {k}" for k in sizes)], rows)


def _position(declared: list[str], name: str) -> int:
    """Where `name` stands in the recipe's order (undeclared names last)."""
    return declared.index(name) if name in declared else len(declared)


def _xi_cell(grids: list) -> str:
    """Mean ξ over the whole grid (and over α ∈ [0, 1]² where the grid has points there), averaged over grids."""
    if not grids:
        return "–"
    inner = [g.mean_over(0.0, 1.0) for g in grids]
    text = f"{np.mean([g.xi.mean() for g in grids]):.3f}"
    return text if None in inner else f"{text} ({np.mean(inner):.3f})"


def disentanglement_section(study: Path, grids: dict[str, dict[str, object]], figure: Path) -> list[str]:
    """Mean ξ per pair and setting, and every complete pair's heatmaps on one colour scale: one row per pair, one
    column per setting (the recipe's variant order)."""
    variants, tasks = declared_variants(study), declared_tasks(study)
    settings = sorted({s for by_setting in grids.values() for s in by_setting},
                      key=lambda s: (_position(variants, next((v for v in variants if s.startswith(f"{v}-")), s)), s))
    grids = {pair: grids[pair] for pair in sorted(grids, key=lambda p: [_position(tasks, t) for t in p.split("+")])}
    rows = [[pair, *(_xi_cell([by_setting[s]] if s in by_setting else []) for s in settings)]
            for pair, by_setting in grids.items()]
    complete = [by_setting for by_setting in grids.values() if len(by_setting) == len(settings)]
    if len(complete) > 1:
        rows.append([f"**mean over {len(complete)} pairs**", *(_xi_cell([b[s] for b in complete]) for s in settings)])
    parts = ["## Weight disentanglement", "",
             "ξ(α1, α2): how often adding the other task's vector changes a task's predictions (disagreement rate; "
             "STS-B: |Δ similarity| / 5), summed over the pair's two tasks, on validation examples (an analysis: "
             "nothing is chosen on it). Cells: mean ξ over the whole α grid (in brackets: over α ∈ [0, 1]², where "
             "merges live); lower is more disentangled.", "", _table(["pair", *settings], rows), ""]
    if complete:
        results = [(f"{s} · {b[s].tasks[0]} + {b[s].tasks[1]}", b[s]) for b in complete for s in settings]
        save(disentanglement_figure(results, len(settings)), figure)
        parts += [f"![disentanglement]({REPORT_FIGURES}/{figure.name})", ""]
    return parts


def stage_table(study: Path) -> str:
    """Each finished stage's wall time, the interrupted tries its last one went on from included (a training stage
    resumes from its checkpoint: what it ran before counts; a try that started over drops them), its peak memory and
    what it ran on (stages logged before fusekit recorded it: –). A stage queued again after it finished (its
    folder retired by a retune, say) is not finished until it finishes again."""
    latest, interrupted = {}, {}
    path = study / STAGES
    for record in read_jsonl(path, "stage log") if path.is_file() else []:
        name = record.get("stage")
        if record.get("status") in ("queued", "running"):  # run again: what it cost before no longer stands
            latest.pop(name, None)
            if record.get("resumes") is False:
                interrupted.pop(name, None)
        elif record.get("status") == "stopped":
            interrupted[name] = interrupted.get(name, 0.0) + record.get("seconds", 0.0)
        elif {"stage", "seconds", "peak_rss_mb"} <= record.keys():  # the latest finished try of each stage
            latest[name] = {**record, "seconds": record["seconds"] + interrupted.pop(name, 0.0)}
    rows = [[name, f"{r['seconds'] / 60:.1f}", f"{r['peak_rss_mb']:.0f}",
             f"{r['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in r else "–", r.get("machine", "–")]
            for name, r in latest.items()]
    total = sum(r["seconds"] for r in latest.values())
    rows.append(["**total**", f"**{total / 60:.1f}**", "", "", ""])
    return _table(["stage", "wall (min)", "peak RSS (MiB)", "peak GPU (MiB)", "ran on"], rows)


def write_report(study: Path) -> Path:
    """Write the study's report and its PNGs (names in fusekit.artifacts.layout); return the markdown path."""
    if not (study / STUDY_RECIPE).is_file() or not written_by_fusekit(study):
        raise FusekitError(f"{study} is not a study folder (expected {STUDY_RECIPE} written by fusekit run)")
    figures = study / REPORT_FIGURES
    figures.mkdir(exist_ok=True)
    individual, tasks = individual_table(study)
    found = Found(study, figures, tasks, multitask_rows(study, "merge"), multitask_rows(study, "joint"))
    explained = ("Over several seeds: mean ± half-width of the 95% Student-t confidence interval." if tasks else
                 "No adapter has finished training yet: the study is in progress (`fusekit run` resumes it).")
    reproduced = reproduction_line(study)
    parts = [f"# fusekit report: {study.name}", "", progress_line(study), "",
             *([reproduced, ""] if reproduced else []),
             "## Individually finetuned adapters (GLUE validation)", "", explained, "",
             *([individual, ""] if tasks else [])]
    for section in SECTIONS:
        parts += section(found)
    path = study / REPORT
    atomic_write_text(path, "\n".join(parts))
    return path


def progress_line(study: Path) -> str:
    """How much of the recipe's plan has finished, per kind of stage, and which stages failed on their last try: a
    reader of an unfinished study's report knows what its tables rest on."""
    counts: dict[str, list[int]] = {}
    done = set()
    for stage in planned_stages(study):
        finished, planned = counts.setdefault(stage.id.folder, [0, 0])
        if is_done(stage, study) or (stage.kind in ("train", "joint") and published_scores(study, stage.name)):
            done.add(stage.name)  # published results of a study continued with --restore count as finished
        counts[stage.id.folder] = [finished + (stage.name in done), planned + 1]
    kinds = ", ".join(f"{kind} {finished}/{planned}" for kind, (finished, planned) in counts.items())
    state = "Finished" if len(done) == sum(c[1] for c in counts.values()) else "In progress"
    failed = [f"{name} ({record.get('error', 'no reason recorded')})" for name, record in latest_records(study).items()
              if record.get("status") == "failed" and name not in done]
    return (f"{state}: {len(done)} of {sum(c[1] for c in counts.values())} planned stages ({kinds})."
            + (f" Failed on their last try: {'; '.join(failed)}." if failed else ""))


@dataclass
class Found:
    """What the report's sections read: the study, where figures go, its tasks, its scored merges and joints."""

    study: Path
    figures: Path
    tasks: list[str]
    merged: list[tuple[StageId, dict, dict]]
    joint: list[tuple[StageId, dict, dict]]


def paired_section(found: Found) -> list[str]:
    paired = paired_table(found.study, found.tasks)
    return ["### Differences between adapter variants, paired by seed (official score)", "", paired, ""] if paired \
        else []


def multitask_section(found: Found) -> list[str]:
    merged, joint, tasks = found.merged, found.joint, found.tasks
    if not (merged or joint):
        return []
    parts = ["## Merged adapters and joint baselines: normalized score (score / own adapter's score)", "",
             "λ, TIES density and DARE rate chosen on held-out training examples, never on the reported split. "
             "– : the task's own adapter scored ≤ 0 (MCC or correlation), so there is nothing to normalize by; "
             f"the average leaves it out. ⚠ : the task keeps less than {FLAG_BELOW:.0%} of its own adapter's "
             "score; an average can hide it.",
             "", *search_precision([manifest for _, manifest, _ in merged]),
             multitask_table(merged + joint, tasks, normalized=True), "",
             "### The same, raw scores", "", multitask_table(merged + joint, tasks, normalized=False), ""]
    paired_merges = paired_merge_table(found.study, merged, tasks)
    if paired_merges:
        parts += ["### Merge settings against the first adapter's, paired by seed", "", paired_merges, ""]
    return parts


def criteria_section(found: Found) -> list[str]:
    """Which selection criterion chooses best: each search's choice on one half of its held-out examples, scored on
    the other half (none of it the reported split), over every searched merge of the study; beside it, for the
    report only, what each criterion's choice on all the held-out examples scores on dev (plain searches)."""
    judged = {c: [r for r in (cross_fitted(m.get("search") or [], c) for _, m, _ in found.merged) if r]
              for c in CRITERIA}
    if not judged[CRITERIA[0]]:
        return []
    on_dev = [choices for choices in (read_record(found.study / stage_id.name / EVAL).get(CHOICES)
                                      for stage_id, _, _ in found.merged) if choices]

    def dev(criterion: str, key: str) -> str:
        values = [c[criterion][key] for c in on_dev if c[criterion][key] is not None]
        return format_ci(values) if values else "–"

    rows = [[c, format_ci([r["average"] for r in judged[c]]), format_ci([r["worst"] for r in judged[c]]),
             str(len(judged[c])), dev(c, "average_normalized"), dev(c, "worst_normalized"), str(len(on_dev))]
            for c in CRITERIA]
    return ["## Which selection criterion chooses best", "",
            "Each search's grid scored on the even- and the odd-numbered held-out examples apart: a criterion chooses "
            "on one half and its choice is scored on the other (both directions averaged), so the verdict rests on "
            "examples the choice did not read and never on the reported split. Beside it, for reading only (nothing "
            "is chosen on it): the dev scores of the point each criterion prefers on all the held-out examples, over "
            "the plain searches (not per-task or calibrated ones, whose weights and offsets were fitted for the "
            "default criterion). Mean ± 95% CI over the searched merges.", "",
            _table(["criterion", "average normalized (other half)", "worst task (other half)", "searches",
                    "average normalized (dev)", "worst task (dev)", "searches (dev)"], rows), ""]


def sweep_section(found: Found) -> list[str]:
    sweeps: dict[tuple[str, str], list[dict]] = {}
    for stage_id, manifest, _ in found.merged:  # over several seeds, the first seed's sweep
        if manifest.get("search") and not stage_id.calibrated:  # a calibrated merge's search is its twin's
            setting = f"{stage_id.variant}-{stage_id.space}" + ("-per-task" if stage_id.per_task else "")
            sweeps.setdefault((setting, stage_id.method), manifest["search"])
    if not sweeps:
        return []
    plot_sweeps(sweeps, found.tasks, found.figures / SWEEP_PLOT)
    return ["## Hyperparameter sweeps on held-out training data", "", f"![λ sweep]({REPORT_FIGURES}/{SWEEP_PLOT})", ""]


def coefficients_section(found: Found) -> list[str]:
    parts = []
    for stage_id, manifest, _ in found.merged:
        name = stage_id.leaf
        if manifest.get("coefficients"):
            png = found.figures / f"coefficients-{name}.png"
            save(coefficients_figure(name, manifest["coefficients"], manifest_tasks(manifest, found.study)), png)
            parts += [f"### AdaMerging's learned coefficients: {name}", "", f"![{name}]({REPORT_FIGURES}/{png.name})",
                      ""]
    return parts


def similarity_section(found: Found) -> list[str]:
    matrices = similarity_matrices(found.study, found.tasks)
    if not matrices:
        return []
    save(similarity_figure(matrices, found.tasks), found.figures / SIMILARITY_PLOT)
    means = ", ".join(f"{name} {np.abs(m[~np.eye(len(m), dtype=bool)]).mean():.3f}" for name, m in matrices)
    missing = [v for v in declared_variants(found.study) if v not in {name for name, _ in matrices}]
    absent = f" Not drawn: {', '.join(missing)} (its adapters are not in this study folder)." if missing else ""
    return ["## Task-vector similarity", "",
            "Cosine similarity of the task vectors (LoRA: ΔW = s·(B·A − B0·A0); L-LoRA: its parameters φ). "
            f"Mean |similarity| between tasks: {means}.{absent}", "",
            f"![similarity]({REPORT_FIGURES}/{SIMILARITY_PLOT})", ""]


def scaling_section(found: Found) -> list[str]:
    points = scaling_points(found.study)
    if not points:
        return []
    plot_scaling(points, found.figures / SCALING_PLOT)
    return ["## Fusion against the number of merged tasks", "",
            "Average normalized score of merges of k tasks, mean ± standard deviation over the subsets, and over the "
            "seeds of a multi-seed study (n counts both); hyperparameters chosen on held-out training data per "
            "subset.", "", scaling_table(points), "", f"![fusion vs k]({REPORT_FIGURES}/{SCALING_PLOT})", ""]


def disentangle_section(found: Found) -> list[str]:
    grids = disentanglement_grids(found.study)
    return disentanglement_section(found.study, grids, found.figures / DISENTANGLEMENT_PLOT) if grids else []


def joint_section(found: Found) -> list[str]:
    parts = []
    for stage_id, manifest, _ in found.joint:
        name = stage_id.leaf
        png = found.figures / joint_plot(name)
        noise = plot_joint(found.study / stage_id.name / METRICS, [item["task"] for item in manifest["inputs"]], png)
        moved = ("the weights never moved" if noise is None else
                 f"step-to-step noise is {noise:.0%} of the weights' movement (0%: a smooth trend, ~100%: white noise)")
        parts += [f"### Losses and balancer weights: {name}", "", f"{moved}.", "",
                  f"![{name}]({REPORT_FIGURES}/{png.name})", ""]
    return parts


def tune_section(found: Found) -> list[str]:
    """Each tune's grid on held-out training examples, the chosen point in bold: how the settings were chosen (a
    joint's with each task's held-out score beside their mean)."""
    tables = []
    for stage_id in stage_ids(found.study, "tune"):
        table = read_record(found.study / stage_id.name / TUNE)
        if not table.get("rows"):
            continue
        keys = list(table["rows"][0].keys() - {"score", "held_out", "seconds"})
        keys.sort(key=list(table["rows"][0]).index)
        joint_tasks = table.get("tasks", []) if stage_id.task is None else []
        rows = []
        for row in table["rows"]:
            chosen = all(row[k] == table["chosen"].get(k) for k in keys)
            cells = [f"{row[k]:g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
            cells += [f"{row['held_out'][task]['score']:.4f}" for task in joint_tasks]
            cells += [f"{row['score']:.4f}", f"{row['seconds']:.0f}" if row.get("seconds") is not None else "–"]
            rows.append([f"**{c}**" for c in cells] if chosen else cells)
        chance = table.get("chance")
        verdict = ([] if chance is None else [f"Chance (one constant answer) on these examples: {chance:.4f}." + (
            "" if table.get("learned", True) else " ⚠ No grid point beat it: the choice is a tie of no skill.")])
        if joint_tasks:
            title = f"joint training, {stage_id.variant} ({table['held_out_examples']} held-out training examples " \
                    "per task, at most; the mean of the tasks' scores chooses)"
            score = "mean held-out score"
        else:
            examples = table["rows"][0].get("held_out", {}).get("examples", table["held_out_examples"])
            kind = "whole training sentences, no phrase of them trained on" if get_task(stage_id.task).phrase_tree \
                else "training examples"
            title, score = f"{stage_id.leaf} ({examples} held-out {kind})", "held-out score"
        tables += [f"### {title}", "", _table([*keys, *joint_tasks, score, "train (s)"], rows), "", *verdict,
                   *([""] if verdict else [])]
    if not tables:
        return []
    return ["## Settings chosen on held-out training data (`fusekit tune`)", "",
            "Each grid point trains one adapter (a joint: one adapter on every task) on the run's training subset and "
            "is scored on training examples outside it; the best point (bold) is what the runs use. The dev split "
            "is never read.", "", *tables]


def stage_section(found: Found) -> list[str]:
    return ["## Stages: wall time and peak memory", "", stage_table(found.study), ""]


# the report after its per-task table, in order: one function per section
SECTIONS: list[Callable[[Found], list[str]]] = [
    tune_section, paired_section, multitask_section, criteria_section, sweep_section, coefficients_section,
    similarity_section, scaling_section, disentangle_section, joint_section, stage_section,
]
