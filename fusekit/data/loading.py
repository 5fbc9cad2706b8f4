"""GLUE data: read a task split from a local GLUE-layout folder or the hub, cap it, tokenize it, batch it."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from fusekit.data.batching import LengthGroupedBatches
from fusekit.data.phrases import sentence_indices, unseen_sentences
from fusekit.data.tasks import DEFAULT_HUB_DATASET, HUB_SPLITS, TaskSpec
from fusekit.errors import FusekitError

SECOND = "_b"  # suffix of the second sentence's tensors when the two sentences are encoded apart
csv.field_size_limit(10**8)


@dataclass
class Split:
    """One split of one task: text tuples (one or two sentences) and label ids (or floats for regression)."""

    task: TaskSpec
    texts: list[tuple[str, ...]]
    labels: list[float] | list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """Which examples these are: a digest of the task, texts and labels in order. Two scores compare only
        when their fingerprints agree (same data folder, split, subset and seed)."""
        digest = hashlib.sha256(json.dumps([self.task.name, self.texts, self.labels]).encode())
        return digest.hexdigest()[:16]

    def subset(self, indices: list[int]) -> Split:
        return Split(self.task, [self.texts[i] for i in indices], [self.labels[i] for i in indices])

    def capped(self, limit: int | None, seed: int) -> Split:
        """A seeded random subset of `limit` examples (in file order), or self when no cap applies."""
        if limit is None or limit >= len(self):
            return self
        return self.subset(sorted(random.Random(seed).sample(range(len(self)), limit)))

    def training_subset(self, limit: int | None, seed: int, subset_from: str | None = None) -> Split:
        """What a run trains on: `capped(limit, seed)`, or with `subset_from: sentences` the task's whole sentences
        first (SST-2, whose training examples are every phrase of parsed sentences, while dev scores whole
        sentences): a cap within their number draws sentences alone, a larger one adds random phrases, and no cap
        is the whole split either way. Other tasks' examples are sentences already: nothing changes there."""
        sentences = self._sentences(subset_from)
        if sentences is None:
            return self.capped(limit, seed)
        return self.subset(self._sentences_first(sentences, limit, seed))

    def held_out(self, used: int | None, seed: int, subset_from: str | None = None) -> Split:
        """The examples that `training_subset(used, seed, subset_from)` left out: training data a run never saw
        (may be empty). For a task whose training split is phrases of parsed sentences, the whole sentences none
        of whose phrases was trained on (fusekit.data.phrases)."""
        sentences = self._sentences(subset_from)
        if used is None or used >= len(self):
            return self.subset([])
        if sentences is None:
            taken = set(random.Random(seed).sample(range(len(self)), used))
        else:
            taken = set(self._sentences_first(sentences, used, seed))
        if self.task.phrase_tree:
            return self.subset(unseen_sentences([texts[0] for texts in self.texts], taken))
        return self.subset([i for i in range(len(self)) if i not in taken])

    def why_none_held_out(self, used: int | None, subset_from: str | None = None) -> str:
        """Why `held_out(used, …)` is empty, in words for an error."""
        if used is None or used >= len(self):
            return f"it trained on every {self.task.name} training example"
        sentences = self._sentences(subset_from)
        if sentences is not None and used >= len(sentences):
            return f"it trained on every whole {self.task.name} training sentence"
        return f"every whole {self.task.name} sentence shares a phrase with its training subset"

    def _sentences(self, subset_from: str | None) -> list[int] | None:
        """The indices of the whole sentences (each once) when a `sentences` subset is asked of a phrase-tree task,
        else None (draw from every example)."""
        if subset_from != "sentences" or not self.task.phrase_tree:
            return None
        return list(sentence_indices(tuple(texts[0] for texts in self.texts)))

    def _sentences_first(self, sentences: list[int], limit: int | None, seed: int) -> list[int]:
        if limit is None or limit >= len(self):
            return list(range(len(self)))
        if limit <= len(sentences):
            return sorted(random.Random(seed).sample(sentences, limit))
        chosen = set(sentences)
        rest = [i for i in range(len(self)) if i not in chosen]
        return sorted(sentences + random.Random(seed).sample(rest, limit - len(sentences)))


def looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).exists() or "\\" in source


def load_split(task: TaskSpec, split: str, source: str = DEFAULT_HUB_DATASET) -> Split:
    """Load `split` ("train" or "validation") of `task` from a GLUE-layout folder or a hub dataset name."""
    if looks_like_path(source):
        return _read_tsv(task, Path(source).expanduser() / task.folder / task.file_for(split))
    return _read_hub(task, split, source)


SIMILARITY_MAX = 5.0  # STS-B scores run from 0 (unrelated) to 5 (same meaning)


def _label(task: TaskSpec, raw: str, where: str) -> float | int:
    if task.labels is None:
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not 0 <= score <= SIMILARITY_MAX:  # NaN fails too
            raise FusekitError(f"{where}: label {raw[:40]!r} is not a similarity score (expected a number from 0 to "
                               f"{SIMILARITY_MAX:g})")
        return score
    if raw not in task.labels:
        raise FusekitError(f"{where}: label {raw!r} is not one of {list(task.labels)}")
    return task.labels.index(raw)


