"""Mixed precision: bf16 autocast when a run asks for it (on any device; by default only on GPUs that support it),
and every later forward of the run — its merges' searches, their scoring — in the precision it was made in."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from fusekit.config import TrainConfig
from fusekit.errors import FusekitError
from fusekit.evaluation import loop
from fusekit.evaluation.loop import autocast
from fusekit.training.train import train


def test_bf16_autocast_when_asked_and_by_default_only_on_gpus():
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    cpu = torch.device("cpu")
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32), ("auto", torch.float32)):
        with autocast(cpu, precision):
            assert (a @ b).dtype == dtype, precision


@pytest.fixture(scope="module")
def bf16_runs(tiny_llama, glue_dir, tmp_path_factory):
    """An SST-2 and an RTE L-LoRA adapter (module scope: the jvp runs under autocast too) trained in bf16."""
    root = tmp_path_factory.mktemp("bf16-runs")
    cfg = TrainConfig(model=str(tiny_llama), data=str(glue_dir), adapter="l-lora", linearize="module",
                      lora_init="nonzero", rank=4, alpha=8.0, lr=2e-2, epochs=2, batch_size=8, max_length=64,
                      device="cpu", precision="bf16")
    folders = [root / task for task in ("sst2", "rte")]
    for folder in folders:
        train(replace(cfg, task=folder.name, out=str(folder)))
    return folders


@pytest.fixture
def precisions_used(monkeypatch) -> list[str]:
    """The precision of every batch scored while the test runs."""
    used, real = [], loop.autocast

    def recorded(device, precision="auto"):
        used.append(precision)
        return real(device, precision)

    monkeypatch.setattr(loop, "autocast", recorded)
    return used


def test_a_bf16_run_records_its_precision_and_is_scored_in_it(bf16_runs, precisions_used):
    from fusekit.artifacts.reading import read_yaml
    from fusekit.evaluation.eval import score_folders

    assert read_yaml(bf16_runs[0] / "config.yaml", "config")["precision"] == "bf16"
    first = score_folders([bf16_runs[0]], None, None, None, 16, "cpu", None)[0]
    assert set(precisions_used) == {"bf16"} and 0 <= first["score"] <= 1
    precisions_used.clear()
    score_folders([bf16_runs[0]], None, None, None, 16, "cpu", None, precision="fp32")  # a flag wins
    assert set(precisions_used) == {"fp32"}


def test_a_merge_searches_in_its_runs_precision_records_it_and_is_scored_in_it(bf16_runs, tmp_path, precisions_used):
    from fusekit.artifacts.checksums import reseal
    from fusekit.evaluation.eval import score_folders
    from fusekit.merging.config import MergeConfig
    from fusekit.merging.merge import run_merge

    merged = tmp_path / "merged"
    run_merge(MergeConfig(lambdas=[0.5, 1.0], val_examples=16, device="cpu", select_on_seen=True), bf16_runs, merged)
    assert set(precisions_used) == {"bf16"}  # the runs' own, for every held-out example of the search
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["settings"]["precision"] == "bf16"
    precisions_used.clear()
    score_folders([merged], None, None, None, 16, "cpu", None)
    assert set(precisions_used) == {"bf16"}
    manifest["settings"]["precision"] = "fp16"
    (merged / "manifest.json").write_text(json.dumps(manifest))
    reseal(merged, "manifest.json")
    with pytest.raises(FusekitError, match=r"manifest.json: precision 'fp16', expected one of auto, fp32, bf16"):
        score_folders([merged], None, None, None, 16, "cpu", None)


def test_bf16_scores_stay_near_fp32(bf16_runs):
    """Autocast rounds the matmuls' inputs to bf16 (8 significant bits): the scores move a little, not wholesale."""
    from fusekit.artifacts.run_folder import load_run
    from fusekit.data.loading import load_split
    from fusekit.data.tasks import get_task
    from fusekit.evaluation.eval import TaskScorer

    run = load_run(bf16_runs[0])
    split = load_split(get_task("sst2"), "validation", run.config.data)
    logits = {p: TaskScorer(run.config.model, 64, split, run.head, torch.device("cpu"), precision=p)
              .outputs(run.vector)[0] for p in ("fp32", "bf16")}
    assert (logits["bf16"] != logits["fp32"]).any()  # bf16 was used
    assert abs(logits["bf16"] - logits["fp32"]).max() < 0.1 * abs(logits["fp32"]).max()


def test_a_study_merges_in_its_adapters_precision_and_reruns_nothing_made_in_another(tmp_path, tiny_model, glue_dir):
    import yaml

    from fusekit.artifacts.checksums import reseal
    from fusekit.study.plan import plan
    from fusekit.study.recipe import load_study
    from fusekit.study.run import run_study

    recipe = {"out": str(tmp_path / "s"), "tasks": ["sst2", "mrpc"],
              "train": {"model": str(tiny_model), "data": str(glue_dir), "rank": 4, "epochs": 1, "max_length": 32,
                        "device": "cpu"},
              "adapters": {"lora": {"adapter": "lora"}, "fast": {"adapter": "lora", "precision": "bf16"}},
              "merge": {"methods": ["task-arithmetic"], "spaces": ["delta-w"], "val_examples": 8,
                        "select_on_seen": True}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    merges = {s.id.variant: s.config.config.precision for s in plan(load_study(path), str(path))
              if s.kind == "merge"}
    assert merges == {"lora": "auto", "fast": "bf16"}
    run_study(path, only="train/sst2-lora")
    config = tmp_path / "s/train/sst2-lora/config.yaml"  # as a run from before precision was recorded
    recorded = yaml.safe_load(config.read_text())
    del recorded["precision"]
    config.write_text(yaml.safe_dump(recorded))
    reseal(config.parent, "config.yaml")
    run_study(path, only="train/sst2-lora")  # recorded nothing: made at auto, as the recipe asks
    recipe["train"]["precision"] = "bf16"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FusekitError, match="train/sst2-lora was run with different precision"):
        run_study(path, only="train/sst2-lora")


def test_an_unknown_precision_is_one_line_naming_the_flag(sst2_run):
    from typer.testing import CliRunner

    from cli.main import app

    for args in (["eval", str(sst2_run[0]), "--precision", "fp16"], ["train", "--precision", "fp8", "--dry-run"],
                 ["merge", str(sst2_run[0]), "--precision", "half", "--out", "unused"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code != 0 and "precision" in result.output and "Traceback" not in result.output, args
        assert "expected one of auto, fp32, bf16" in result.output.replace("\n", " "), result.output
