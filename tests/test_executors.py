"""`fusekit run --executor ray`: the same study folders as the local executor, a dead worker's stage resumed from
its checkpoint, a failed stage failing its dependants only (a local Ray cluster of two single-thread workers)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fusekit.artifacts.checkpoint import Checkpoints
from fusekit.artifacts.layout import CHECKPOINT_GLOB, checkpoint_dir
from fusekit.errors import FusekitError
from fusekit.study.executors import RayExecutor, make_executor, memory_requests
from fusekit.study.plan import plan
from fusekit.study.recipe import load_study
from fusekit.study.report import progress_line
from fusekit.study.run import run_stage, run_study
from tests.test_resume import RUN_FILES, tensors
from tests.test_study import write_recipe

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import the tests
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, object_store_memory=80 * 2**20,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """The local executor on one thread, as each Ray worker is: the same arithmetic, bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def study_recipe(tmp_path: Path, tiny_model, glue_dir, name: str, **changes) -> Path:
    return write_recipe(tmp_path / f"{name}.yaml", tiny_model, glue_dir, tmp_path / name, checkpoint_every=2,
                        **changes)


def assert_same_study(a: Path, b: Path) -> None:
    """Every training and merge stage: the same tensors exactly and the same scores."""
    stages = sorted(p.relative_to(a) for kind in ("train", "merge", "joint") for p in (a / kind).iterdir())
    assert stages == sorted(p.relative_to(b) for kind in ("train", "merge", "joint") for p in (b / kind).iterdir())
    for stage in stages:
        for name in ["task_vector.safetensors"] + (RUN_FILES if stage.parts[0] == "train" else []):
            x, y = tensors(a / stage / name), tensors(b / stage / name)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f"{stage}/{name}"
        assert json.loads((a / stage / "eval.json").read_text()) == json.loads((b / stage / "eval.json").read_text())


def stage_records(study: Path) -> list[dict]:
    return [json.loads(line) for line in (study / "stages.jsonl").read_text().splitlines()]


def crash_once_after_a_checkpoint(stage, out: Path) -> dict:
    """sst2's training stage: on the first try its worker process dies right after its first checkpoint."""
    marker = out / "sst2-crashed"
    if stage.name == "train/sst2-lora" and marker.exists():  # the retry: what it starts from
        checkpoints = list(checkpoint_dir(out / stage.name).glob(CHECKPOINT_GLOB))
        (out / "sst2-retried").write_text(json.dumps([p.name for p in checkpoints]))
    if stage.name == "train/sst2-lora" and not marker.exists():
        save = Checkpoints.save

        def save_then_die(self, state):
            save(self, state)
            marker.touch()
            os._exit(1)

        Checkpoints.save = save_then_die
    return run_stage(stage, out)


def test_ray_gives_the_local_studys_folders(cluster, one_thread, tmp_path, tiny_model, glue_dir):
    run_study(study_recipe(tmp_path, tiny_model, glue_dir, "local"))
    run_study(study_recipe(tmp_path, tiny_model, glue_dir, "ray"), executor=RayExecutor())
    assert_same_study(tmp_path / "local", tmp_path / "ray")
    names = ["train/sst2-lora", "train/mrpc-lora", "merge/lora-delta-w-task-arithmetic", "merge/lora-delta-w-average",
             "joint/lora-uniform"]
    for study in ("local", "ray"):  # every stage's progress, in order; the costs on the last record
        records = stage_records(tmp_path / study)
        assert [r["status"] for r in records[:5]] == ["queued"] * 5
        assert {n: [r["status"] for r in records if r["stage"] == n] for n in names} == \
            {n: ["queued", "running", "done"] for n in names}
        assert all("seconds" in r and "peak_rss_mb" in r for r in records if r["status"] == "done")
    run_study(study_recipe(tmp_path, tiny_model, glue_dir, "ray"), executor=RayExecutor())  # all finished: skipped
    assert stage_records(tmp_path / "ray") == records


