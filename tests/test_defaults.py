"""Settings a run leaves unset come from its task and model family; a recipe key wins over them and a flag over
everything; the declared task defaults are the ones the published tunes chose."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from fusekit.config import JointConfig, TrainConfig
from fusekit.data.tasks import TASKS
from fusekit.models.defaults import (
    DEFAULTED,
    MODEL_DEFAULTS,
    default_help,
    resolve_defaults,
)

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = {"head": [ROOT / "docs/results/defaults-encoder/scores.json"],
             "text": [ROOT / "docs/results/defaults-text/scores.json", ROOT / "docs/results/smollm2-seeds/scores.json"]}


def dry_run(*args: str) -> dict:
    result = CliRunner().invoke(app, ["train", *args, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def a_task_default(family: str) -> tuple[str, str, object]:
    """A (task, setting, value) whose task default differs from its family's."""
    return next((task, key, value) for task, spec in TASKS.items()
                for key, value in spec.defaults.get(family, {}).items() if value != MODEL_DEFAULTS[family].get(key))


def test_a_task_default_is_used_unless_a_recipe_or_flag_sets_it(tiny_model, glue_dir, tmp_path):
    task, key, value = a_task_default("head")
    flag, base = "--" + key.replace("_", "-"), ["--task", task, "--model", str(tiny_model), "--data", str(glue_dir)]
    shown = dry_run(*base)[key]
    assert shown == {"value": value, "from": f"task default ({task}'s, head)"}
    other = "bi" if value == "cross" else "cross" if isinstance(value, str) else value * 2
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({key: other}))
    assert dry_run(str(recipe), *base)[key] == {"value": other, "from": f"recipe {recipe}"}
    third = other if isinstance(value, str) else value * 3
    assert dry_run(str(recipe), *base, flag, str(third))[key] == {"value": third, "from": "flag"}


def test_a_family_default_fills_what_the_task_leaves_and_the_rest_keeps_the_config_default(tiny_model, tiny_llama,
                                                                                           glue_dir):
    for model, family in ((tiny_model, "head"), (tiny_llama, "text")):
        shown = dry_run("--task", "wnli", "--model", str(model), "--data", str(glue_dir))
        for key in DEFAULTED:
            if key not in TASKS["wnli"].defaults.get(family, {}) and key != "target_modules":
                assert shown[key]["value"] == MODEL_DEFAULTS[family][key] and shown[key]["from"].startswith("model")
        assert shown["rank"] == {"value": 8, "from": "fusekit default"}
    assert shown["head_lr"]["value"] is None  # text: no head


def test_targets_default_to_every_projection_on_bert_style_encoders_and_to_peft_elsewhere(tiny_model, tiny_llama):
    assert resolve_defaults(TrainConfig(model=str(tiny_model))).config.target_modules == [
        "query", "key", "value", "dense"]
    assert resolve_defaults(TrainConfig(model=str(tiny_llama))).config.target_modules is None


def test_a_joint_run_takes_the_family_defaults_and_its_longest_task(tiny_model):
    resolved = resolve_defaults(JointConfig(tasks="sst2,rte", model=str(tiny_model)))
    assert resolved.config.pair_encoding == "cross" and resolved.config.lr == MODEL_DEFAULTS["head"]["lr"]
    lengths = [TASKS[t].defaults["head"].get("max_length", MODEL_DEFAULTS["head"]["max_length"])
               for t in ("sst2", "rte")]
    assert resolved.config.max_length == max(lengths)


def test_resolution_never_overrides_what_is_set(tiny_model):
    cfg = TrainConfig(task="stsb", model=str(tiny_model), **{k: v for k, v in [
        ("lr", 7e-4), ("head_lr", 7e-3), ("head_init", "probe"), ("epochs", 5), ("batch_size", 3),
        ("eval_batch_size", 9), ("max_length", 17), ("pair_encoding", "cross"), ("target_modules", ["query"]),
        ("subset_from", "sentences")]})
    resolved = resolve_defaults(cfg)
    assert resolved.config == cfg and resolved.sources == {}


