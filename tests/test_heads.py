"""Heads that fit the checkpoint: pooling read from a sentence-transformers folder, masked pooling by hand,
bi-encoded pairs, and batches grouped by length."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from fusekit.data.batching import LengthGroupedBatches
from fusekit.data.loading import EncodedSplit, load_split, make_loader
from fusekit.data.tasks import get_task
from fusekit.errors import FusekitError
from fusekit.models.base import load_base_model
from fusekit.models.heads import HeadSpec, PooledClassifier


def sentence_transformers_folder(tiny_model, tmp_path, mode: str):
    """The tiny BERT saved as sentence-transformers does: a 1_Pooling/config.json naming one pooling mode."""
    folder = tmp_path / f"st-{mode}"
    shutil.copytree(tiny_model, folder)
    (folder / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{m}": m == mode for m in ("cls_token", "mean_tokens", "max_tokens")}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return folder


@pytest.mark.parametrize(("mode", "expected"), [("mean_tokens", "mean"), ("max_tokens", "max"), ("cls_token", "cls")])
def test_auto_pooling_follows_the_checkpoint(tiny_model, tmp_path, mode, expected):
    folder = sentence_transformers_folder(tiny_model, tmp_path, mode)
    base = load_base_model(str(folder), get_task("sst2"), pooling="auto")
    assert base.head == HeadSpec(expected, "cross")
    assert isinstance(base.model, PooledClassifier) == (expected != "cls")


def test_auto_pooling_without_a_pooling_config_is_the_native_head(tiny_model):
    base = load_base_model(str(tiny_model), get_task("sst2"), pooling="auto")
    assert base.head.native and not isinstance(base.model, PooledClassifier)


def test_an_explicit_pooling_wins_over_the_checkpoint(tiny_model, tmp_path):
    folder = sentence_transformers_folder(tiny_model, tmp_path, "mean_tokens")
    assert load_base_model(str(folder), get_task("sst2"), pooling="cls").head.native
    with pytest.raises(FusekitError, match="pooling 'avg' is not one of"):
        load_base_model(str(folder), get_task("sst2"), pooling="avg")


def test_pooled_heads_keep_the_backbone_fingerprint(tiny_model):
    """Adapters of tasks with different heads stay mergeable: the backbone is the same weights."""
    native = load_base_model(str(tiny_model), get_task("rte"))
    pooled = load_base_model(str(tiny_model), get_task("rte"), "mean", "bi")
    assert native.fingerprint == pooled.fingerprint and pooled.head_modules == ["classifier"]


def test_mean_and_max_pooling_against_the_masked_hidden_states(tiny_model, glue_dir):
    task = get_task("sst2")
    data = EncodedSplit(load_split(task, "validation", str(glue_dir)).capped(6, 0), None or
                        load_base_model(str(tiny_model), task).tokenizer, 32)
    batch = next(iter(make_loader(data, 6, shuffle=True)))
    batch.pop("labels")
    batch["attention_mask"][0, -2:] = 0  # padding the pooling must ignore
    for mode in ("mean", "max"):
        model = load_base_model(str(tiny_model), task, mode).model.eval()
        hidden = model.bert(**batch).last_hidden_state
        rows = []
        for h, m in zip(hidden, batch["attention_mask"].bool()):
            rows.append(h[m].mean(0) if mode == "mean" else h[m].max(0).values)
        expected = model.classifier(torch.stack(rows))
        assert torch.allclose(model(**batch).logits, expected, atol=1e-6)


def test_bi_encoding_encodes_the_sentences_apart(tiny_model, glue_dir):
    task = get_task("stsb")
    base = load_base_model(str(tiny_model), task, "mean", "bi")
    split = load_split(task, "validation", str(glue_dir)).capped(5, 0)
    batch = next(iter(make_loader(EncodedSplit(split, base.tokenizer, 32, "bi"), 5, shuffle=False)))
    assert {"input_ids", "input_ids_b", "attention_mask_b"} <= set(batch)
    batch.pop("labels")
    model = base.model.eval()

    def embed(suffix: str) -> torch.Tensor:
        ids, mask = batch["input_ids" + suffix], batch["attention_mask" + suffix]
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    # untrained, the STS-B bi-encoder answers 5 · cos(u, v): the zero-shot similarity on the label scale
    expected = 5.0 * F.cosine_similarity(embed(""), embed("_b"))
    assert torch.allclose(model(**batch).logits[:, 0], expected, atol=1e-5)


def test_bi_encoding_leaves_single_sentence_tasks_alone(tiny_model):
    assert load_base_model(str(tiny_model), get_task("sst2"), "mean", "bi").head == HeadSpec("mean", "cross")


def test_length_grouped_batches_cover_every_example_once_and_follow_the_seed():
    lengths = [(i * 37) % 50 + 1 for i in range(203)]

    def passes(seed: int) -> list[list[int]]:
        return list(LengthGroupedBatches(lengths, 8, torch.Generator().manual_seed(seed), pool=4))

    first = passes(0)
    assert sorted(i for b in first for i in b) == list(range(203))
    assert first == passes(0) and first != passes(1)
    def spread(batches: list[list[int]]) -> float:
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(0)).tolist()
    assert spread(first) < 0.4 * spread([shuffled[i:i + 8] for i in range(0, 203, 8)])  # less padding
    ordered = list(LengthGroupedBatches(lengths, 8))
    assert [lengths[i] for b in ordered for i in b] == sorted(lengths)



def test_a_mean_pooled_run_loads_with_load_adapter_and_matches_plain_peft_by_hand(tiny_config, tmp_path):
    """The PEFT folder holds the LoRA and head weights; with the documented pooling, plain peft gives the logits
    that `fusekit.load_adapter` gives."""
    from dataclasses import replace

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    import fusekit
    from fusekit.training.train import train

    out = tmp_path / "sst2-mean"
    train(replace(tiny_config, task="sst2", pooling="mean", epochs=2, out=str(out)))
    model, tokenizer = fusekit.load_adapter(out)
    batch = dict(tokenizer(["good fun film", "the plot was dull and boring"], return_tensors="pt", padding=True))
    with torch.no_grad():
        logits = model(batch)
        plain = PeftModel.from_pretrained(
            AutoModelForSequenceClassification.from_pretrained(tiny_config.model, num_labels=2), out).eval()
        hidden = plain.base_model.model.bert(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None]
        head = load_file(out / "head.safetensors")
        weight, bias = head["base_model.model.classifier.weight"], head["base_model.model.classifier.bias"]
        by_hand = ((hidden * mask).sum(1) / mask.sum(1)) @ weight.T + bias
    assert torch.allclose(logits, by_hand, atol=1e-5)
