"""`fusekit run` (a whole study from one recipe, resumable) and `fusekit report` on the tiny model."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from fusekit.artifacts.checksums import reseal
from fusekit.errors import FusekitError
from fusekit.merging.criteria import CRITERIA
from fusekit.study import run as study_module
from fusekit.study.plan import plan
from fusekit.study.publish import publish
from fusekit.study.recipe import load_study
from fusekit.study.report import write_report
from fusekit.study.run import run_study


def write_recipe(path: Path, tiny_model, glue_dir, out: Path, **changes) -> Path:
    recipe = {
        "out": str(out), "tasks": ["sst2", "mrpc"], "checkpoint_every": 0,
        "train": {"model": str(tiny_model), "data": str(glue_dir), "rank": 4, "alpha": 8.0, "lr": 2e-2,
                  "epochs": 2, "batch_size": 16, "max_length": 32, "device": "cpu"},
        "adapters": {"lora": {"adapter": "lora"}},
        "task_settings": {"mrpc": {"lr": 1e-2}},
        "merge": {"methods": ["task-arithmetic", "average"], "spaces": ["delta-w"], "lambdas": [0.5, 1.0],
                  "val_examples": 8, "select_on_seen": True},  # the tiny runs train on all of their data
        "joint": {"balancers": ["uniform"], "settings": {"validation_examples": 8}},
    }
    recipe.update(changes)
    path.write_text(yaml.safe_dump(recipe))
    return path


def study_folder(folder: Path, recipe: str) -> None:
    """A study folder as `fusekit run` leaves it, for report tests that write its stages by hand."""
    (folder / ".fusekit.json").write_text('{"kind": "study"}')
    (folder / "recipe.yaml").write_text(recipe)


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 2}, "unknown key 'epochs'"),
    ({"tasks": "sst2"}, "key 'tasks' is 'sst2', expected list[str]"),
    ({"train": {"learning_rate": 0.1}}, "train/sst2-lora: unknown key 'learning_rate'"),
    ({"train": {"lr": "fast"}}, "key 'lr' is 'fast', expected float"),
    ({"merge": {"methods": ["magic"]}}, "merge: key 'methods' is ['magic'], expected one of task-arithmetic"),
    ({"merge": {"methods": ["ties", "ties"]}}, "key 'methods' is ['ties', 'ties'], expected a list without repeats"),
    ({"merge": {"lambdas": [float("nan")]}}, "key 'lambdas' is [nan], expected a finite number"),
    ({"merge": {"val_examples": -5}}, "key 'val_examples' is -5, expected an integer ≥ 1"),
    ({"checkpoint_every": -1}, "key 'checkpoint_every' is -1, expected an integer ≥ 0"),
    ({"seeds": [0, 0]}, "key 'seeds' is [0, 0], expected a list without repeats"),
    ({"joint": {"balancers": ["magic"]}}, "joint: key 'balancers' is ['magic'], expected one of uniform"),
    ({"task_settings": {"sst2": [1, 2]}}, "task_settings.sst2 is [1, 2], expected a mapping of train keys"),
    ({"adapters": {"../../../tmp/x": {"adapter": "lora"}}}, "variant name '../../../tmp/x' must be letters"),
    ({"merge": {"lambda": [0.3]}}, "merge: unknown key 'lambda'"),
    ({"joint": {"balancers": ["uniform"], "settings": {"T": 2}}}, "joint/lora-uniform: unknown key 'T'"),
    ({"task_settings": {"qqp": {"lr": 0.1}}}, "task_settings key 'qqp'"),
    ({"disentangle": {"pairs": ["sst2+qqp"]}}, "disentangle.pairs: pair 'sst2.qqp': expected two different tasks"),
    ({"disentangle": {"alphas": [0.0, float("inf")]}}, "disentangle: key 'alphas' is [0.0, inf], expected a finite"),
])
def test_bad_recipe_is_refused_before_any_work(tmp_path, tiny_model, glue_dir, changes, message):
    out = tmp_path / "study"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out, **changes)
    with pytest.raises(FusekitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_study(recipe)
    assert not out.exists()


def test_plan_layers_settings(tmp_path, tiny_model, glue_dir):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, tmp_path / "s",
                          adapters={"lora": {"adapter": "lora"}, "l-lora": {"adapter": "l-lora", "lr": 5e-2}},
                          task_settings={"mrpc": {"lr": 1e-2}, "sst2:l-lora": {"lr": 3e-2}})
    stages = {s.name: s for s in plan(load_study(recipe), "r.yaml")}
    assert stages["train/sst2-lora"].config.lr == 2e-2  # shared
    assert stages["train/mrpc-lora"].config.lr == 1e-2  # task wins over shared
    assert stages["train/mrpc-l-lora"].config.lr == 1e-2  # task wins over variant
    assert stages["train/sst2-l-lora"].config.lr == 3e-2  # task:variant wins over all
    assert "merge/l-lora-factors-task-arithmetic" in stages  # L-LoRA merges its own parameters
    assert "merge/l-lora-delta-w-task-arithmetic" not in stages
    assert stages["joint/lora-uniform"].config.references == [str(tmp_path / "s/train/sst2-lora"),
                                                              str(tmp_path / "s/train/mrpc-lora")]


def test_study_runs_resumes_and_reports(tmp_path, tiny_model, glue_dir, monkeypatch):
    out = tmp_path / "study"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out)
    run_study(recipe, only="train/sst2")  # an interrupted study: one stage finished
    assert (out / "train/sst2-lora/config.yaml").is_file() and not (out / "train/mrpc-lora").exists()

    ran = []
    real = dict(study_module.RUNNERS)
    monkeypatch.setattr(study_module, "RUNNERS", {k: (lambda s, o, k=k: (ran.append(s.name), real[k](s, o)))
                                                  for k in real})
    run_study(recipe)
    assert "train/sst2-lora" not in ran  # finished stages are skipped
    assert ran == ["train/mrpc-lora", "merge/lora-delta-w-task-arithmetic", "merge/lora-delta-w-average",
                   "joint/lora-uniform"]
    ran.clear()
    run_study(recipe)
    assert ran == []

    merged = json.loads((out / "merge/lora-delta-w-task-arithmetic/eval.json").read_text())
    assert set(merged) >= {"sst2", "mrpc", "average_normalized"}
    assert set(merged["criteria"]) == set(CRITERIA)  # each criterion's choice, scored on dev for the report
    folder = out / "merge/lora-delta-w-task-arithmetic"  # a merge finished before choices were scored on dev
    (folder / "eval.json").write_text(json.dumps({k: v for k, v in merged.items() if k != "criteria"}))
    reseal(folder, "eval.json")
    run_study(recipe)  # gets them, without merging again
    assert ran == [] and json.loads((folder / "eval.json").read_text())["criteria"] == merged["criteria"]
    joint = json.loads((out / "joint/lora-uniform/eval.json").read_text())
    assert set(joint) >= {"sst2", "mrpc"}
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert {s["stage"] for s in stages} == {"train/sst2-lora", "train/mrpc-lora", "merge/lora-delta-w-average",
                                            "merge/lora-delta-w-task-arithmetic", "joint/lora-uniform"}
    assert all(s["seconds"] > 0 and s["peak_rss_mb"] > 0 for s in stages if s["status"] == "done")
    assert [s["status"] for s in stages].count("done") == 5

    report = write_report(out).read_text()
    assert "| lora |" in report and "lora-delta-w-task-arithmetic" in report and "lora-uniform" in report
    assert "## Which selection criterion chooses best" in report and "| worst |" in report  # searches halve
    assert "worst task (dev)" in report and " | 1 |\n" in report  # one plain search, scored on dev
    assert "Finished: 5 of 5 planned stages (train 2/2, merge 2/2, joint 1/1)." in report
    assert f"{merged['average_normalized']['normalized']:.3f}" in report
    own = {t: json.loads((out / f"train/{t}-lora/eval.json").read_text())[t]["score"] for t in ("sst2", "mrpc")}
    joint_average = (joint["sst2"]["score"] / own["sst2"] + joint["mrpc"]["score"] / own["mrpc"]) / 2
    assert f"**{joint_average:.3f}**" in report  # joint normalized by the same individual adapters
    assert (out / "report/lambda-sweep.png").stat().st_size > 1000
    assert (out / "report/weights-lora-uniform.png").stat().st_size > 1000

    # published: what git keeps once the run folders are gone (no weights)
    published = publish(out, out / "report.md", tmp_path / "docs" / "results" / "study")
    folder = published.parent
    assert published.read_text() == report and (folder / "report/lambda-sweep.png").is_file()
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["merge/lora-delta-w-task-arithmetic"] == merged and scores["joint/lora-uniform"] == joint
    assert set(scores) >= {"train/sst2-lora", "train/mrpc-lora"} and (folder / "recipe.yaml").is_file()
    assert not list(folder.rglob("*.safetensors"))


def test_changed_recipe_does_not_reuse_a_stale_stage(tmp_path, tiny_model, glue_dir):
    out = tmp_path / "study"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out, merge=None, joint=None)
    run_study(recipe, only="train/sst2")
    changed = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out, merge=None, joint=None,
                           train={"model": str(tiny_model), "data": str(glue_dir), "rank": 4, "alpha": 8.0,
                                  "lr": 0.5, "epochs": 2, "batch_size": 16, "max_length": 32, "device": "cpu"})
    with pytest.raises(FusekitError, match="train/sst2-lora was run with different lr"):
        run_study(changed)


def test_a_finished_merge_is_not_reused_once_the_recipe_asks_for_another(tmp_path, tiny_model, glue_dir):
    out = tmp_path / "study"
    merge = {"methods": ["task-arithmetic"], "spaces": ["delta-w"], "lambdas": [0.5, 1.0], "val_examples": 8,
             "select_on_seen": True}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out, merge=merge, joint=None)
    run_study(recipe)
    manifest = json.loads((out / "merge/lora-delta-w-task-arithmetic/manifest.json").read_text())
    assert manifest["settings"]["lambdas"] == [0.5, 1.0] and "device" not in manifest["settings"]
    run_study(recipe)  # the same recipe reuses it
    changed = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out, merge={**merge, "lambdas": [0.3]},
                           joint=None)
    with pytest.raises(FusekitError, match="lora-delta-w-task-arithmetic was merged with different lambdas than"):
        run_study(changed)


def test_a_merge_recorded_before_settings_were_is_held_to_what_it_recorded():
    from fusekit.merging.config import MergeConfig
    from fusekit.study.plan import MergeJob
    from fusekit.study.run import changed_merge

    job = MergeJob(["a", "b"], MergeConfig(lambdas=[0.5, 1.0], criterion="worst", calibrate=True, precision="auto"))
    old = {"method": "task-arithmetic", "space": "delta-w", "search_criterion": "worst", "calibration": {},
           "inputs": [{"run": "a"}, {"run": "b"}]}
    assert changed_merge(old, job) == []
    assert changed_merge({**old, "search_criterion": "normalized"}, job) == ["criterion"]
    assert changed_merge({k: v for k, v in old.items() if k != "calibration"}, job) == ["calibrate"]
    assert changed_merge({**old, "inputs": [{"run": "a"}, {"run": "c"}]}, job) == ["inputs"]


def test_report_writes_only_into_a_study_fusekit_wrote(tmp_path):
    (tmp_path / "recipe.yaml").write_text("a user's own recipe")
    with pytest.raises(FusekitError, match="is not a study folder"):
        write_report(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_report_needs_a_study_folder(tmp_path):
    with pytest.raises(FusekitError, match="not a study folder"):
        write_report(tmp_path)


def test_cli_run_and_report_errors_are_one_line(tmp_path, tiny_model, glue_dir):
    from typer.testing import CliRunner

    from cli.main import app

    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, tmp_path / "s", seeds=[0, "one"])
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {recipe}: key 'seeds' is [0, 'one'], expected list[int]"]
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "not a study folder" in result.output

    good = write_recipe(tmp_path / "g.yaml", tiny_model, glue_dir, tmp_path / "s")
    result = CliRunner().invoke(app, ["run", str(good), "--dry-run"])
    assert result.exit_code == 0
    assert "joint/lora-uniform:" in result.output and "merge/lora-delta-w-average:" in result.output
    assert not (tmp_path / "s").exists()


def test_only_selects_by_prefix_or_glob():
    from fusekit.study.run import selected

    assert selected("train/sst2-lora", None)
    assert selected("train/sst2-lora", "train/")
    assert selected("merge/lora-delta-w-ties", "train/,merge/lora-*")
    assert not selected("merge/l-lora-factors-ties", "train/,merge/lora-*")
    assert selected("train/rte-l-lora-network", "train/*-network")


def test_report_skips_checkpoints_and_temp_folders(tmp_path):
    (tmp_path / "recipe.yaml").write_text("out: x\n")
    (tmp_path / ".fusekit.json").write_text('{"kind": "study"}')
    for name in ("lora-coba.checkpoint", "lora-uniform.tmp-x1"):
        (tmp_path / "joint" / name).mkdir(parents=True)
        (tmp_path / "joint" / name / "manifest.json").write_text('{"step": 3}')
    (tmp_path / "train" / "sst2-lora.checkpoint").mkdir(parents=True)
    (tmp_path / "train" / "sst2-lora.checkpoint" / "config.yaml").write_text("task: sst2\n")
    assert "## Stages" in write_report(tmp_path).read_text()


def test_report_finds_input_runs_recorded_relative_to_another_directory(tmp_path):
    from fusekit.study.records import normalize

    (tmp_path / "train" / "sst2-lora").mkdir(parents=True)
    (tmp_path / "train" / "sst2-lora" / "eval.json").write_text('{"sst2": {"score": 0.8, "examples": 872}}')
    manifest = {"inputs": [{"task": "sst2", "run": "somewhere/else/train/sst2-lora"}]}
    scores = normalize(tmp_path, manifest, {"sst2": {"score": 0.6, "examples": 872}})
    assert scores["sst2"] == {"score": 0.6, "normalized": 0.6 / 0.8}
    different = normalize(tmp_path, manifest, {"sst2": {"score": 0.6, "examples": 100}})  # other examples
    assert different["sst2"]["normalized"] is None


def test_confidence_interval_by_hand():
    from fusekit.evaluation.metrics import format_ci, mean_ci

    mean, half = mean_ci([1.0, 2.0, 3.0])  # s = 1, t(0.975, 2) = 4.302653
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)
    assert mean_ci([0.5]) == (0.5, None) and format_ci([0.5]) == "0.500"
    assert format_ci([0.8, 0.9]) == f"0.850 ± {12.706205 * 0.0707107 / 2 ** 0.5:.3f}"


def test_seeds_are_reported_as_mean_and_ci_and_variants_paired_by_seed(tmp_path):
    from fusekit.study.report import individual_table, paired_table

    study_folder(tmp_path, "tasks: [sst2]\nseeds: [0, 1, 2]\nadapters: {lora: {}, l-lora: {}}\n")
    scores = {("lora", 0): 0.80, ("lora", 1): 0.84, ("lora", 2): 0.82,
              ("l-lora", 0): 0.82, ("l-lora", 1): 0.85, ("l-lora", 2): 0.85}
    for (variant, seed), score in scores.items():
        folder = tmp_path / "train" / f"sst2-{variant}-seed{seed}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("task: sst2\n")
        (folder / "eval.json").write_text(json.dumps({"sst2": {"accuracy": score, "score": score}}))
    table, tasks = individual_table(tmp_path)
    assert "| lora (3 seeds) | 0.820 ± 0.050 |" in table  # s = 0.02, t(0.975, 2)·s/√3 = 0.0497
    paired = paired_table(tmp_path, tasks)  # differences 0.02, 0.01, 0.03: mean 0.02, s = 0.01
    assert f"| l-lora − lora | 0.020 ± {4.302653 * 0.01 / 3 ** 0.5:.3f} |" in paired


def test_task_subsets_by_hand():
    from fusekit.study.plan import task_subsets

    tasks = ["sst2", "rte", "mrpc", "cola", "stsb"]
    assert len(task_subsets(tasks, 2, None, 0)) == 10 and task_subsets(tasks, 5, 3, 0) == [tuple(tasks)]
    sample = task_subsets(tasks, 3, 4, seed=7)
    every = task_subsets(tasks, 3, None, 0)
    assert len(sample) == 4 and len(set(sample)) == 4 and sample == sorted(sample, key=every.index)
    assert sample == task_subsets(tasks, 3, 4, seed=7) and sample != task_subsets(tasks, 3, 4, seed=8)


def test_scaling_and_joint_run_on_the_seeds_they_name(tmp_path, tiny_model, glue_dir):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, tmp_path / "s", seeds=[0, 1], merge=None,
                          scaling={"spaces": ["delta-w"], "sizes": [2], "seeds": [1]},
                          joint={"balancers": ["uniform"], "seeds": [0]})
    names = [s.name for s in plan(load_study(recipe), str(recipe))]
    assert [n for n in names if n.startswith(("scaling/", "joint/"))] == [
        "joint/lora-uniform-seed0", "scaling/lora-delta-w-task-arithmetic-k2-sst2+mrpc-seed1"]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, tmp_path / "s", seeds=[0, 1],
                          joint={"seeds": [2]})
    with pytest.raises(FusekitError, match=r"r.yaml: joint.seeds: 2 is not one of the study's seeds \[0, 1\]"):
        plan(load_study(recipe), str(recipe))


def test_a_balancers_own_settings_reach_its_joint_run_alone(tmp_path, tiny_model, glue_dir):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, tmp_path / "s", merge=None,
                          joint={"balancers": ["uniform", "coba"], "settings": {"lr": 0.01},
                                 "balancer_settings": {"coba": {"coba_interval": 3, "lr": 0.02}}})
    joints = {s.id.balancer: s.config for s in plan(load_study(recipe), str(recipe)) if s.kind == "joint"}
    assert (joints["coba"].coba_interval, joints["coba"].lr) == (3, 0.02)
    assert (joints["uniform"].coba_interval, joints["uniform"].lr) == (None, 0.01)
    for wrong in ({"famo": {"lr": 0.1}}, {"coba": 3}):
        bad = write_recipe(tmp_path / "bad.yaml", tiny_model, glue_dir, tmp_path / "s", merge=None,
                           joint={"balancers": ["uniform", "coba"], "balancer_settings": wrong})
        with pytest.raises(FusekitError, match=r"bad.yaml: joint.balancer_settings.(famo|coba): expected one of the "
                                               r"joint's balancers \(uniform, coba\)"):
            plan(load_study(bad), str(bad))
    bad = write_recipe(tmp_path / "bad.yaml", tiny_model, glue_dir, tmp_path / "s", merge=None,
                       joint={"balancers": ["coba"], "balancer_settings": {"coba": {"coba_intervl": 3}}})
    with pytest.raises(FusekitError, match="bad.yaml: joint/lora-coba: unknown key 'coba_intervl'"):
        plan(load_study(bad), str(bad))


def test_fusion_vs_number_of_tasks_is_planned_run_and_reported(tmp_path, tiny_model, glue_dir):
    out = tmp_path / "study"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out, tasks=["sst2", "mrpc", "cola"],
                          merge=None, joint=None, scaling={"spaces": ["delta-w"], "lambdas": [0.5, 1.0],
                                                           "select_on_seen": True, "val_examples": 8, "max_subsets": 2})
    names = [s.name for s in plan(load_study(recipe), str(recipe)) if s.name.startswith("scaling/")]
    pairs = {f"scaling/lora-delta-w-task-arithmetic-k2-{a}+{b}" for a, b in
             [("sst2", "mrpc"), ("sst2", "cola"), ("mrpc", "cola")]}
    assert len(names) == 3 and set(names[:2]) < pairs  # 2 of the 3 pairs (max_subsets), then the triple
    assert names[2] == "scaling/lora-delta-w-task-arithmetic-k3-sst2+mrpc+cola"
    run_study(recipe)
    report = write_report(out).read_text()
    assert "## Fusion against the number of merged tasks" in report
    assert "| lora-delta-w-task-arithmetic |" in report and "(n=2)" in report and "(n=1)" in report
    assert (out / "report/scaling.png").stat().st_size > 1000


def test_similarity_by_hand_in_each_space(sst2_run, tiny_config, tmp_path):
    """LoRA compares ΔW = s·B·A (B0 = 0 here); the matrix is symmetric with a unit diagonal and matches a direct
    computation from the factors."""
    from dataclasses import replace

    import numpy as np
    import torch

    from fusekit.artifacts.run_folder import load_run
    from fusekit.merging.similarity import similarity_matrix
    from fusekit.training.train import train

    train(replace(tiny_config, task="rte", epochs=1, max_train=16, out=str(tmp_path / "rte")))
    runs = [load_run(sst2_run[0]), load_run(tmp_path / "rte")]
    matrix = similarity_matrix(runs)
    products = []
    for run in runs:
        v, scale = run.vector, run.vector.meta["alpha"] / run.vector.meta["rank"]
        layers = sorted({k.rsplit(".lora_", 1)[0] for k in v.init})
        products.append(torch.cat([(scale * (v.init[f"{m}.lora_B.weight"] + v.delta[f"{m}.lora_B.weight"])
                                    @ (v.init[f"{m}.lora_A.weight"] + v.delta.get(f"{m}.lora_A.weight", 0))
                                    ).flatten() for m in layers]).double())
    expected = float(products[0] @ products[1] / products[0].norm() / products[1].norm())
    assert np.allclose(np.diag(matrix), 1.0) and matrix[0, 1] == pytest.approx(matrix[1, 0])
    assert matrix[0, 1] == pytest.approx(expected, rel=1e-6)


def test_merge_settings_are_paired_by_seed_against_the_first_adapters_same_method(tmp_path):
    from fusekit.study.plan import StageId
    from fusekit.study.report import paired_merge_table

    study_folder(tmp_path, "tasks: [sst2, cola]\nadapters: {lora: {}, l-lora: {}}\n")
    own = {"sst2": 0.8, "cola": 0.2}

    def row(variant, space, method, seed, sst2, cola):
        scores = {"sst2": {"score": sst2, "normalized": sst2 / own["sst2"]},
                  "cola": {"score": cola, "normalized": cola / own["cola"] if cola > 0 else None}}
        return StageId("merge", None, variant, seed, space, method), {"method": method}, scores

    ta = "task-arithmetic"
    rows = [row("lora", "delta-w", ta, 0, 0.72, 0.10), row("lora", "delta-w", ta, 1, 0.76, 0.12),
            row("l-lora", "factors", ta, 0, 0.76, 0.08), row("l-lora", "factors", ta, 1, 0.72, 0.0),
            row("lora", "delta-w", "ties", 0, 0.8, 0.1),  # one seed of TIES: nothing to pair
            row("l-lora", "factors", "average", 0, 0.7, 0.1), row("l-lora", "factors", "average", 1, 0.7, 0.1),
            row("lora", "delta-w", "average", 0, 0.8, 0.1), row("lora", "delta-w", "average", 1, 0.8, 0.1),
            row("lora", "factors", "average", 0, 0.6, 0.1), row("lora", "factors", "average", 1, 0.6, 0.1)]
    calibrated = [row("lora", "delta-w", ta, 0, 0.81, 0.10), row("lora", "delta-w", ta, 1, 0.80, 0.13)]
    rows += [(replace(stage_id, calibrated=True), manifest, scores) for stage_id, manifest, scores in calibrated]
    table = paired_merge_table(tmp_path, rows, ["sst2", "cola"])
    # calibrated − plain, normalized: (1.0125 + 0.5)/2 − 0.7 = 0.05625 and (1 + 0.65)/2 − 0.775 = 0.05 (mean 0.053125,
    # s 0.0044194); raw: 0.455 − 0.41 = 0.045 and 0.465 − 0.44 = 0.025 (mean 0.035, s 0.0141421)
    assert (f"| lora-delta-w-task-arithmetic-calibrated − lora-delta-w-task-arithmetic | "
            f"0.053 ± {12.706205 * 0.0044194 / 2 ** 0.5:.3f} | 0.035 ± {12.706205 * 0.0141421 / 2 ** 0.5:.3f} | 2 |"
            ) in table
    assert "task-arithmetic − lora-delta-w-task-arithmetic-calibrated" not in table
    # normalized averages: LoRA (0.9 + 0.5)/2 = 0.7, (0.95 + 0.6)/2 = 0.775; L-LoRA (0.95 + 0.4)/2 = 0.675 and 0.9
    # (its CoLA is undefined): differences -0.025, 0.125, mean 0.05, s = 0.106066. Raw: 0.42 - 0.41, 0.36 - 0.44.
    half = 12.706205 * 0.1060660 / 2 ** 0.5
    raw_half = 12.706205 * 0.0636396 / 2 ** 0.5
    assert (f"| l-lora-factors-task-arithmetic − lora-delta-w-task-arithmetic | 0.050 ± {half:.3f} | "
            f"-0.035 ± {raw_half:.3f} | 2 |") in table
    assert "ties" not in table
    # another variant against the first in its own space where the first has it (L-LoRA against LoRA, both in
    # factor space); the first variant's factor space against its ΔW space; no comparison twice. Normalized
    # averages: L-LoRA (0.875 + 0.5)/2 = 0.6875, LoRA factors (0.75 + 0.5)/2 = 0.625, LoRA ΔW (1 + 0.5)/2 = 0.75
    assert f"| l-lora-factors-average − lora-factors-average | {0.0625:.3f} ± 0.000 | 0.050 ± 0.000 | 2 |" in table
    assert "| lora-factors-average − lora-delta-w-average | -0.125 ± 0.000 | -0.100 ± 0.000 | 2 |" in table
    assert "l-lora-factors-average − lora-delta-w-average" not in table
    assert "delta-w-average − lora-factors" not in table


def test_disentanglement_is_planned_per_pair_variant_and_space_run_and_reported(tmp_path, tiny_model, glue_dir):
    out = tmp_path / "study"
    adapters = {"lora": {"adapter": "lora"}, "l-lora": {"adapter": "l-lora"}}
    settings = {"pairs": ["sst2+mrpc"], "alphas": [0.0, 1.0], "examples": 8, "spaces": ["delta-w", "factors"]}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out, tasks=["sst2", "mrpc", "cola"],
                          merge=None, joint=None, adapters=adapters, seeds=[0, 1], disentangle=settings)
    names = [s.name for s in plan(load_study(recipe), str(recipe)) if s.kind == "disentangle"]
    assert sorted(names) == ["disentangle/l-lora-factors-sst2+mrpc-seed0", "disentangle/lora-delta-w-sst2+mrpc-seed0",
                             "disentangle/lora-factors-sst2+mrpc-seed0"]  # the first seed; L-LoRA in its own space
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out, tasks=["sst2", "mrpc"], merge=None,
                          joint=None, adapters=adapters, disentangle={**settings, "pairs": None})
    run_study(recipe)
    assert sorted(p.name for p in (out / "disentangle").iterdir() if p.is_dir()) == [
        "l-lora-factors-sst2+mrpc", "lora-delta-w-sst2+mrpc", "lora-factors-sst2+mrpc"]
    with pytest.raises(FusekitError, match="another α grid or space"):  # a finished grid is not silently reused
        run_study(write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out, tasks=["sst2", "mrpc"], merge=None,
                               joint=None, adapters=adapters, disentangle={**settings, "alphas": [0.0, 2.0]}))
    report = write_report(out).read_text()
    assert "## Weight disentanglement" in report and "| pair | l-lora-factors | lora-delta-w | lora-factors |" in report
    assert (out / "report/disentanglement.png").stat().st_size > 1000


def test_disentanglement_table_by_hand(tmp_path):
    from fusekit.study.records import disentanglement_grids
    from fusekit.study.report import disentanglement_section

    study_folder(tmp_path, "tasks: [sst2, mrpc, cola]\nseeds: [0, 1]\nadapters: {lora: {}, l-lora: {}}\n"
                           "disentangle: {}\n")
    alphas = [-1.0, 0.0, 1.0]
    base = [[0.2, 0.1, 0.3], [0.0, 0.0, 0.1], [0.4, 0.2, 0.6]]  # task 1's term; task 2's is twice it

    def write(name, tasks, scale):
        per_task = {tasks[0]: [[scale * v for v in row] for row in base],
                    tasks[1]: [[2 * scale * v for v in row] for row in base]}
        folder = tmp_path / "disentangle" / name
        folder.mkdir(parents=True)
        record = {"tasks": tasks, "alphas": alphas, "space": "factors", "examples": 8, "per_task": per_task}
        (folder / "disentanglement.json").write_text(json.dumps([record]))

    write("l-lora-factors-sst2+mrpc-seed0", ["sst2", "mrpc"], 1.0)
    write("lora-factors-sst2+mrpc-seed0", ["sst2", "mrpc"], 0.5)
    write("lora-factors-sst2+cola-seed0", ["sst2", "cola"], 1.0)
    grids = disentanglement_grids(tmp_path)
    text = "\n".join(disentanglement_section(tmp_path, grids, tmp_path / "d.png"))
    # ξ = 3·base: mean over the grid 3·1.9/9 = 0.6333; over α ∈ [0, 1]² (rows/columns 0 and 1) 3·0.9/4 = 0.675.
    assert "| pair | lora-factors | l-lora-factors |" in text  # the recipe's variant order
    assert "| sst2+mrpc | 0.317 (0.338) | 0.633 (0.675) |" in text
    assert "| sst2+cola | 0.633 (0.675) | – |" in text
    assert "mean over" not in text  # one complete pair: nothing to average
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_report_states_how_precisely_the_searches_chose():
    from fusekit.study.report import search_precision

    manifests = [{"search_standard_error": 0.01, "search_examples": {"sst2": 200, "cola": 200}},
                 {"search_standard_error": 0.05, "search_examples": {"sst2": 200, "cola": 150}},
                 {"search_standard_error": 0.03, "search_examples": {"sst2": 200}}, {"search": None}]
    text = search_precision(manifests)[0]
    assert "150–200 examples per task" in text and "0.030 (median), 0.050 (largest) over 3 searched merges" in text
    assert "above 0.02" in text and "below 0.02" in search_precision(manifests[:1])[0]
    assert search_precision([{"search": None}]) == []
    assert "an unrecorded number of examples" in search_precision([{"search_standard_error": 0.01}])[0]
    assert "λ's standard error" not in text  # searches recorded before the choice's spread was
    spread = [{"search_standard_error": 0.01, "search_choice_standard_error": {"lam": lam}} for lam in (0.0, 0.2, 0.05)]
    assert "is 0.050 (median), 0.200 (largest) over 3 searches of λ" in search_precision(spread)[0]
    assert "another criterion" not in search_precision(spread)[0]
    spread[0]["search_choice_standard_error_by_criterion"] = {"raw": {"lam": 0.1}, "worst": {"lam": 0.3}}
    spread[1]["search_choice_standard_error_by_criterion"] = {"raw": {"lam": 0.0}, "worst": {"lam": 0.1}}
    assert "criterion chosen, on the same resamples (median, largest): raw 0.050, 0.100; worst 0.200, 0.300 " \
           "(over 2 searches)" in search_precision(spread)[0]


def test_a_study_merges_a_method_again_with_one_lambda_per_task_and_with_calibrated_answers(tmp_path):
    from fusekit.study.plan import plan
    from fusekit.study.recipe import load_study

    path = tmp_path / "r.yaml"
    recipe = {"out": str(tmp_path / "s"), "tasks": ["sst2", "rte"], "train": {"max_train": 64},
              "merge": {"methods": ["task-arithmetic", "ties"], "spaces": ["delta-w"], "per_task": ["task-arithmetic"],
                        "calibrate": ["ties"]}}
    path.write_text(yaml.safe_dump(recipe))
    merges = {s.name: s.config.config for s in plan(load_study(path), str(path)) if s.kind == "merge"}
    assert set(merges) == {"merge/lora-delta-w-task-arithmetic", "merge/lora-delta-w-task-arithmetic-per-task",
                           "merge/lora-delta-w-ties", "merge/lora-delta-w-ties-calibrated"}
    assert merges["merge/lora-delta-w-task-arithmetic-per-task"].per_task
    assert not merges["merge/lora-delta-w-task-arithmetic"].per_task
    assert merges["merge/lora-delta-w-ties-calibrated"].calibrate and not merges["merge/lora-delta-w-ties"].calibrate
    for key, method, error in (("per_task", "dare", "per_task: 'dare' is not one of the merge's methods with a λ"),
                               ("calibrate", "average", "calibrate: 'average' is not one of the merge's methods")):
        path.write_text(yaml.safe_dump({**recipe, "merge": {**recipe["merge"], key: [method]}}))
        with pytest.raises(FusekitError, match=error):
            plan(load_study(path), str(path))


def test_a_published_study_continues_on_a_machine_that_lost_its_runs(tmp_path, tiny_model, glue_dir, monkeypatch):
    out, docs = tmp_path / "study", tmp_path / "docs" / "study"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out)
    run_study(recipe, only="merge/lora-delta-w-task-arithmetic")  # pulls the training stages it needs
    assert (out / "train/sst2-lora/config.yaml").is_file() and not (out / "merge/lora-delta-w-average").exists()
    merged = json.loads((out / "merge/lora-delta-w-task-arithmetic/eval.json").read_text())
    publish(out, write_report(out), docs)
    records = json.loads((docs / "records.json").read_text())
    assert records["merge/lora-delta-w-task-arithmetic"]["manifest.json"]["inputs"][0]["task"] == "sst2"
    assert not (docs / "verbalizers.json").exists()  # an encoder learns heads: no words to record
    shutil.rmtree(out)  # a new machine: only what git kept

    ran = []
    real = dict(study_module.RUNNERS)
    monkeypatch.setattr(study_module, "RUNNERS", {k: (lambda s, o, k=k: (ran.append(s.name), real[k](s, o)))
                                                  for k in real})
    run_study(recipe, only="merge/lora-delta-w-task-arithmetic", restore=docs)
    assert ran == []  # restored, not merged again, and so its training is not needed
    assert json.loads((out / "merge/lora-delta-w-task-arithmetic/eval.json").read_text()) == merged
    report = write_report(out).read_text()
    assert "| lora |" in report  # the published adapters' scores stand in for the runs this machine lacks
    assert f"{merged['average_normalized']['normalized']:.3f}" in report
    assert "train 2/2" in report and "merge 1/2" in report

    run_study(recipe, only="merge/lora-delta-w-average", restore=docs)  # needs the adapters' weights again
    assert ran == ["train/sst2-lora", "train/mrpc-lora", "merge/lora-delta-w-average"]
    report = write_report(out).read_text()
    assert "Trained again on this machine: 2 adapters the study had published; 2 scored exactly" in report
    restored = json.loads((out / "restored-scores.json").read_text())
    restored["train/sst2-lora"]["sst2"]["loss"] += 1e-9  # the dev loss's last digits follow the thread count
    (out / "restored-scores.json").write_text(json.dumps(restored))
    assert "2 scored exactly" in write_report(out).read_text()
    restored["train/sst2-lora"]["sst2"]["score"] += 1e-9
    (out / "restored-scores.json").write_text(json.dumps(restored))
    mine = json.loads((out / "train/sst2-lora/eval.json").read_text())["sst2"]["score"]
    report = write_report(out).read_text()  # the one that differs is named, with both scores
    assert (f"1 scored exactly the published dev scores; the others (now against published): sst2-lora "
            f"{mine:.4f} against {mine + 1e-9:.4f} (1.0e-09 apart).") in report
    publish(out, out / "report.md", docs)
    scores = json.loads((docs / "scores.json").read_text())
    assert scores["merge/lora-delta-w-task-arithmetic"] == merged and "merge/lora-delta-w-average" in scores
    stages = [json.loads(line) for line in (docs / "stages.jsonl").read_text().splitlines()]
    assert {s["stage"] for s in stages if s.get("restored")} >= {"merge/lora-delta-w-task-arithmetic"}
    first_new = next(i for i, s in enumerate(stages) if not s.get("restored"))
    assert not any(s.get("restored") for s in stages[first_new:])  # history first: a stage's last line is its state


def test_restore_skips_stages_the_recipe_now_plans_differently(tmp_path, tiny_model, glue_dir):
    out, docs = tmp_path / "study", tmp_path / "docs" / "study"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out)
    run_study(recipe, only="merge/lora-delta-w-average")
    publish(out, write_report(out), docs)
    shutil.rmtree(out)
    changed = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, out,
                           merge={"methods": ["average"], "spaces": ["delta-w"], "lambdas": [1.0],
                                  "val_examples": 4, "select_on_seen": True})
    run_study(changed, only="baseline/", restore=docs)
    assert not (out / "merge/lora-delta-w-average").exists()  # merged on other held-out examples: not restored
    before = (docs / "scores.json").read_bytes()
    with pytest.raises(FusekitError, match=r"would drop 1 stages published there and not finished in it "
                                           r"\(merge/lora-delta-w-average\).*--drop-stages"):
        publish(out, write_report(out), docs)  # a republish must not lose what the published folder holds
    assert (docs / "scores.json").read_bytes() == before
    publish(out, out / "report.md", docs, drop_stages=True)  # the recipe changed it on purpose
    assert "merge/lora-delta-w-average" not in json.loads((docs / "scores.json").read_text())


def test_a_tune_that_chooses_otherwise_than_published_retires_what_followed_it(tmp_path):
    """Plans read today's tune choice, so a retuned task's training looks unchanged: its adapters, baseline and the
    merges of them are not the published stages (not restored, no reproduction claimed); other tasks' are."""
    from fusekit.study.plan import Stage, StageId
    from fusekit.study.restore import retrained_differently

    def stage(kind, task=None, variant=None, needs=()):
        return Stage(StageId(kind, task, variant), kind, None, needs)

    stages = [stage("tune", "sst2", "lora"), stage("tune", "rte", "lora"), stage("baseline", "sst2"),
              stage("baseline", "rte"), stage("train", "sst2", "lora"), stage("train", "rte", "lora"),
              stage("train", "sst2", "l-lora")]
    stages += [stage("merge", needs=(stages[4].name, stages[5].name)), stage("merge", "x", needs=(stages[5].name,))]
    for task, lr in (("sst2", 0.1), ("rte", 0.2)):
        (tmp_path / f"tune/{task}-lora").mkdir(parents=True)
        (tmp_path / f"tune/{task}-lora/tune.json").write_text(json.dumps({"chosen": {"lr": lr}}))
    records = {"tune/sst2-lora": {"tune.json": {"chosen": {"lr": 0.3}}},
               "tune/rte-lora": {"tune.json": {"chosen": {"lr": 0.2}}}}
    stale = retrained_differently(stages, records, tmp_path, baseline_variant="lora")
    assert stale == {stages[2].name, stages[4].name, stages[7].name}
    joints = [stage("tune", None, "lora"), Stage(StageId("joint", None, "lora", balancer="coba"), "joint", None, ()),
              Stage(StageId("joint", None, "l-lora", balancer="coba"), "joint", None, ())]
    (tmp_path / "tune/joint-lora").mkdir(parents=True)
    (tmp_path / "tune/joint-lora/tune.json").write_text(json.dumps({"chosen": {"lr": 0.003}}))
    records["tune/joint-lora"] = {"tune.json": {"chosen": {"lr": 0.001}}}  # a retuned joint: its runs are not those
    assert retrained_differently(joints, records, tmp_path, "lora") == {"joint/lora-coba"}