def test_help_lists_each_family_default_and_the_tasks_that_differ():
    task, key, value = a_task_default("head")
    text = default_help(key)
    assert text.startswith("default by model family and task: head ") and f"{task} " in text
    assert default_help("rank") is None
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert "default by model family and task" in result.output


def tune_budgets(published: Path) -> dict[str, tuple]:
    """Each tune stage of a published study → the (max_train, epochs) its grid points train with."""
    from fusekit.study.plan import plan
    from fusekit.study.recipe import load_study

    stages = plan(load_study(published / "recipe.yaml"), str(published))
    return {s.name: (s.config.config.max_train, s.config.config.epochs) for s in stages if s.kind == "tune"}


@pytest.mark.parametrize("family", ["head", "text"])
def test_declared_task_defaults_are_what_the_published_tune_chose(family):
    """Every task default of a tuned setting is what a published tune chose for it at the quick path's budget (the
    first study's, `tune/<task>-<variant>`), and every such tune that learned anything is declared; a tune at
    another budget or whose every point stayed at chance does not set a default."""
    checked, quick = 0, {}
    for path in PUBLISHED[family]:
        budgets = tune_budgets(path.parent)
        for name, table in json.loads(path.read_text()).items():
            if not name.startswith("tune/") or "chosen" not in table or table.get("learned") is False:
                continue
            task, variant = name.split("/")[1].split("-", 1)
            if task == "joint":  # a joint run's tune (tune/joint-<variant>) sets no task's default
                continue
            if quick.setdefault(task, budgets[name]) != budgets[name]:
                continue
            declared = TASKS[task].defaults.get(family if variant == "lora" else f"{family}:{variant}", {})
            assert {k: declared.get(k) for k in table["chosen"]} == table["chosen"], (path.parent.name, name)
            checked += 1
    assert checked, f"no published tune for {family}"


def test_a_run_records_the_resolved_settings(sst2_run):
    out, _ = sst2_run
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert all(recorded[key] is not None for key in ("lr", "head_lr", "epochs", "batch_size", "max_length"))


def test_a_study_rerun_compares_resolved_settings(tiny_config, tmp_path, monkeypatch):
    """A stage planned with unset keys matches the run folder that recorded their resolved values; a changed
    default is a changed stage."""
    from fusekit.config import to_yaml
    from fusekit.errors import FusekitError
    from fusekit.study import run
    from fusekit.study.plan import Stage, StageId
    from fusekit.study.run import check_unchanged

    monkeypatch.setattr(run, "check_recorded_words", lambda folder: None)  # a config alone here, no task vector

    stage = Stage(StageId("train", "rte", "x"), "train",
                  replace(tiny_config, task="rte", max_length=None, eval_batch_size=None))
    (tmp_path / "train/rte-x").mkdir(parents=True)
    recorded = resolve_defaults(stage.config).config
    (tmp_path / "train/rte-x/config.yaml").write_text(to_yaml(recorded))
    check_unchanged(stage, tmp_path)
    (tmp_path / "train/rte-x/config.yaml").write_text(to_yaml(replace(recorded, max_length=recorded.max_length + 1)))
    with pytest.raises(FusekitError, match="different max_length"):
        check_unchanged(stage, tmp_path)


