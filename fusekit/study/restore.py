"""`fusekit run RECIPE --restore PUBLISHED`: continue a study on a machine that lost its run folder, from what the
study published (`fusekit report --publish`), which keeps every record and no weight.

Stages that leave only records (tunes, baselines, merges, scaling subsets, disentanglement) are restored when the
recipe still plans them with the settings the published recipe gave them; each restored folder is marked as
restored. Training and joint stages are not: later stages read their weights, so they run again when a selected
stage needs them (from their seed they reproduce the published adapters, and the report says whether they did),
and their published scores stand in the report for the ones not run again.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from fusekit.artifacts.atomic import atomic_write_json, atomic_write_text
from fusekit.artifacts.layout import (
    BASELINE,
    DISENTANGLEMENT,
    EVAL,
    MANIFEST,
    PUBLISHED_RECORDS,
    PUBLISHED_SCORES,
    PUBLISHED_VERBALIZERS,
    RESTORED_SCORES,
    STAGES,
    STUDY_RECIPE,
    TUNE,
)
from fusekit.artifacts.reading import read_json, read_jsonl
from fusekit.artifacts.staging import staged_dir
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.study.plan import Stage, plan
from fusekit.study.recipe import StudyConfig, load_study
from fusekit.training.tune import chosen_settings

# the records each restorable kind of stage leaves: its scores file first (what `scores.json` publishes), then
# the others (what `records.json` publishes)
RECORDS = {"tune": (TUNE,), "baseline": (BASELINE,), "merge": (EVAL, MANIFEST), "disentangle": (DISENTANGLEMENT,)}
SCORES_FILE = {"tune": TUNE, "baseline": BASELINE}  # what `scores.json` holds of a stage; EVAL for the others
RESTORED_KIND = "restored stage"


def published_records(folder: Path) -> dict[str, dict[str, object]]:
    """Stage name → record file name → its content, from a published folder's `scores.json` and `records.json`."""
    for name in (PUBLISHED_SCORES, STUDY_RECIPE):
        if not (folder / name).is_file():
            raise FusekitError(f"--restore {folder}: expected {name} there (a folder `fusekit report --publish` "
                               "wrote)")
    scores = read_json(folder / PUBLISHED_SCORES, "published scores")
    extra = read_json(folder / PUBLISHED_RECORDS, "published records") if (folder / PUBLISHED_RECORDS).is_file() \
        else {}
    records: dict[str, dict[str, object]] = {}
    for stage, content in scores.items():
        records.setdefault(stage, {})[SCORES_FILE.get(stage.split("/", 1)[0], EVAL)] = content
    for stage, files in extra.items():
        if not isinstance(files, dict):
            raise FusekitError(f"{folder / PUBLISHED_RECORDS}: {stage}: expected a mapping of file name to record")
        records.setdefault(stage, {}).update(files)
    return records


def study_verbalizers(study: StudyConfig) -> dict[str, dict] | None:
    """Task → prompt and answer words of a study whose model is asked in text (None when it learns heads)."""
    from fusekit.models.base import model_kind

    if model_kind(study.train.get("model"), study.train.get("objective", "auto"))[0] != "text":
        return None
    return {name: get_task(name).verbalizer_record() for name in study.tasks}


def check_verbalizers_published(study: StudyConfig, published: Path) -> None:
    """Published text results count only if fusekit still asks their tasks in the words they were made with
    (results published before the words were recorded: in the words fusekit has asked since it first asked in text,
    which a test holds fixed)."""
    now = study_verbalizers(study)
    if now is None:
        return
    path = published / PUBLISHED_VERBALIZERS
    if not path.is_file():  # published before the words were recorded: in the words fusekit first asked
        return
    then = read_json(path, "published prompts and answer words")
    changed = [name for name in now if then.get(name) != now[name]]
    if changed:
        raise FusekitError(f"--restore {published}: fusekit now asks {', '.join(changed)} in other words than "
                           "those results were made with: run the study without --restore")