def _read_tsv(task: TaskSpec, path: Path) -> Split:
    if not path.parent.parent.is_dir():
        raise FusekitError(f"data folder {path.parent.parent} does not exist (expected a GLUE-layout folder)")
    if not path.is_file():
        raise FusekitError(f"{path} not found (expected {task.folder}/{path.name} in the GLUE folder)")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as error:
        raise FusekitError(f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                           f"{error.start} of a chunk; GLUE files are UTF-8)") from None
    except csv.Error as error:
        raise FusekitError(f"{path} is not a tab-separated file ({error})") from None
    start = 1 if task.has_header else 0
    header = rows[0] if task.has_header and rows else []

    def column(key: str | int) -> int:
        if isinstance(key, int):
            return key
        if key not in header:
            raise FusekitError(f"{path}: header has no column {key!r} (found {header})")
        return header.index(key)

    text_cols = [column(c) for c in task.text_columns]
    label_col = column(task.label_column)
    width = max([*text_cols, label_col]) + 1
    texts, labels = [], []
    for number, row in enumerate(rows[start:], start=start + 1):
        where = f"{path}:{number}"
        if not row:
            continue
        if len(row) < width:
            raise FusekitError(f"{where}: malformed row with {len(row)} tab-separated fields (expected ≥ {width})")
        texts.append(tuple(row[c] for c in text_cols))
        labels.append(_label(task, row[label_col].strip(), where))
    if not labels:
        raise FusekitError(f"{path}: no examples (expected a tab-separated file with labelled rows)")
    return Split(task, texts, labels)


def _read_hub(task: TaskSpec, split: str, name: str) -> Split:
    import datasets

    hub_split = HUB_SPLITS.get((task.name, split), split)
    try:
        data = datasets.load_dataset(name, task.hub_config, split=hub_split)
    except Exception as error:  # network, missing dataset, missing config: all surface the same way
        raise FusekitError(
            f"could not load {name!r} ({task.hub_config}/{hub_split}) from the hub: {error.__class__.__name__}; "
            "pass --data with a local GLUE folder when offline"
        ) from None
    texts = list(zip(*(data[field] for field in task.hub_text_fields)))
    labels = [float(x) for x in data["label"]] if task.is_regression else [int(x) for x in data["label"]]
    return Split(task, texts, labels)


class EncodedSplit(Dataset):
    """Token ids of a split, padded per batch by `collate` (dynamic padding keeps CPU batches short).

    Sentence pairs are encoded as one input (`cross`), or each sentence apart (`bi`: the second sentence's
    tensors carry the suffix `_b`, e.g. `input_ids_b`), for a bi-encoder head.
    """

    def __init__(self, split: Split, tokenizer, max_length: int, pair_encoding: str = "cross"):
        self.fingerprint = split.fingerprint()
        columns = [list(column) for column in zip(*split.texts)]
        if pair_encoding == "bi" and len(columns) == 2:
            first, second = (tokenizer(c, truncation=True, max_length=max_length) for c in columns)
            encoded = {**first, **{k + SECOND: v for k, v in second.items()}}
        else:
            encoded = dict(tokenizer(*columns[:2], truncation=True, max_length=max_length))
        self.features = [{k: encoded[k][i] for k in encoded} for i in range(len(split))]
        self.lengths = [sum(len(f[k]) for k in f if k.startswith("input_ids")) for f in self.features]
        self.labels = split.labels
        self.pad_id = tokenizer.pad_token_id or 0
        self.regression = split.task.is_regression

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[dict[str, list[int]], float | int]:
        return self.features[index], self.labels[index]

    def collate(self, items: list[tuple[dict[str, list[int]], float | int]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in items[0][0]:
            ids = "input_ids" + (SECOND if key.endswith(SECOND) else "")
            longest = max(len(f[ids]) for f, _ in items)
            pad = self.pad_id if key == ids else 0
            batch[key] = torch.tensor([f[key] + [pad] * (longest - len(f[key])) for f, _ in items])
        dtype = torch.float32 if self.regression else torch.long
        batch["labels"] = torch.tensor([label for _, label in items], dtype=dtype)
        return batch


def make_loader(data: EncodedSplit, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of similar length (shuffled, from `seed`, for training; sorted for evaluation)."""
    generator = torch.Generator().manual_seed(seed)
    batches = LengthGroupedBatches(data.lengths, batch_size, generator if shuffle else None)
    return DataLoader(data, batch_sampler=batches, collate_fn=data.collate, generator=generator)


class ResumableLoader:
    """A DataLoader whose position can be saved mid-pass and restored exactly (resumable training).

    A DataLoader draws from its generator at every iter(), so the position is the generator state at the start
    of the current pass plus the batches taken from it; restoring replays that pass and skips those batches.
    """

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.generator: torch.Generator = loader.generator
        self.pass_start = self.generator.get_state()
        self.taken = 0
        self.skip = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.pass_start, self.taken = self.generator.get_state(), 0
        skip, self.skip = self.skip, 0
        for batch in self.loader:
            self.taken += 1
            if self.taken > skip:
                yield batch

    def forever(self) -> Iterator[dict[str, torch.Tensor]]:
        """Pass after pass, without end (joint training draws a batch per task per step)."""
        while True:
            yield from self

    def state_dict(self) -> dict:
        return {"pass_start": self.pass_start, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.pass_start, self.taken, self.skip = state["pass_start"], state["taken"], state["taken"]
        self.generator.set_state(state["pass_start"])
