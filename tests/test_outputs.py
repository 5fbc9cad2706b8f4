"""What fusekit never loses: outputs that would replace, hold or sit inside an input, folders fusekit did not
write, symbolic links, and a second writer of the same output are refused before any work."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from fusekit.artifacts.output import OutputLock
from fusekit.errors import FusekitError
from tests.conftest import tree_hash
from tests.test_cli import assert_error_line, assert_one_line_error, common, invoke


@pytest.fixture(scope="module")
def two_runs(sst2_run, tiny_config, tmp_path_factory):
    """Two finished runs side by side in one folder (copies, so that tests may try to damage them)."""
    from fusekit.training.train import train

    folder = tmp_path_factory.mktemp("two-runs")
    shutil.copytree(sst2_run[0], folder / "sst2")
    train(replace(tiny_config, task="rte", epochs=1, max_train=16, out=str(folder / "rte")))
    return folder


def merge(runs, *args):
    return invoke("merge", *runs, "--lambda", "0.5", "--device", "cpu", *args)


@pytest.mark.parametrize("target, pattern", [
    ("rte", "holds the input .*rte: writing there would replace it"),
    (".", "holds the input .*sst2: writing there would replace it"),
    ("rte/merged", "is inside the input .*rte: choose a folder outside it"),
])
def test_a_merge_never_replaces_holds_or_nests_in_an_input(two_runs, target, pattern):
    before = tree_hash(two_runs)
    runs = [two_runs / "sst2", two_runs / "rte"]
    assert_one_line_error(merge(runs, "--overwrite", "--out", two_runs / target), pattern)
    assert tree_hash(two_runs) == before


def test_overwrite_replaces_only_what_fusekit_wrote(two_runs, tiny_model, glue_dir, tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("precious")
    result = invoke("train", *common(tiny_model, glue_dir), "--task", "rte", "--overwrite", "--out", users)
    assert_one_line_error(result, "holds files fusekit did not write: refusing to write there")
    assert (users / "notes.txt").read_text() == "precious"
    runs = [two_runs / "sst2", two_runs / "rte"]
    assert merge(runs, "--out", tmp_path / "merged").exit_code == 0
    assert_one_line_error(merge(runs, "--out", tmp_path / "merged"), "is not empty .*pass --overwrite")
    assert merge(runs, "--out", tmp_path / "merged", "--overwrite").exit_code == 0  # fusekit's own: replaced


def test_symbolic_link_outputs_are_refused_before_any_work(two_runs, tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    runs = [two_runs / "sst2", two_runs / "rte"]
    assert_one_line_error(merge(runs, "--out", tmp_path / "dangling"), "is a symbolic link")
    assert_one_line_error(merge(runs, "--out", tmp_path / "loop" / "x"), "cannot be resolved")
    assert not list(tmp_path.glob("*.tmp-*")) and not (tmp_path / "nowhere").exists()
    assert_one_line_error(merge([runs[0], tmp_path / "loop"], "--out", tmp_path / "m"),
                          r"loop is a symbolic link that leads nowhere")
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text("{}")
    assert_one_line_error(merge([runs[0], peft], "--out", tmp_path / "m"),
                          r"a mix of fusekit runs and other PEFT adapters: .*sst2 \(fusekit run\), .*peft \(PEFT")


def test_a_name_whose_staged_sibling_would_not_fit_is_refused_before_any_work(two_runs, tmp_path):
    """250 bytes is a legal folder name, but `<name>.tmp-…` beside it would not be: refused at once, not after the
    merge; the longest accepted name does the whole merge."""
    from fusekit.artifacts.output import MAX_NAME_BYTES

    runs = [two_runs / "sst2", two_runs / "rte"]
    assert_one_line_error(merge(runs, "--out", tmp_path / ("m" * 250)), "bytes: at most")
    assert merge(runs, "--out", tmp_path / ("m" * MAX_NAME_BYTES)).exit_code == 0
    assert not list(tmp_path.glob("*.tmp-*"))


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(two_runs, tmp_path):
    out = tmp_path / "merged"
    runs = [two_runs / "sst2", two_runs / "rte"]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "merged.lock").write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename}))
        assert_one_line_error(merge(runs, "--out", out), f"is being written by process {other.pid}")
        assert not out.exists()
    finally:
        other.kill()
        other.wait()
    assert merge(runs, "--out", out).exit_code == 0  # its process is gone: the lock is stale
    assert not (tmp_path / "merged.lock").exists()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="zombies are told apart through /proc")
def test_a_lock_whose_writer_exited_unreaped_is_stale(tmp_path):
    """A killed Ray worker stays a zombie until its parent reaps it, and still answers kill(pid, 0): its lock must
    not stop the retry of its stage."""
    import time

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
            time.sleep(0.01)  # exited, not reaped: os.kill(pid, 0) still succeeds
        (tmp_path / "out.lock").write_text(json.dumps({"pid": child.pid, "host": os.uname().nodename}))
        with OutputLock(tmp_path / "out"):
            assert json.loads((tmp_path / "out.lock").read_text())["pid"] == os.getpid()
    finally:
        child.wait()


def test_a_lock_is_exclusive_between_processes(tmp_path):
    with OutputLock(tmp_path / "out"):
        code = ("from pathlib import Path; from fusekit.artifacts.output import OutputLock; "
                f"OutputLock(Path({str(tmp_path / 'out')!r})).acquire()")
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert child.returncode != 0 and "is being written by process" in child.stderr
    assert not (tmp_path / "out.lock").exists()


def test_a_study_never_writes_over_a_users_folder_or_its_recorded_recipe(tmp_path, tiny_model, glue_dir):
    from fusekit.study.run import run_study

    users = tmp_path / "mine"
    users.mkdir()
    (users / "recipe.yaml").write_text("my own notes")
    recipe = tmp_path / "r.yaml"
    base = {"out": str(users), "tasks": ["sst2"], "checkpoint_every": 0,
            "train": {"model": str(tiny_model), "data": str(glue_dir), "rank": 2, "max_length": 16, "epochs": 1,
                      "max_train": 16, "max_eval": 8, "device": "cpu"}}
    recipe.write_text(yaml.safe_dump(base))
    with pytest.raises(FusekitError, match="holds files fusekit did not write"):
        run_study(recipe)
    assert (users / "recipe.yaml").read_text() == "my own notes"
    study = tmp_path / "study"
    recipe.write_text(yaml.safe_dump({**base, "out": str(study)}))
    run_study(recipe)
    recorded = (study / "recipe.yaml").read_text()
    changed = {**base, "out": str(study), "train": {**base["train"], "rank": 4}}
    recipe.write_text(yaml.safe_dump(changed))
    with pytest.raises(FusekitError, match="was run with different rank"):
        run_study(recipe)
    assert (study / "recipe.yaml").read_text() == recorded


def forge_vector(folder, change) -> None:
    """Rewrite a run's task vector through `change(tensors, metadata)` and seal the folder again, as a forger
    would: the checks behind the seal must catch it."""
    from safetensors.torch import load_file, save_file

    from fusekit.artifacts.checksums import seal

    path = folder / "task_vector.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    change(tensors, metadata)
    save_file(tensors, path, metadata=metadata)
    seal(folder)


def _alpha_text(tensors, metadata):
    meta = json.loads(metadata["fusekit"])
    metadata["fusekit"] = json.dumps({**meta, "alpha": "sixteen"})


def _wrong_shape(tensors, metadata):
    key = next(k for k in tensors if k.startswith("delta/"))
    tensors[key] = tensors[key][:1].clone()


def _nan(tensors, metadata):
    key = next(k for k in tensors if k.startswith("delta/"))
    tensors[key] = tensors[key].clone().fill_(float("nan"))


@pytest.mark.parametrize("change, pattern", [
    (_alpha_text, "metadata alpha='sixteen' is not a positive number"),
    (_wrong_shape, "rank 4 recorded, task_vector.safetensors holds rank 1 tensors"),
    (_nan, "holds non-finite or non-float values"),
])
def test_forged_task_vectors_are_refused(sst2_run, tmp_path, change, pattern):
    folder = tmp_path / "run"
    shutil.copytree(sst2_run[0], folder)
    forge_vector(folder, change)
    assert_one_line_error(invoke("eval", folder, "--device", "cpu"), pattern)


def _config_rank(folder):
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "rank": 2}))


def _peft_rank(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 2}))


@pytest.mark.parametrize("change, pattern", [
    (_config_rank, r"the records disagree: config\.yaml says rank 2, task_vector\.safetensors 4"),
    (_peft_rank, r"the records disagree: adapter_config\.json says r=2, lora_alpha=8"),
])
def test_a_run_whose_records_disagree_is_refused_even_when_resealed(sst2_run, tmp_path, change, pattern):
    from fusekit.artifacts.checksums import seal

    folder = tmp_path / "run"
    shutil.copytree(sst2_run[0], folder)
    change(folder)
    seal(folder)  # past the seal: the records themselves must agree
    assert_one_line_error(invoke("eval", folder, "--device", "cpu"), pattern)


def test_an_edited_score_record_is_refused_not_resealed(sst2_run, tmp_path):
    """The next command that updates eval.json first checks it against the seal: an edit is never laundered."""
    folder = tmp_path / "run"
    shutil.copytree(sst2_run[0], folder)
    scores = json.loads((folder / "eval.json").read_text())
    scores["sst2"]["accuracy"] = 0.99
    (folder / "eval.json").write_text(json.dumps(scores))
    sealed = (folder / "checksums.json").read_text()
    assert_one_line_error(invoke("eval", folder, "--device", "cpu"), r"eval\.json is corrupt or was edited")
    assert (folder / "checksums.json").read_text() == sealed


@pytest.mark.parametrize("damage, pattern", [
    (lambda f: (f / "eval.json").write_text("{not json"), "eval.json is not valid JSON"),
    (lambda f: (f / "manifest.json").write_text("[1, 2]"), "manifest .* holds a JSON list, expected a mapping"),
    (lambda f: (f / "manifest.json").write_text(json.dumps({"format": "fusekit.artifacts.merged_folder/1"})),
     "'inputs' is missing"),
    (lambda f: (f / "manifest.json").write_text(json.dumps({"format": "fusekit.artifacts.merged_folder/1",
                                                            "inputs": [{"task": "../../x"}]})),
     "input task '../../x' is not a GLUE task"),
])
def test_junk_records_in_a_merged_folder_are_one_line(two_runs, tmp_path, damage, pattern):
    from fusekit.artifacts.checksums import seal

    out = tmp_path / "merged"
    assert merge([two_runs / "sst2", two_runs / "rte"], "--out", out).exit_code == 0
    assert invoke("eval", out, "--device", "cpu").exit_code == 0
    damage(out)
    seal(out)  # past the seal: the readers themselves must refuse
    assert_error_line(invoke("eval", out, "--device", "cpu"), pattern)


def test_a_truncated_stage_log_still_reports(tmp_path, tiny_model, glue_dir):
    from fusekit.study.report import write_report
    from fusekit.study.run import run_study

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "out": str(tmp_path / "study"), "tasks": ["sst2"], "checkpoint_every": 0,
        "train": {"model": str(tiny_model), "data": str(glue_dir), "rank": 2, "max_length": 16, "epochs": 1,
                  "max_train": 16, "max_eval": 8, "device": "cpu"}}))
    run_study(recipe)
    log = tmp_path / "study" / "stages.jsonl"
    intact = log.read_text()
    log.write_text(intact + '{"stage": "train/x", "secon')  # killed mid-append
    assert "train/sst2-lora" in write_report(tmp_path / "study").read_text()
    run_study(recipe)  # the next writer starts on a fresh line: the half record goes, nothing else
    assert log.read_text() == intact
    log.write_text('{"stage": "train/x", "secon\n' + log.read_text())
    assert_one_line_error(invoke("report", tmp_path / "study"), "stages.jsonl:1 is not a JSON record")


def test_result_files_and_merges_never_land_on_user_files_or_inside_data(two_runs, tiny_model, glue_dir, tmp_path):
    before = tree_hash(glue_dir)
    runs = [two_runs / "sst2", two_runs / "rte"]
    assert_one_line_error(merge(runs, "--out", glue_dir / "merged"), "is inside the input .*glue")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    args = [*common(tiny_model, glue_dir), "--task", "rte", "--max-train", "16"]
    assert_one_line_error(invoke("baseline", *args, "--out", notes), "holds a file fusekit did not write")
    assert_one_line_error(invoke("baseline", *args, "--out", tmp_path), "is a folder \\(expected a JSON file")
    assert_one_line_error(invoke("eval", runs[0], "--device", "cpu", "--out", notes), "did not write")
    assert notes.read_text() == '{"mine": true}' and tree_hash(glue_dir) == before
    scores = tmp_path / "scores.json"
    assert invoke("eval", runs[0], "--device", "cpu", "--out", scores).exit_code == 0
    assert invoke("eval", runs[0], "--device", "cpu", "--out", scores).exit_code == 0  # its own file: replaced


def test_a_full_disk_names_the_output_not_a_temp_file(sst2_run, tmp_path, monkeypatch):
    """Writes go to a temp file beside the output; a disk that fills up mid-write is reported with the output's
    name, the temp file removed, the previous file kept."""
    import fusekit.artifacts.atomic as atomic

    folder = tmp_path / "run"
    shutil.copytree(sst2_run[0], folder)
    before = (folder / "eval.json").read_text()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    result = invoke("eval", folder, "--device", "cpu")
    assert_error_line(result, r"could not use .*run/eval\.json: No space left on device")
    assert ".tmp" not in result.stderr and not list(folder.glob(".*.tmp"))
    assert (folder / "eval.json").read_text() == before