def test_a_dead_workers_stage_is_retried_and_resumes_from_its_checkpoint(cluster, one_thread, tmp_path, tiny_model,
                                                                         glue_dir):
    recipe = study_recipe(tmp_path, tiny_model, glue_dir, "study", merge=None, joint=None, tasks=["sst2"],
                          task_settings={})
    run_study(recipe)
    stages = plan(load_study(recipe), str(recipe))
    again = tmp_path / "again"
    for stage in stages:
        stage.config = replace(stage.config, out=str(again / stage.name))
    RayExecutor().run(stages, again, crash_once_after_a_checkpoint, None)
    assert (again / "sst2-crashed").exists()  # the worker died after a checkpoint; Ray's retry finished the stage
    for name in RUN_FILES:
        x, y = tensors(tmp_path / "study/train/sst2-lora" / name), tensors(again / "train/sst2-lora" / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    assert json.loads((again / "sst2-retried").read_text())  # the retry found the dead worker's checkpoint


def test_a_failed_stage_fails_its_dependants_only(cluster, tmp_path, tiny_model, glue_dir):
    missing = {"mrpc": {"data": str(tmp_path / "no-glue")}}  # mrpc's training stage fails; sst2's does not
    recipe = study_recipe(tmp_path, tiny_model, glue_dir, "study", task_settings=missing)
    with pytest.raises(FusekitError) as error:
        run_study(recipe, executor=RayExecutor())
    message = str(error.value)
    assert "\n" not in message and message.startswith("4 of 5 stages failed")
    assert "train/mrpc-lora: " in message
    assert "merge/lora-delta-w-average: needs train/mrpc-lora, which failed" in message
    assert (tmp_path / "study" / "train" / "sst2-lora" / "eval.json").is_file()  # the independent stage finished
    latest = {r["stage"]: r for r in stage_records(tmp_path / "study")}
    failed = ["train/mrpc-lora", "merge/lora-delta-w-task-arithmetic", "merge/lora-delta-w-average",
              "joint/lora-uniform"]
    assert {name: r["status"] for name, r in latest.items()} == {"train/sst2-lora": "done", **dict.fromkeys(failed,
                                                                                                         "failed")}
    assert latest["joint/lora-uniform"]["error"] == "needs train/mrpc-lora, which failed"
    assert not (tmp_path / "study" / "merge").exists()


def test_executor_choices_are_checked():
    with pytest.raises(FusekitError, match="--executor 'slurm': expected one of local, ray"):
        make_executor("slurm", None, 1, None)
    with pytest.raises(FusekitError, match="--address names a Ray cluster"):
        make_executor("local", "ray://head:10001", 1, None)
    assert make_executor("ray", None, 2, None) == RayExecutor(None, 2.0, 0.0)


def test_a_stage_asks_for_the_memory_its_family_measured(tmp_path, tiny_model, glue_dir):
    recipe = study_recipe(tmp_path, tiny_model, glue_dir, "study", seeds=[0, 1], merge=None, joint=None)
    stages = plan(load_study(recipe), str(recipe))
    log = tmp_path / "stages.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"stage": "train/sst2-lora-seed0", "family": "train/sst2-lora", "peak_rss_mb": 100.0},
        {"stage": "train/mrpc-lora-seed1", "peak_rss_mb": 300.0},  # an older record: no family
        {"stage": "train/mrpc-lora-seed0", "status": "failed", "error": "x"}]) + "\n")
    asked = memory_requests(stages, log, available=0.0)
    mb = {name: value / 2**20 for name, value in asked.items()}
    assert mb == {"train/sst2-lora-seed0": 125.0, "train/sst2-lora-seed1": 125.0, "train/mrpc-lora-seed1": 375.0}
    assert memory_requests(stages, log, available=110 * 2**20)["train/sst2-lora-seed1"] == 110 * 2**20


def test_the_local_executor_records_a_failed_stage_and_stops(tmp_path, tiny_model, glue_dir):
    missing = {"mrpc": {"data": str(tmp_path / "no-glue")}}
    recipe = study_recipe(tmp_path, tiny_model, glue_dir, "study", task_settings=missing, merge=None, joint=None)
    with pytest.raises(FusekitError, match="no-glue"):
        run_study(recipe)
    assert [(r["stage"], r["status"]) for r in stage_records(tmp_path / "study")] == [
        ("train/sst2-lora", "queued"), ("train/mrpc-lora", "queued"), ("train/sst2-lora", "running"),
        ("train/sst2-lora", "done"), ("train/mrpc-lora", "running"), ("train/mrpc-lora", "failed")]
    line = progress_line(tmp_path / "study")  # what a published report says of it
    assert line.startswith("In progress: 1 of 2 planned stages (train 1/2). Failed on their last try: "
                           "train/mrpc-lora (")
    assert "no-glue" in line


