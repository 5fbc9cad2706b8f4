"""`fusekit report --publish DIR`: a study's results in a folder git can keep, so that they outlive the run
folders (which hold weights and are not kept): the report, its figures, the recipe as run, the stage costs, and
every stage's scores in one JSON file (`scores.json`: stage name → its eval.json, baseline.json or tune.json),
and the other records a report reads (`records.json`: stage name → file name → record: merge manifests,
disentanglement grids), and for a model asked in text the prompt and answer words of each task
(`verbalizers.json`). No weights: `fusekit run --restore` continues a study from this folder.

The folder is staged and renamed into place, like every output; publishing again replaces it, so two runs of a
study can be compared with `git diff`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fusekit.artifacts.atomic import atomic_write_json
from fusekit.artifacts.layout import (
    BASELINE,
    DISENTANGLEMENT,
    EVAL,
    MANIFEST,
    PUBLISHED_RECORDS,
    PUBLISHED_SCORES,
    PUBLISHED_VERBALIZERS,
    REPORT,
    REPORT_FIGURES,
    STAGES,
    STUDY_RECIPE,
    TUNE,
)
from fusekit.artifacts.reading import read_json
from fusekit.artifacts.staging import staged_dir
from fusekit.errors import FusekitError
from fusekit.study.recipe import load_study
from fusekit.study.restore import restored_scores, study_verbalizers

STAGE_KINDS = ("tune", "baseline", "train", "merge", "scaling", "joint", "disentangle")


def stage_scores(study: Path) -> dict[str, dict]:
    """Every finished stage's recorded scores, by stage name (e.g. `train/sst2-lora`); in a study continued with
    --restore, the published scores of the training and joint stages that did not run again."""
    scores = dict(restored_scores(study))
    for kind in STAGE_KINDS:
        for folder in sorted((study / kind).glob("*")):
            for name in (EVAL, BASELINE, TUNE):
                if (folder / name).is_file():
                    scores[f"{kind}/{folder.name}"] = read_json(folder / name, "scores")
    return scores


def stage_records(study: Path) -> dict[str, dict[str, object]]:
    """The records other than scores that a report reads, by stage name and file name."""
    records = {}
    for kind in STAGE_KINDS:
        for folder in sorted((study / kind).glob("*")):
            found = {name: read_json(folder / name, "record", expect=expect)
                     for name, expect in ((MANIFEST, dict), (DISENTANGLEMENT, list)) if (folder / name).is_file()}
            if found:
                records[f"{kind}/{folder.name}"] = found
    return records


def publish(study: Path, report: Path, out: Path, drop_stages: bool = False) -> Path:
    """Copy the written `report` and its figures, the recipe, the stage log and the scores of `study` to `out`.
    Refuses to replace published results with fewer stages (a study continued with --restore that lost some, say)
    unless `drop_stages`: a retune retired them, or the recipe no longer plans them."""
    scores = stage_scores(study)
    if (out / PUBLISHED_SCORES).is_file() and not drop_stages:
        lost = sorted(set(read_json(out / PUBLISHED_SCORES, "published scores")) - set(scores))
        if lost:
            raise FusekitError(f"{out}: publishing {study} would drop {len(lost)} stages published there and not "
                               f"finished in it ({', '.join(lost[:4])}{', …' if len(lost) > 4 else ''}): run them "
                               "(fusekit run … --only …), or pass --drop-stages to publish without them (a retune "
                               "retired them, or the recipe no longer plans them)")
    with staged_dir(out, overwrite=True, kind="published results") as stage:
        shutil.copy2(report, stage / REPORT)
        if (study / REPORT_FIGURES).is_dir():
            shutil.copytree(study / REPORT_FIGURES, stage / REPORT_FIGURES)
        for name in (STUDY_RECIPE, STAGES):
            if (study / name).is_file():
                shutil.copy2(study / name, stage / name)
        atomic_write_json(stage / PUBLISHED_SCORES, scores)
        atomic_write_json(stage / PUBLISHED_RECORDS, stage_records(study))
        if (study / STUDY_RECIPE).is_file():
            verbalizers = study_verbalizers(load_study(study / STUDY_RECIPE))
            if verbalizers is not None:  # `fusekit run` refuses runs trained on other words: these are the study's
                atomic_write_json(stage / PUBLISHED_VERBALIZERS, verbalizers)
    return out / REPORT