def test_a_finished_baseline_is_reused_only_with_the_settings_it_recorded(tiny_config, tmp_path):
    """A baseline's probe and majority class come from the training subset: a changed subset (here SST-2 drawn from
    whole sentences) is a changed stage; a file from before baselines recorded settings is held to the defaults."""
    from fusekit.errors import FusekitError
    from fusekit.evaluation.baselines import recorded_settings
    from fusekit.study.plan import Stage, StageId
    from fusekit.study.run import check_unchanged

    stage = Stage(StageId("baseline", "sst2"), "baseline", replace(tiny_config, task="sst2", subset_from=None))
    path = tmp_path / "baseline/sst2/baseline.json"
    path.parent.mkdir(parents=True)
    resolved = resolve_defaults(stage.config).config
    assert resolved.subset_from == "sentences"
    path.write_text(json.dumps({"settings": recorded_settings(resolved)}))
    check_unchanged(stage, tmp_path)
    path.write_text(json.dumps({"settings": recorded_settings(replace(resolved, max_train=7))}))
    with pytest.raises(FusekitError, match="computed with different max_train"):
        check_unchanged(stage, tmp_path)
    path.write_text(json.dumps({}))  # recorded before the setting: drawn from every phrase
    with pytest.raises(FusekitError, match="computed with different subset_from"):
        check_unchanged(stage, tmp_path)
    check_unchanged(replace(stage, config=replace(stage.config, subset_from="examples")), tmp_path)


def test_lp_ft_starts_the_head_at_the_linear_probe(tiny_config, glue_dir, tmp_path):
    """head_init probe: the head the adapter trains under is the probe fitted on the frozen features; fresh: the
    model class's own init. A run with it trains end to end."""
    import torch

    from fusekit.data.loading import load_split
    from fusekit.data.tasks import get_task
    from fusekit.evaluation.baselines import fit_head
    from fusekit.models.base import load_base_model
    from fusekit.training.train import _load_base, train

    cfg = resolve_defaults(replace(tiny_config, task="sst2", head_init="probe", max_train=32)).config
    task = get_task("sst2")
    split = load_split(task, "train", cfg.data).capped(cfg.max_train, cfg.seed)

    def head_state(base):
        return {k: v.clone() for k, v in base.model.get_submodule(base.head_modules[0]).state_dict().items()}

    torch.manual_seed(0)
    fresh = head_state(load_base_model(cfg.model, task, cfg.pooling, cfg.pair_encoding))
    torch.manual_seed(0)
    probed = head_state(_load_base(cfg, task, split))
    torch.manual_seed(0)
    reference = load_base_model(cfg.model, task, cfg.pooling, cfg.pair_encoding)
    fit_head(reference, task, split, cfg.max_length, cfg.eval_batch_size, cfg.seed, cfg.head_lr)
    assert all(torch.equal(probed[k], v) for k, v in head_state(reference).items())
    assert any(not torch.equal(probed[k], v) for k, v in fresh.items())
    torch.manual_seed(0)
    assert all(torch.equal(v, fresh[k]) for k, v in head_state(_load_base(replace(cfg, head_init="fresh"), task,
                                                                            split)).items())
    result = train(replace(cfg, epochs=1, out=str(tmp_path / "lpft")))
    assert 0 <= result.metrics["accuracy"] <= 1


def test_l_lora_takes_its_own_step_size_not_the_task_s_lora_one(tiny_model, tiny_llama):
    """A task's step size was tuned for LoRA; L-LoRA's comes from its own family value (or a task's
    `<family>:l-lora` entry), while the task's other defaults (max length) still apply."""
    from fusekit.models.defaults import ADAPTER_STEP

    for model, family in ((tiny_model, "head"), (tiny_llama, "text")):
        resolved = resolve_defaults(TrainConfig(task="qqp", adapter="l-lora", model=str(model)))  # no task entry
        lora = resolve_defaults(TrainConfig(task="qqp", model=str(model))).config.lr
        assert resolved.config.lr == ADAPTER_STEP[(family, "l-lora")] != lora
        assert resolved.sources["lr"].endswith("; l-lora)")
        sst2 = resolve_defaults(TrainConfig(task="sst2", adapter="l-lora", model=str(model))).config
        assert sst2.max_length == TASKS["sst2"].defaults[family]["max_length"]  # the task's other defaults apply
        assert sst2.lr == TASKS["sst2"].defaults.get(f"{family}:l-lora", {}).get("lr", ADAPTER_STEP[(family, "l-lora")])
    assert "l-lora 0.005" in default_help("lr") and "l-lora 0.003" in default_help("lr")