@pytest.mark.parametrize("layout, message", [({}, "expected scores.json there"),
                                             ({"scores.json": "[1]"}, "expected recipe.yaml there")])
def test_restore_from_a_folder_that_is_not_published_results_is_one_line(tmp_path, tiny_model, glue_dir, layout,
                                                                         message):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, tmp_path / "study")
    (tmp_path / "docs").mkdir()
    for name, text in layout.items():
        (tmp_path / "docs" / name).write_text(text)
    with pytest.raises(FusekitError, match=message):
        run_study(recipe, only="baseline/", restore=tmp_path / "docs")


def test_only_that_matches_no_stage_is_refused_before_anything_is_written(tmp_path, tiny_model, glue_dir):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, tmp_path / "s")
    with pytest.raises(FusekitError, match="--only 'merge/lora-deltaw': no stage of .* matches it"):
        run_study(recipe, only="merge/lora-deltaw")
    assert not (tmp_path / "s").exists()


def test_text_results_are_restored_only_while_fusekit_asks_in_their_words(tmp_path, tiny_llama, glue_dir,
                                                                          monkeypatch):
    from dataclasses import replace

    from fusekit.data import tasks

    out, docs = tmp_path / "study", tmp_path / "docs"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_llama, glue_dir, out, tasks=["sst2", "rte"], task_settings={},
                          baselines=True)
    run_study(recipe, only="baseline/")
    publish(out, write_report(out), docs)
    assert json.loads((docs / "verbalizers.json").read_text())["rte"] == tasks.TASKS["rte"].verbalizer_record()
    shutil.rmtree(out)
    with monkeypatch.context() as patch:
        patch.setitem(tasks.TASKS, "rte", replace(tasks.TASKS["rte"], answers=(" true", " false")))
        with pytest.raises(FusekitError, match="fusekit now asks rte in other words than those results were made "
                                               "with: run the study without --restore"):
            run_study(recipe, only="baseline/", restore=docs)
    assert not (out / "baseline").exists()
    (docs / "verbalizers.json").unlink()  # published before words were recorded: in the words fusekit first asked
    run_study(recipe, only="baseline/", restore=docs)
    assert (out / "baseline/rte/baseline.json").is_file()


