"""Fixtures: tiny random BERT, Llama and T5 models built from a config (no download), a word-level tokenizer for
the generative ones, and a tiny GLUE-layout folder."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch

POSITIVE = ["good", "great", "fun", "lovely", "superb", "moving"]
NEGATIVE = ["bad", "dull", "boring", "awful", "weak", "tedious"]
FILLER = ["the", "movie", "was", "a", "film", "plot", "and", "very", "quite", "story", "man", "is", "not"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, "entailment", "\""]


def sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label else NEGATIVE, 2)
    rng.shuffle(words)
    return " ".join(words)


def write_tsv(path: Path, header: list[str] | None, rows: list[list[object]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(c) for c in row) for row in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def make_glue(root: Path, n_train: int = 96, n_dev: int = 32) -> Path:
    """Every GLUE task in its original TSV layout, with a learnable word-sentiment signal."""
    rng = random.Random(0)

    def pairs(n: int) -> list[tuple[str, str, int]]:
        out = []
        for _ in range(n):
            label = rng.randint(0, 1)
            out.append((sentence(rng, label), sentence(rng, label), label))
        return out

    for split, n in (("train", n_train), ("dev", n_dev)):
        data = pairs(n)
        write_tsv(root / "SST-2" / f"{split}.tsv", ["sentence", "label"], [[a, y] for a, _, y in data])
        write_tsv(root / "CoLA" / f"{split}.tsv", None, [["gj04", y, "", a] for a, _, y in data])
        write_tsv(root / "MRPC" / f"{split}.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                  [[y, i, i + 1, a, b] for i, (a, b, y) in enumerate(data)], bom=True)
        write_tsv(root / "QQP" / f"{split}.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                  [[i, i, i, a, b, y] for i, (a, b, y) in enumerate(data)])
        write_tsv(root / "STS-B" / f"{split}.tsv",
                  ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                   "sentence2", "score"],
                  [[i, "g", "f", "y", i, "s", "s", a, b, f"{4.0 * y + rng.random():.3f}"]
                   for i, (a, b, y) in enumerate(data)])
        nli = [[i, a, b, "entailment" if y else "not_entailment"] for i, (a, b, y) in enumerate(data)]
        for folder in ("RTE", "QNLI"):
            header = ["index", "sentence1", "sentence2", "label"] if folder == "RTE" else \
                ["index", "question", "sentence", "label"]
            write_tsv(root / folder / f"{split}.tsv", header, nli)
        write_tsv(root / "WNLI" / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"],
                  [[i, a, b, y] for i, (a, b, y) in enumerate(data)])
    mnli_header = ["index", "promptID", "pairID", "genre", "s1bp", "s2bp", "s1p", "s2p", "sentence1", "sentence2",
                   "label1", "gold_label"]
    gold = ["entailment", "neutral", "contradiction"]
    for name in ("train", "dev_matched", "dev_mismatched"):
        rows = [[i, i, i, "g", "", "", "", "", a, b, gold[(y + i) % 3], gold[(y + i) % 3]]
                for i, (a, b, y) in enumerate(pairs(24))]
        write_tsv(root / "MNLI" / f"{name}.tsv", mnli_header, rows)
    return root


def tree_hash(*folders: Path) -> str:
    """One digest of every file's path and bytes under `folders`: equal before and after means untouched."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                digest.update(path.as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def make_tiny_model(folder: Path, dropout: float = 0.1) -> Path:
    """A 2-layer BERT of hidden size 32 with random weights and a word-level vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    import inspect

    vocab_arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    BertTokenizerFast(**{vocab_arg: str(folder / "vocab.txt")}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(folder)
    return folder


# the words of fusekit's prompt templates and answers, so that a word-level tokenizer keeps them whole
PROMPT_WORDS = ["Review", "Sentiment", "Sentence", "Premise", "Hypothesis", "Question", "Answer", "Is", "Do", "Does",
                "How", "this", "sentence", "sentences", "grammatically", "acceptable", "both", "mean", "same", "thing",
                "premise", "entail", "hypothesis", "similar", "are", "two", "from", "unrelated", "to", "meaning",
                "questions", "ask", "answer", "question", "yes", "no", "maybe", "negative", "positive",
                *"0123456789", ":", "?", "(", ")", ")?", ","]
TEXT_SPECIALS = ["[PAD]", "[UNK]", "<s>", "</s>"]


def make_text_tokenizer(folder: Path):
    """A word-level tokenizer (whitespace and punctuation split) over the test vocabulary and the prompt words,
    built with `tokenizers` and saved as a transformers tokenizer: no download, as a real LM's would load."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(TEXT_SPECIALS + VOCAB[5:] + PROMPT_WORDS))
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_tiny_llama(folder: Path) -> Path:
    """A 2-layer Llama (RoPE, grouped-query attention, SDPA, tied embeddings: SmolLM2's architecture) of width 32
    with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_text_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def make_tiny_t5(folder: Path) -> Path:
    """A 2-layer encoder-decoder T5 of width 32 with random weights (the architecture of the paper's Flan-T5)."""
    from transformers import T5Config, T5ForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_text_tokenizer(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_config(tiny_model, glue_dir):
    """A TrainConfig for a quick run on the tiny model (callers set task and out)."""
    from fusekit.config import TrainConfig

    return TrainConfig(model=str(tiny_model), data=str(glue_dir), rank=4, alpha=8.0, target_modules=["query", "value"],
                       lr=2e-2, head_lr=2e-2, epochs=8, batch_size=8, max_length=32, device="cpu")


@pytest.fixture(scope="session")
def sst2_run(tiny_config, tmp_path_factory):
    """One trained SST-2 LoRA run shared by the tests that only read it."""
    from dataclasses import replace

    from fusekit.training.train import train

    out = tmp_path_factory.mktemp("runs") / "sst2-lora"
    result = train(replace(tiny_config, task="sst2", out=str(out)))
    return out, result
