from dataclasses import replace

import pytest
import torch

from fusekit.artifacts.run_folder import load_run, model_for_run
from fusekit.artifacts.task_vector import TaskVector
from fusekit.data.loading import EncodedSplit, load_split, make_loader
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.evaluation.loop import evaluate
from fusekit.training.train import train


def test_training_lowers_the_loss(sst2_run, tiny_config):
    out, result = sst2_run
    run = load_run(out)
    task = get_task("sst2")
    split = load_split(task, "train", tiny_config.data)
    trained_base, trained = model_for_run(run, task)
    untrained_base, untrained = model_for_run(run, task, vector=run.vector * 0.0)
    untrained.load_head_state({k: torch.zeros_like(v) for k, v in run.head.weights.items()})  # logits 0: loss ln 2
    data = EncodedSplit(split, trained_base.tokenizer, 32)
    before = evaluate(untrained, data, task, torch.device("cpu"))["loss"]
    after = evaluate(trained, data, task, torch.device("cpu"))["loss"]
    assert before == pytest.approx(0.6931, abs=1e-3)
    assert after < 0.75 * before
    assert result.steps == 8 * 12 and result.examples_per_second > 0


def test_run_folder_contents(sst2_run):
    out, _ = sst2_run
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "task_vector.safetensors", "head.safetensors",
            "config.yaml", "metrics.jsonl", "eval.json"} <= names
    assert not any(".tmp" in n for n in names) and not any(".tmp-" in p.name for p in out.parent.iterdir())
    meta = TaskVector.load(out / "task_vector.safetensors").meta
    assert meta["tasks"] == ["sst2"] and meta["kind"] == "lora" and meta["rank"] == 4 and meta["alpha"] == 8.0
    assert sorted(meta["target_modules"]) == ["query", "value"] and len(meta["base_fingerprint"]) == 24
    assert meta["fusekit_version"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert sum('"loss"' in line and '"eval"' not in line for line in lines) == 96
    assert sum('"eval"' in line for line in lines) == 8


def test_plain_peft_loads_the_folder_with_equal_logits(sst2_run, tiny_model, tiny_config):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out, _ = sst2_run
    task = get_task("sst2")
    run = load_run(out)
    base, ours = model_for_run(run, task)
    ours.eval()
    plain = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2),
                                      str(out)).eval()
    split = load_split(task, "validation", tiny_config.data)
    batch = next(iter(make_loader(EncodedSplit(split, base.tokenizer, 32), 16, shuffle=False)))
    with torch.no_grad():
        expected = ours(batch)
        got = plain(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(expected, torch.zeros_like(expected))


def test_same_seed_same_weights(tiny_config, tmp_path):
    cfg = replace(tiny_config, task="rte", epochs=1, max_train=32)
    a = train(replace(cfg, out=str(tmp_path / "a")))
    b = train(replace(cfg, out=str(tmp_path / "b")))
    c = train(replace(cfg, out=str(tmp_path / "c"), seed=1))
    va, vb, vc = (TaskVector.load(tmp_path / n / "task_vector.safetensors") for n in "abc")
    assert all(torch.equal(va.delta[k], vb.delta[k]) for k in va.delta) and a.metrics == b.metrics
    assert not all(torch.equal(va.delta[k], vc.delta[k]) for k in va.delta)
    # φ0 comes from init_seed, not the training seed: vectors of one init_seed share a space
    assert va.meta["init_fingerprint"] == vc.meta["init_fingerprint"]
    assert c.steps == 4


def test_regression_task_trains(tiny_config, tmp_path):
    result = train(replace(tiny_config, task="stsb", out=str(tmp_path / "stsb"), epochs=1))
    assert set(result.metrics) >= {"pearson", "spearman", "score"}


def test_existing_output_is_refused_and_kept(sst2_run, tiny_config):
    out, _ = sst2_run
    before = (out / "task_vector.safetensors").read_bytes()
    with pytest.raises(FusekitError, match="not empty .* pass --overwrite"):
        train(replace(tiny_config, task="sst2", out=str(out)))
    assert (out / "task_vector.safetensors").read_bytes() == before


def test_overwrite_replaces_the_run(tiny_config, tmp_path):
    cfg = replace(tiny_config, task="rte", epochs=1, max_train=16, out=str(tmp_path / "r"))
    train(cfg)
    (tmp_path / "r" / "stale.txt").write_text("x")
    train(replace(cfg, seed=3), overwrite=True)
    assert not (tmp_path / "r" / "stale.txt").exists() and "seed: 3" in (tmp_path / "r" / "config.yaml").read_text()


def test_failed_run_leaves_nothing(tiny_config, tmp_path, monkeypatch):
    import fusekit.training.train as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(train_module, "save_run", broken)
    with pytest.raises(RuntimeError):
        train(replace(tiny_config, task="rte", epochs=1, max_train=16, out=str(tmp_path / "r")))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("norm, clipped", [(0.5, True), (0.0, False)])
def test_max_grad_norm_clips_or_not(tiny_config, tmp_path, monkeypatch, norm, clipped):
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, n: (calls.append(n), real(p, n))[1])
    train(replace(tiny_config, task="sst2", epochs=1, max_grad_norm=norm, out=str(tmp_path / "run")))
    assert calls == ([0.5] * 12 if clipped else [])


def test_head_lr_is_the_head_groups_step_size(tiny_config, tmp_path):
    """The head trains at head_lr, the adapter at lr: a negligible lr leaves τ at zero while the head moves."""
    from fusekit.artifacts.run_folder import load_run
    from fusekit.training.session import TrainingSession

    session = TrainingSession(replace(tiny_config, lr=1e-3, head_lr=5e-2, out=str(tmp_path / "s")), "run")
    adapter, head = [torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(3))]
    session.setup_optimizer(adapter, 10, heads=head)
    assert [(g["initial_lr"], len(g["params"])) for g in session.optimizer.param_groups] == [(1e-3, 1), (5e-2, 1)]

    out = tmp_path / "frozen-adapter"
    train(replace(tiny_config, task="sst2", lr=1e-12, head_lr=2e-2, epochs=2, out=str(out)))
    run = load_run(out)
    assert max(t.abs().max().item() for t in run.vector.delta.values()) < 1e-6
    from fusekit.models.base import load_base_model
    from fusekit.training.session import seed_everything

    seed_everything(tiny_config.seed)  # the head as train() initialises it
    initial = load_base_model(tiny_config.model, get_task("sst2")).model.classifier.weight
    trained = next(v for k, v in run.head.weights.items() if k.endswith("classifier.weight"))
    assert (trained - initial).abs().max() > 1e-2
