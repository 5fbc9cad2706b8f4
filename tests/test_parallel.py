"""Data parallelism: two processes under `torchrun` compute what one process computes on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fusekit.study.run import run_study
from fusekit.training.parallel import Processes
from tests.conftest import make_tiny_model
from tests.test_study import write_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_shards_cover_the_batch_and_weigh_by_rows():
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "labels": torch.arange(5)}
    parts = [Processes(rank, 2).shard(batch) for rank in range(2)]
    assert [p[0]["labels"].tolist() for p in parts] == [[0, 1], [2, 3, 4]]
    assert [p[1] for p in parts] == [0.4, 0.6]
    small = {"labels": torch.arange(1)}
    assert Processes(1, 2).shard(small) == (small, 0.5)  # fewer rows than processes: each keeps all at 1/world
    assert Processes().shard(batch) == (batch, 1.0)


def test_two_processes_reproduce_one(tmp_path, glue_dir):
    """Without dropout the only difference is summation order: the task vectors agree to float precision."""
    model = make_tiny_model(tmp_path / "model", dropout=0.0)
    settings = {"merge": {"methods": ["task-arithmetic"], "spaces": ["delta-w"], "lambdas": [1.0],
                          "val_examples": 8},
                "joint": {"balancers": ["uncertainty", "pcgrad"], "settings": {"validation_examples": 8}}}
    one = write_recipe(tmp_path / "one.yaml", model, glue_dir, tmp_path / "one", **settings)
    two = write_recipe(tmp_path / "two.yaml", model, glue_dir, tmp_path / "two", **settings)
    run_study(one)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "cli.main", "run", str(two)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("train/sst2-lora", "train/mrpc-lora", "joint/lora-uncertainty", "joint/lora-pcgrad"):
        single = load_file(tmp_path / "one" / stage / "task_vector.safetensors")
        parallel = load_file(tmp_path / "two" / stage / "task_vector.safetensors")
        assert single.keys() == parallel.keys()
        for key in single:
            torch.testing.assert_close(parallel[key], single[key], rtol=1e-4, atol=1e-5, msg=f"{stage} {key}")
    merged = [json.loads((tmp_path / s / "merge/lora-delta-w-task-arithmetic/eval.json").read_text())
              for s in ("one", "two")]
    assert merged[0]["average_normalized"] == pytest.approx(merged[1]["average_normalized"])
    lines = (tmp_path / "two" / "stages.jsonl").read_text().splitlines()
    statuses = [json.loads(line)["status"] for line in lines]  # the main process alone keeps the study's records
    assert len(lines) == 15 and statuses.count("done") == 5
    assert not list((tmp_path / "two").glob("**/*.tmp-*"))