def test_the_report_says_which_tasks_a_calibrated_merge_calibrated():
    from fusekit.study.report import _params

    assert _params({"params": {"lam": 0.5}}) == "λ=0.5"
    assert _params({"params": {"lam": 0.5}, "calibration": {"sst2": [0, 1.4], "rte": [0, 1.2]}}) == \
        "λ=0.5, offsets: sst2, rte"
    assert _params({"params": {"lam": 0.5}, "calibration": {}}) == "λ=0.5, offsets: none"


def test_a_study_loads_all_the_code_its_stages_import_before_the_first_runs():
    """Modules imported inside functions are read from disk when first used: all of them load at the study's start
    (STAGE_MODULES), so a study of hours runs one version of fusekit even while its files are edited."""
    import ast
    import subprocess
    import sys

    from fusekit.study.run import STAGE_MODULES

    root = Path(study_module.__file__).parents[1]
    lazy = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                lazy |= {n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
                         and (n.module or "").startswith("fusekit")}
    assert lazy  # the check sees them
    loaded = subprocess.run([sys.executable, "-c", "import sys; import importlib; "
                             f"[importlib.import_module(m) for m in {['fusekit.study.run', *STAGE_MODULES]!r}]; "
                             "print('\\n'.join(sys.modules))"], capture_output=True, text=True, check=True).stdout
    missing = sorted(lazy - set(loaded.split()))
    assert not missing, f"add to STAGE_MODULES (or import at module level): {missing}"


