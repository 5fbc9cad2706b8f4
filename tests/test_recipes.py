"""The shipped recipes: each one plans without error, and the paper's Flan-T5 study runs on a tiny T5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fusekit.artifacts.reading import load_recipe
from fusekit.config import TrainConfig
from fusekit.study.plan import plan
from fusekit.study.recipe import load_study
from fusekit.study.run import run_study
from tests.conftest import make_tiny_t5

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    assert {p.name for p in RECIPES} >= {"quickstart.yaml", "glue-fusion.yaml", "paper-flan-t5.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_is_valid(recipe):
    """Study recipes (a `train` section) plan every stage; the others are `fusekit train` recipes."""
    sections = yaml.safe_load(recipe.read_text())
    if "train" in sections:
        kinds = {s.kind for s in plan(load_study(recipe), str(recipe))}
        assert "train" in kinds and ("joint" in kinds) == ("joint" in sections)
        assert ("merge" in kinds) == ("merge" in sections) and ("tune" in kinds) == ("tune" in sections)
    else:
        assert load_recipe(recipe, TrainConfig).task


def test_paper_recipe_runs_on_a_tiny_t5(tmp_path, glue_dir):
    """The paper's settings (q/v targets on an encoder-decoder, LoRA and nonzero-init L-LoRA, merges in both
    spaces, CoBa) with the model, data and budget swapped for tiny ones."""
    recipe = yaml.safe_load((Path(__file__).resolve().parent.parent / "recipes/paper-flan-t5.yaml").read_text())
    recipe["out"], recipe["tasks"], recipe["checkpoint_every"] = str(tmp_path / "study"), ["rte", "stsb"], 0
    recipe["train"].update(model=str(make_tiny_t5(tmp_path / "t5")), data=str(glue_dir), max_train=32,
                           batch_size=8, max_length=32, device="cpu", rank=4, alpha=8.0)
    recipe["merge"].update(lambdas=[0.5, 1.0], val_examples=8)
    recipe["joint"]["settings"].update(validation_examples=8, coba_warmup=2, coba_window=3, max_eval=16)
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_study(path, only="train/,merge/*-task-arithmetic,joint/l-lora-coba")
    out = tmp_path / "study"
    for name in ("merge/lora-delta-w-task-arithmetic", "merge/lora-factors-task-arithmetic",
                 "merge/l-lora-factors-task-arithmetic", "joint/l-lora-coba"):
        scores = json.loads((out / name / "eval.json").read_text())
        assert {"rte", "stsb"} <= set(scores), name