def _one_stage_run(tmp_path, tiny_model, glue_dir, runner) -> Path:
    """train/sst2-lora run by the local executor with `runner` in place of the stage's work; the study folder."""
    from fusekit.progress import JsonlLog
    from fusekit.study.executors import LocalExecutor

    recipe = study_recipe(tmp_path, tiny_model, glue_dir, "study", merge=None, joint=None)
    stages = [s for s in plan(load_study(recipe), str(recipe)) if s.name == "train/sst2-lora"]
    out = tmp_path / "study"
    out.mkdir()
    log = JsonlLog(out / "stages.jsonl")
    try:
        LocalExecutor().run(stages, out, runner, log)
    finally:
        log.close()
    return out


def _log_by_hand(out: Path, *records: dict) -> None:
    with (out / "stages.jsonl").open("a") as lines:
        lines.writelines(json.dumps({"stage": "train/sst2-lora", **record}) + "\n" for record in records)


def test_an_interrupted_stage_counts_the_time_it_ran_before_it_resumed(tmp_path, tiny_model, glue_dir):
    from fusekit.study.report import stage_table

    def interrupted(stage, folder):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _one_stage_run(tmp_path, tiny_model, glue_dir, interrupted)
    out = tmp_path / "study"
    stopped = stage_records(out)[-1]
    assert stopped["status"] == "stopped" and stopped["seconds"] >= 0
    assert stage_records(out)[-2] == {**stage_records(out)[-2], "status": "running", "resumes": False}
    _log_by_hand(out, {"status": "running", "resumes": True}, {"status": "stopped", "seconds": 120.0},
                 {"status": "running", "resumes": True},  # two tries by hand: 120 s stopped, 60 s to finish
                 {"status": "done", "seconds": 60.0, "peak_rss_mb": 9.0})
    assert f"| train/sst2-lora | {(180 + stopped['seconds']) / 60:.1f} | 9 |" in stage_table(out)


def test_a_try_that_starts_over_drops_the_time_of_the_tries_before_it(tmp_path, tiny_model, glue_dir):
    """A stopped try whose checkpoint was deleted (settings changed, say) cost nothing the finished stage kept."""
    from fusekit.artifacts.layout import checkpoint_dir
    from fusekit.study.executors import resumes
    from fusekit.study.report import stage_table

    def interrupted(stage, folder):
        checkpoint_dir(folder / stage.name).mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _one_stage_run(tmp_path, tiny_model, glue_dir, interrupted)
    out = tmp_path / "study"
    assert resumes(out / "train/sst2-lora") and not resumes(out / "train/mrpc-lora")
    (out / "train/sst2-lora").mkdir()  # a tune's folder holds its finished grid points: it resumes too
    assert resumes(out / "train/sst2-lora")
    _log_by_hand(out, {"status": "running", "resumes": False},  # the checkpoint was deleted: it starts over
                 {"status": "done", "seconds": 60.0, "peak_rss_mb": 9.0})
    assert "| train/sst2-lora | 1.0 | 9 |" in stage_table(out)
    _log_by_hand(out, {"status": "queued"}, {"status": "running", "resumes": False})  # retired, and running again
    assert "train/sst2-lora" not in stage_table(out)


def test_a_finished_stage_records_the_machine_it_ran_on(tmp_path, tiny_model, glue_dir):
    """Last digits follow the CPU kind and thread count: the stage log and the report's cost table say which."""
    from fusekit.study.report import stage_table
    from fusekit.study.resources import measure

    def measured(stage, folder):
        with measure() as usage:
            pass
        return usage

    out = _one_stage_run(tmp_path, tiny_model, glue_dir, measured)
    done = stage_records(out)[-1]
    assert done["status"] == "done" and done["machine"].endswith(f", {torch.get_num_threads()} threads")
    assert f"| {done['machine']} |" in stage_table(out)
    _log_by_hand(out, {"status": "done", "seconds": 6.0, "peak_rss_mb": 9.0})  # logged before the machine was
    assert "| train/sst2-lora | 0.1 | 9 | – | – |" in stage_table(out)