def test_a_studys_joint_trains_each_task_on_its_own_adapters_examples(tmp_path, tiny_model, glue_dir):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, glue_dir, tmp_path / "study",
                          task_settings={"mrpc": {"max_train": 24}},
                          joint={"balancers": ["uniform"], "settings": {"lr": 0.01}})
    joint = next(s for s in plan(load_study(recipe), str(recipe)) if s.kind == "joint")
    train = {s.config.task: s.config.max_train for s in plan(load_study(recipe), str(recipe)) if s.kind == "train"}
    assert joint.config.task_caps() == train
    bad = write_recipe(tmp_path / "bad.yaml", tiny_model, glue_dir, tmp_path / "study",
                       joint={"balancers": ["uniform"], "settings": {"task_max_train": ["rte=4"]}})
    with pytest.raises(FusekitError, match="bad.yaml: joint/lora-uniform: task_max_train: 'rte=4'"):
        plan(load_study(bad), str(bad))


def test_the_similarity_section_names_a_variant_whose_adapters_are_not_in_the_folder(tmp_path, monkeypatch):
    """A study continued with --restore has the published scores of adapters it did not train again, but not their
    vectors: the figure cannot draw them, and the text says so instead of leaving them out unnoticed."""
    import numpy as np

    from fusekit.study import report

    monkeypatch.setattr(report, "similarity_matrices", lambda study, tasks: [("lora", np.array([[1, 0.5], [0.5, 1]]))])
    monkeypatch.setattr(report, "declared_variants", lambda study: ["lora", "l-lora"])
    found = report.Found(tmp_path, tmp_path, ["sst2", "mrpc"], [], [])
    text = "\n".join(report.similarity_section(found))
    assert "Mean |similarity| between tasks: lora 0.500. Not drawn: l-lora (its adapters are not in this study " \
           "folder)." in text
    monkeypatch.setattr(report, "declared_variants", lambda study: ["lora"])
    assert "Not drawn" not in "\n".join(report.similarity_section(found))
