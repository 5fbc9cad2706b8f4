"""Baselines: majority class, zero-shot cosine, head-only probe on the tiny model."""

from __future__ import annotations

import pytest
import torch

from fusekit.data.loading import load_split
from fusekit.data.tasks import get_task
from fusekit.models.base import load_base_model


def test_baselines_on_the_tiny_model(tiny_model, glue_dir):
    from fusekit.evaluation.baselines import head_only, majority, zero_shot

    task = get_task("sst2")
    train, dev = (load_split(task, s, str(glue_dir)) for s in ("train", "validation"))
    chance = majority(task, train, dev)["accuracy"]
    assert chance == pytest.approx(max(dev.labels.count(0), dev.labels.count(1)) / len(dev))
    assert zero_shot(str(tiny_model), task, dev, "mean", 32, 16) is None  # no zero-shot answer for SST-2
    torch.manual_seed(0)
    base = load_base_model(str(tiny_model), task, "mean")
    before = {k: v.clone() for k, v in base.model.bert.state_dict().items()}
    probe = head_only(base, task, train, dev, 32, 16, seed=0, lr=1e-2, epochs=40)
    assert probe["accuracy"] >= chance + 0.15  # the word-sentiment signal is linearly readable, even here
    assert all(torch.equal(before[k], v) for k, v in base.model.bert.state_dict().items())  # backbone frozen
    stsb = get_task("stsb")
    scores = zero_shot(str(tiny_model), stsb, load_split(stsb, "validation", str(glue_dir)), "mean", 32, 16)
    assert set(scores) >= {"pearson", "spearman"}
