"""`fusekit tune` and the study's tune and baseline stages: choices made on held-out training examples only."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import fusekit.data.loading as loading
from fusekit.data.loading import load_split
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.training.tune import parse_grid, tune


@pytest.fixture
def dev_forbidden(monkeypatch):
    """Any read of a dev file fails the test: tuning must never look at the reported split."""
    real = loading._read_tsv

    def read(task, path: Path):
        assert not path.name.startswith("dev"), f"tune read {path}"
        return real(task, path)

    monkeypatch.setattr(loading, "_read_tsv", read)


def test_tune_picks_the_best_held_out_point_and_never_reads_dev(tiny_config, tmp_path, dev_forbidden, monkeypatch):
    cfg = replace(tiny_config, task="sst2", max_train=64)
    result = tune(cfg, {"lr": [1e-6, 2e-2], "epochs": [8]}, tmp_path / "tune", held_out_examples=32)
    rows = result["rows"]
    assert [r["lr"] for r in rows] == [1e-6, 2e-2]
    best = max(rows, key=lambda r: r["score"])
    assert result["chosen"] == {"lr": best["lr"], "epochs": 8}
    assert best["lr"] == 2e-2 and best["score"] > rows[0]["score"]  # a step of 1e-6 learns nothing here
    for row in rows:  # each score is the run's own record, on the 32 examples its training subset left out
        folder = tmp_path / "tune" / f"lr={row['lr']}-epochs=8"
        recorded = json.loads((folder / "eval.json").read_text())["sst2"]
        assert recorded["score"] == row["score"] and recorded["examples"] == 32
    assert json.loads((tmp_path / "tune" / "tune.json").read_text())["chosen"] == result["chosen"]
    labels = load_split(get_task("sst2"), "train", cfg.data).held_out(64, cfg.seed).capped(32, cfg.seed).labels
    majority = max(labels.count(0), labels.count(1)) / len(labels)  # accuracy of one constant answer, by hand
    assert result["chance"] == pytest.approx(majority) and result["learned"] == (best["score"] > majority)
    with pytest.raises(FusekitError, match=r"lr=1e-06-epochs=8 was trained with different max_train than this tune"):
        tune(replace(cfg, max_train=48), {"lr": [1e-6, 2e-2], "epochs": [8]}, tmp_path / "tune", 32)
    assert tune(cfg, {"lr": [1e-6, 2e-2], "epochs": [8]}, tmp_path / "tune", 32)["rows"] == rows  # reused as is
    held_out = loading.Split.held_out  # a new rule for which examples are held out: the old scores do not count
    with monkeypatch.context() as patch:
        patch.setattr(loading.Split, "held_out", lambda self, *args: held_out(self, *args).subset([0, 1]))
        with pytest.raises(FusekitError, match=r"lr=1e-06-epochs=8/eval\.json was scored on other held-out examples"):
            tune(cfg, {"lr": [1e-6, 2e-2], "epochs": [8]}, tmp_path / "tune", 32)


def test_held_out_examples_are_outside_the_training_subset(glue_dir):
    split = load_split(get_task("sst2"), "train", str(glue_dir))
    used, held = split.capped(64, 0), split.held_out(64, 0)
    assert len(held) == 32 and not set(used.texts) & set(held.texts)


def test_grid_parsing_and_checks(tiny_config, tmp_path):
    assert parse_grid(["lr=1e-4,3e-4", "epochs=2,3", "pooling=mean,cls"]) == \
        {"lr": [1e-4, 3e-4], "epochs": [2, 3], "pooling": ["mean", "cls"]}
    with pytest.raises(FusekitError, match="expected KEY=V1,V2"):
        parse_grid(["lr"])
    with pytest.raises(FusekitError, match="unknown setting 'learning_rate'"):
        tune(tiny_config, {"learning_rate": [1e-3]}, tmp_path, 8)
    with pytest.raises(FusekitError, match="leaves no training example unseen .it trained on every sst2 training"):
        tune(replace(tiny_config, task="sst2", max_train=None), {"lr": [1e-3]}, tmp_path / "t", 8)


@pytest.mark.parametrize("tune_section, expected", [
    ({"grid": {"lr": [1e-3, -1]}}, r"r\.yaml: tune grid of sst2 point lr=-1: key 'lr' is -1.0, expected a finite"),
    ({"grid": {"learning_rate": [1e-3]}}, r"r\.yaml: tune grid of sst2: unknown setting 'learning_rate'"),
    ({"grid": {"lr": [1e-3]}, "task_grids": {"sst2": {"pair_encoding": ["tri"]}}},
     r"r\.yaml: tune grid of sst2 point lr=0\.001-pair_encoding=tri: key 'pair_encoding'"),
])
def test_a_dry_run_refuses_the_tune_grid_the_run_would_refuse(tmp_path, tune_section, expected):
    """Each grid point is checked when the study is planned, naming the recipe file."""
    from fusekit.study.plan import plan
    from fusekit.study.recipe import load_study

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "s"), "tasks": ["sst2"], "train": {"max_train": 64},
                                    "tune": tune_section}))
    with pytest.raises(FusekitError, match=expected):
        plan(load_study(path), str(path))


def test_study_tunes_before_it_trains_and_writes_the_tuned_recipe(tmp_path, tiny_model, glue_dir):
    from fusekit.study.plan import plan
    from fusekit.study.recipe import load_study
    from fusekit.study.run import run_study

    recipe = {
        "out": str(tmp_path / "study"), "tasks": ["sst2", "stsb"], "checkpoint_every": 0, "baselines": True,
        "train": {"model": str(tiny_model), "data": str(glue_dir), "rank": 4, "alpha": 8.0, "lr": 2e-2,
                  "epochs": 2, "batch_size": 16, "max_length": 32, "device": "cpu", "max_train": 64},
        "task_settings": {"stsb": {"pair_encoding": "bi", "pooling": "mean"}},
        "tune": {"grid": {"lr": [1e-6, 2e-2]}, "held_out_examples": 16, "tasks": ["sst2"]},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_study(path)
    out = tmp_path / "study"
    chosen = json.loads((out / "tune" / "sst2-lora" / "tune.json").read_text())["chosen"]
    trained = yaml.safe_load((out / "train" / "sst2-lora" / "config.yaml").read_text())
    assert trained["lr"] == chosen["lr"]
    tuned = yaml.safe_load((out / "recipe.tuned.yaml").read_text())
    assert tuned["task_settings"]["sst2:lora"] == chosen and "tune" not in tuned
    stages = {s.name for s in plan(load_study(out / "recipe.tuned.yaml"), "tuned")}
    assert "train/sst2-lora" in stages and not any(s.startswith("tune/") for s in stages)
    baseline = json.loads((out / "baseline" / "stsb" / "baseline.json").read_text())
    assert baseline["head"] == {"pooling": "mean", "pair_encoding": "bi", "objective": "head"}
    assert set(baseline["zero_shot"]) >= {"pearson", "spearman"} and "score" in baseline["head_only"]
    assert json.loads((out / "baseline" / "sst2" / "baseline.json").read_text())["zero_shot"] is None
    from fusekit.study.report import write_report

    write_report(out)
    report = (out / "report.md").read_text()
    assert "| head-only (frozen checkpoint) |" in report and "| zero-shot | – |" in report
    run_study(path)  # a rerun finds every stage finished
    recipe["tune"]["grid"]["lr"] = [1e-6, 1e-2]
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FusekitError, match=r"sst2-lora was tuned on another grid or held-out size than the recipe"):
        run_study(path)
    recipe["tune"]["grid"]["lr"] = [1e-6, 2e-2]
    recipe["task_settings"]["sst2"] = {"max_train": 48}  # the grid's points would now train on fewer examples
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FusekitError, match=r"lr=1e-06 was trained with different max_train than this tune asks"):
        run_study(path)
    assert "Chance (one constant answer) on these examples:" in report


def test_task_grids_add_keys_for_a_task_or_one_variant_of_it(tmp_path):
    from fusekit.study.plan import plan
    from fusekit.study.recipe import load_study

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "out": str(tmp_path / "s"), "tasks": ["sst2", "stsb"], "train": {"max_train": 64},
        "adapters": {"lora": {"adapter": "lora"}, "l-lora": {"adapter": "l-lora"}},
        "tune": {"grid": {"lr": [1e-3]}, "task_grids": {"stsb": {"pair_encoding": ["cross", "bi"]},
                                                        "sst2:l-lora": {"lr": [3e-3, 1e-2]}}}}))
    grids = {s.name: s.config.grid for s in plan(load_study(path), str(path)) if s.kind == "tune"}
    assert grids == {"tune/sst2-lora": {"lr": [1e-3]}, "tune/sst2-l-lora": {"lr": [3e-3, 1e-2]},
                     "tune/stsb-lora": {"lr": [1e-3], "pair_encoding": ["cross", "bi"]},
                     "tune/stsb-l-lora": {"lr": [1e-3], "pair_encoding": ["cross", "bi"]}}


def test_a_stage_is_not_trained_before_its_tune_has_chosen(tmp_path, tiny_model, glue_dir):
    """Selecting train/ while the tune that sets its step size has not run would train at the defaults: refused,
    naming the tune to run first; once it has run, training goes ahead with its choice."""
    from fusekit.study.run import run_study

    recipe = {
        "out": str(tmp_path / "study"), "tasks": ["sst2"], "checkpoint_every": 0,
        "train": {"model": str(tiny_model), "data": str(glue_dir), "rank": 4, "alpha": 8.0, "epochs": 1,
                  "batch_size": 16, "max_length": 32, "device": "cpu", "max_train": 64},
        "tune": {"grid": {"lr": [1e-6, 2e-2]}, "held_out_examples": 16},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FusekitError, match=r"train/sst2-lora waits for tune/sst2-lora to choose its settings"):
        run_study(path, only="train/")
    assert not (tmp_path / "study" / "train").exists()
    run_study(path, only="tune/")
    run_study(path, only="train/")
    chosen = json.loads((tmp_path / "study/tune/sst2-lora/tune.json").read_text())["chosen"]
    assert yaml.safe_load((tmp_path / "study/train/sst2-lora/config.yaml").read_text())["lr"] == chosen["lr"]


def test_a_tune_whose_every_point_is_at_chance_says_so(tiny_config, tmp_path, monkeypatch, capsys):
    from fusekit.training import tune as tune_module

    monkeypatch.setattr(tune_module, "held_out_chance", lambda cfg: 1.0)  # no point can beat a perfect constant
    result = tune(replace(tiny_config, task="sst2", max_train=64), {"lr": [1e-6]}, tmp_path / "tune", 32)
    assert result["learned"] is False
    assert "warning: no grid point of sst2 beat answering the majority class" in capsys.readouterr().err


def test_a_studys_joint_takes_its_step_size_from_a_held_out_tune_and_never_reads_dev(tmp_path, tiny_model, glue_dir,
                                                                                      monkeypatch):
    """The joint's grid is tuned once (first balancer, first seed) on each task's training examples outside its own
    cap, the mean of the tasks' held-out scores choosing; every joint run then trains with the choice, and waits
    for it."""
    from fusekit.study.plan import plan
    from fusekit.study.recipe import load_study
    from fusekit.study.report import write_report
    from fusekit.study.run import run_study

    recipe = {
        "out": str(tmp_path / "study"), "tasks": ["sst2", "mrpc"], "checkpoint_every": 0, "seeds": [0, 1],
        "train": {"model": str(tiny_model), "data": str(glue_dir), "rank": 4, "alpha": 8.0, "lr": 2e-2,
                  "epochs": 1, "batch_size": 16, "max_length": 32, "device": "cpu", "max_train": 64},
        "task_settings": {"mrpc": {"max_train": 48}},
        "joint": {"balancers": ["uniform", "coba"], "seeds": [1], "grid": {"lr": [1e-6, 2e-2]},
                  "held_out_examples": 16, "settings": {"validation_examples": 8}},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    stages = {s.name: s for s in plan(load_study(path), str(path))}
    tune_job = stages["tune/joint-lora"].config
    assert tune_job.config.balancer == "uniform" and tune_job.config.seed == 1
    assert tune_job.config.task_caps() == {"sst2": 64, "mrpc": 48} and tune_job.config.references is None
    with pytest.raises(FusekitError, match=r"joint/lora-uniform-seed1 waits for tune/joint-lora to choose"):
        run_study(path, only="joint/")
    read = loading._read_tsv

    def no_dev(task, tsv: Path):
        assert not tsv.name.startswith("dev"), f"the joint tune read {tsv}"
        return read(task, tsv)

    with monkeypatch.context() as patch:
        patch.setattr(loading, "_read_tsv", no_dev)
        run_study(path, only="tune/")
    out = tmp_path / "study"
    table = json.loads((out / "tune/joint-lora/tune.json").read_text())
    assert table["tasks"] == ["sst2", "mrpc"] and [row["lr"] for row in table["rows"]] == [1e-6, 2e-2]
    for row in table["rows"]:  # the mean of each task's score on its own held-out examples
        assert row["score"] == pytest.approx((row["held_out"]["sst2"]["score"] + row["held_out"]["mrpc"]["score"]) / 2)
        assert row["held_out"]["sst2"]["examples"] == 16 and row["held_out"]["mrpc"]["examples"] == 16
    best = max(table["rows"], key=lambda row: row["score"])
    assert table["chosen"] == {"lr": best["lr"]}
    run_study(path, only="joint/")
    for balancer in ("uniform", "coba"):
        trained = yaml.safe_load((out / f"joint/lora-{balancer}-seed1/config.yaml").read_text())
        assert trained["lr"] == best["lr"] and trained["eval_on"] == "dev"
    tuned = yaml.safe_load((out / "recipe.tuned.yaml").read_text())
    assert tuned["joint"]["settings"]["lr"] == best["lr"] and "grid" not in tuned["joint"]
    run_study(path, only="tune/,joint/")  # a rerun finds the tune and the joint runs finished, as the recipe asks
    recipe["joint"]["held_out_examples"] = 8
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FusekitError, match=r"joint-lora was tuned on another grid or held-out size than the recipe"):
        run_study(path, only="tune/")
    recipe["joint"]["held_out_examples"] = 16
    write_report(out)
    report = (out / "report.md").read_text()
    assert "### joint training, lora (16 held-out training examples per task" in report
    assert f"| lora-coba | coba, temperature, T=0.5, lr={best['lr']:g} |" in report  # the step it took
    recipe["joint"]["variants"] = ["lora", "l-lora"]
    recipe["adapters"] = {"lora": {"adapter": "lora"}, "l-lora": {"adapter": "l-lora"}}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FusekitError, match=r"r.yaml: joint.grid tunes the joint run of one adapter variant"):
        plan(load_study(path), str(path))
