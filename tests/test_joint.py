"""Joint multi-task training: sampling shares and priors by hand, short runs on the tiny model, outputs."""

import json
from dataclasses import replace

import numpy as np
import pytest

from fusekit.config import JointConfig
from fusekit.data.loading import Split
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.training.joint import prior_loss, task_shares, train_joint


def test_sampling_shares():
    assert task_shares([100, 25], "temperature", 0.5) == pytest.approx([10 / 15, 5 / 15])  # p ∝ √n
    assert task_shares([100, 25], "proportional", 0.5) == pytest.approx([0.8, 0.2])
    assert task_shares([100, 25], "uniform", 0.5) == pytest.approx([0.5, 0.5])
    with pytest.raises(FusekitError, match="unknown sampling 'random'"):
        task_shares([1], "random", 0.5)


def test_prior_losses():
    assert prior_loss(Split(get_task("sst2"), [("a",)] * 4, [0, 0, 1, 1])) == pytest.approx(np.log(2))
    assert prior_loss(Split(get_task("stsb"), [("a", "b")] * 3, [1.0, 2.0, 3.0])) == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def joint_config(tiny_model, glue_dir):
    return JointConfig(tasks="sst2,cola,stsb", model=str(tiny_model), data=str(glue_dir), rank=4, alpha=8.0,
                       target_modules=["query", "value"],
                       lr=2e-2, head_lr=2e-2, epochs=8, batch_size=8, max_length=32, device="cpu",
                       validation_examples=16)


@pytest.mark.parametrize("balancer", ["realtime", "pcgrad", "famo"])
def test_a_short_joint_run_lowers_every_task_loss(joint_config, tmp_path, balancer):
    out = tmp_path / balancer
    results = train_joint(replace(joint_config, balancer=balancer, epochs=12, out=str(out)))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = np.array([r["losses"] for r in records if "losses" in r])
    assert np.all(losses[-10:].mean(axis=0) < 0.9 * losses[:10].mean(axis=0))
    assert all(len(r["weights"]) == 3 for r in records if "losses" in r)
    if balancer == "famo":  # ω_i = (z_i/L_i) / Σ_j z_j/L_j; at z uniform it would be (1/L_i) / Σ_j 1/L_j
        weights = np.array([r["weights"] for r in records if "losses" in r])
        assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-5)
        uniform_z = (1 / losses) / (1 / losses).sum(axis=1, keepdims=True)
        assert np.allclose(weights[0], uniform_z[0], atol=1e-5)  # ξ = 0 at the first step
        assert np.abs(weights[-1] - uniform_z[-1]).max() > 1e-3  # the post-step losses moved ξ
    assert set(results) == {"sst2", "cola", "stsb"}
    assert {p.name for p in (out / "peft").iterdir()} == {"sst2", "cola", "stsb"}
    assert (out / "manifest.json").is_file()


def test_coba_joint_run_is_scored_by_fusekit_eval(joint_config, sst2_run, tmp_path, tiny_config):
    from fusekit.evaluation.eval import score_folders
    from fusekit.training.train import train

    refs = [str(sst2_run[0])]
    for task in ("cola", "stsb"):
        train(replace(tiny_config, task=task, epochs=1, out=str(tmp_path / task)))
        refs.append(str(tmp_path / task))
    out = tmp_path / "coba"
    train_joint(replace(joint_config, balancer="coba", coba_warmup=4, coba_window=8, epochs=2, references=refs,
                        out=str(out)))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and len(records[0]["validation_losses"]) == 3  # ℓ_i(0) before training
    assert all("validation_losses" in r for r in records if "losses" in r)  # interval 1
    moved = [r["weights"] for r in records if "losses" in r and r["step"] > 5]
    assert any(abs(w - 1.0) > 1e-3 for weights in moved for w in weights)  # CoBa left uniform after warm-up
    rows = score_folders([out], None, None, None, 64, "cpu", None)
    assert rows[-1]["task"] == "average" and "normalized" in rows[0]


def test_joint_bad_input(joint_config, tmp_path, sst2_run):
    with pytest.raises(FusekitError, match="unknown balancer 'magic'"):
        train_joint(replace(joint_config, balancer="magic", out=str(tmp_path / "x")))
    with pytest.raises(FusekitError, match="is not a run of cola"):
        train_joint(replace(joint_config, references=[str(sst2_run[0])] * 3, out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_per_task_caps_override_the_shared_one():
    cfg = JointConfig(tasks="sst2,cola,stsb", max_train=8, task_max_train=["cola=12"])
    assert cfg.task_caps() == {"sst2": 8, "cola": 12, "stsb": 8}
    for bad in ("rte=5", "cola=x", "cola=0", "cola"):
        with pytest.raises(FusekitError, match=f"task_max_train: '{bad}' \\(expected task=N"):
            replace(cfg, task_max_train=[bad]).task_caps()


def test_a_joint_run_trains_each_task_on_its_own_adapters_examples(joint_config, tmp_path):
    """Capped per task, each task's subset is the one `fusekit train` draws at that cap and seed."""
    from fusekit.data.loading import load_split

    out = tmp_path / "capped"
    train_joint(replace(joint_config, max_train=12, task_max_train=["cola=20"], epochs=1, out=str(out)))
    inputs = json.loads((out / "manifest.json").read_text())["inputs"]
    for item, cap in zip(inputs, (12, 20, 12)):
        own = load_split(get_task(item["task"]), "train", joint_config.data).training_subset(cap, joint_config.seed)
        assert (item["train_examples"], item["train_fingerprint"]) == (len(own), own.fingerprint())
    assert inputs[1]["train_examples"] == 20 and inputs[0]["train_examples"] == 12


@pytest.mark.parametrize("balancer", ["uncertainty", "famo", "power-mean"])
def test_each_task_backpropagated_alone_gives_the_whole_objectives_gradient(joint_config, tmp_path, balancer):
    """The trainer runs one task's forward and backward at a time (one task's activations alive, not all K); the
    step's gradient on the adapter, on every head and on the balancer's own weights is the one autograd gives the
    balancer's objective over every task's loss at once."""
    import torch

    from fusekit.evaluation.loop import to_device
    from fusekit.training.joint import JointTraining

    trainer = JointTraining(replace(joint_config, balancer=balancer, out=str(tmp_path / "joint")), overwrite=False)
    trainer.model.eval()  # no dropout: both ways run the same forward
    batches = [trainer.procs.shard(to_device(next(trainer.batches[t.name]), trainer.device)) for t in trainer.tasks]
    params = trainer.shared + trainer.head_params + trainer.balancer.parameters()
    losses, weights = trainer._backward(batches)
    streamed = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    whole = trainer._losses(batches)
    objective = trainer.balancer.combine(whole)
    expected_weights = torch.autograd.grad(objective, whole, retain_graph=True)[0]
    objective.backward()
    assert torch.allclose(losses, whole.detach()) and torch.allclose(weights, expected_weights)
    assert all(torch.allclose(s, p.grad, rtol=1e-5, atol=1e-7) for s, p in zip(streamed, params))
    assert any(s.abs().sum() > 0 for s in streamed[len(trainer.shared):])  # the heads did get gradients