def restore(study: StudyConfig, recipe: str, published: Path) -> list[str]:
    """Restore into the study folder every stage the published results finished and the recipe still plans the
    same way; keep the published scores of every stage for the report. Returns the restored stage names."""
    from fusekit.study.run import is_done

    out = Path(study.out)
    records = published_records(published)
    check_verbalizers_published(study, published)
    then = load_study(published / STUDY_RECIPE)
    if Path(then.out).resolve() != out.resolve():
        raise FusekitError(f"--restore {published}: those results were published from the study in {then.out}, "
                           f"not {study.out} (the recipe's `out`)")
    restored = []
    for phase in ("tune", "other"):  # the plan reads what the restored tunes chose
        published_plan = {s.name: s for s in plan(then, str(published / STUDY_RECIPE))}
        stages = plan(study, recipe)
        stale = retrained_differently(stages, records, out, baseline_variant=next(iter(study.adapters)))
        for stage in stages:
            if (stage.kind == "tune") != (phase == "tune") or stage.kind not in RECORDS or is_done(stage, out):
                continue
            files = records.get(stage.name, {})
            same = published_plan.get(stage.name)
            if same is None or same.config != stage.config or not all(n in files for n in RECORDS[stage.kind]) \
                    or stage.name in stale:
                continue
            with staged_dir(out / stage.name, overwrite=False, kind=RESTORED_KIND) as folder:
                for name in RECORDS[stage.kind]:
                    atomic_write_json(folder / name, files[name])
            restored.append(stage.name)
    atomic_write_json(out / RESTORED_SCORES, {name: files[EVAL] for name, files in records.items()
                                              if name.split("/", 1)[0] in ("train", "joint") and EVAL in files
                                              and name not in stale})
    _carry_costs(published, out)
    return restored


def retrained_differently(stages: list[Stage], records: dict[str, dict], out: Path,
                          baseline_variant: str) -> set[str]:
    """The stages that no longer stand for what was published because a tune they follow chose other settings
    than the published one (its grid changed): the training stages of that task and variant, the task's baseline
    (computed with `baseline_variant`'s settings), every stage that reads those adapters, and a retuned joint's
    runs. Their plans look the same (both read today's choice), their work is not."""
    retuned = {(s.id.task, s.id.variant) for s in stages if s.kind == "tune"
               and chosen_settings(out / s.name) not in (None, records.get(s.name, {}).get(TUNE, {}).get("chosen"))}
    stale = {s.name for s in stages if s.kind == "train" and (s.id.task, s.id.variant) in retuned}
    stale |= {s.name for s in stages if s.kind == "baseline" and (s.id.task, baseline_variant) in retuned}
    stale |= {s.name for s in stages if s.kind == "joint" and (None, s.id.variant) in retuned}
    return stale | {s.name for s in stages if stale.intersection(s.needs)}


def _carry_costs(published: Path, out: Path) -> None:
    """The published stage log, once, before the study's own records (a stage's latest record is its state), so
    that the report keeps what the stages cost where they ran."""
    path, log = published / STAGES, out / STAGES
    mine = read_jsonl(log, "stage log") if log.is_file() else []
    if any(r.get("restored") for r in mine) or not path.is_file():
        return
    carried = [{**r, "restored": True} for r in read_jsonl(path, "stage log")]
    atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in carried + mine))


def restored_scores(study: Path) -> dict[str, dict]:
    """Stage name → the published eval.json of each training and joint stage, in a study continued with
    --restore (empty otherwise); read once per version of the file, however many stages a report asks about."""
    path = study / RESTORED_SCORES
    status = path.stat() if path.is_file() else None
    return _restored(path.resolve(), status and (status.st_mtime_ns, status.st_size))


@functools.lru_cache(maxsize=4)
def _restored(path: Path, version: tuple[int, int] | None) -> dict[str, dict]:
    return read_json(path, "restored scores") if version else {}


def published_scores(study: Path, stage: str) -> dict:
    """The published scores of a training or joint stage that this machine has not run (empty if none)."""
    return restored_scores(study).get(stage, {})
