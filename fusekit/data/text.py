"""A task split asked of a generative model: each example rendered into its task's prompt, tokenized, and the
verbalizer (one answer token per label) attached to every batch.

The label is decided at one position, the token after the prompt: answers that start with the same tokens
(SmolLM2 writes ` 3` as a space, then the digit) have that common start appended to every prompt, so the answer
tokens compared are the first ones that differ. Batches are padded on the left, so that the answer position is
the last one of every row and a causal LM computes its logits there only; position ids count real tokens, so
padding does not move a row's positions. An encoder-decoder gets one decoder step, the start token.
"""

from __future__ import annotations

import torch

from fusekit.data.loading import EncodedSplit, Split
from fusekit.data.tasks import TaskSpec
from fusekit.errors import FusekitError

CHOICES = "choice_ids"  # batch key: the answer token of each label, per row
CHOICE_VALUES = "choice_values"  # batch key (regression): the number each answer token writes
NOT_MODEL_INPUTS = ("labels", CHOICES, CHOICE_VALUES)


def verbalizer(task: TaskSpec, tokenizer) -> tuple[list[int], list[int]]:
    """(the answer tokens shared by every label, appended to each prompt; one deciding token per label)."""
    if not task.answers:
        raise FusekitError(f"task {task.name} has no answer words: it cannot be asked as text")
    encoded = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in task.answers]
    shared = 0
    while all(len(ids) > shared + 1 for ids in encoded) and len({ids[shared] for ids in encoded}) == 1:
        shared += 1
    choices = [ids[shared] if len(ids) > shared else None for ids in encoded]
    if None in choices or len(set(choices)) < len(choices):
        raise FusekitError(f"task {task.name}: answers {list(task.answers)} do not differ in one token with this "
                           "tokenizer (expected a distinct first token per answer)")
    return encoded[0][:shared], choices


class TextSplit(EncodedSplit):
    """Prompt token ids of a split (left-padded per batch by `collate`) and the task's verbalizer."""

    def __init__(self, split: Split, tokenizer, max_length: int, decoder_start: int | None = None):
        """`decoder_start`: an encoder-decoder's decoder start token (None: a causal LM)."""
        self.fingerprint = split.fingerprint()
        self.labels = split.labels
        self.regression = split.task.is_regression
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.decoder_start = decoder_start
        shared, self.choices = verbalizer(split.task, tokenizer)
        self.values = split.task.answer_values
        prompts = [split.task.prompt.format(*texts) for texts in split.texts]
        ids = tokenizer(prompts)["input_ids"]
        for i, row in enumerate(ids):
            if len(row) + len(shared) > max_length:
                ids[i] = _shortened(split.task, split.texts[i], tokenizer, max_length - len(shared))
        self.features = [{"input_ids": row + shared} for row in ids]
        self.lengths = [len(f["input_ids"]) for f in self.features]

    def collate(self, items: list[tuple[dict[str, list[int]], float | int]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f, _ in items)
        ids = torch.tensor([[self.pad_id] * (longest - len(f["input_ids"])) + f["input_ids"] for f, _ in items])
        mask = torch.tensor([[0] * (longest - len(f["input_ids"])) + [1] * len(f["input_ids"]) for f, _ in items])
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.decoder_start is not None:
            batch["decoder_input_ids"] = torch.full((len(items), 1), self.decoder_start, dtype=torch.long)
        else:
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        batch[CHOICES] = torch.tensor(self.choices).expand(len(items), -1)
        if self.values is not None:
            batch[CHOICE_VALUES] = torch.tensor(self.values).expand(len(items), -1)
        dtype = torch.float32 if self.regression else torch.long
        batch["labels"] = torch.tensor([label for _, label in items], dtype=dtype)
        return batch


def _shortened(task: TaskSpec, texts: tuple[str, ...], tokenizer, budget: int) -> list[int]:
    """The prompt's ids within `budget` tokens: the longest sentence loses tokens from its end (the instruction
    and the answer position are kept), cut at token boundaries and decoded back to text."""
    texts = list(texts)
    for _ in range(64):
        ids = tokenizer(task.prompt.format(*texts))["input_ids"]
        if len(ids) <= budget:
            return ids
        longest = max(range(len(texts)), key=lambda i: len(texts[i]))
        tokens = tokenizer(texts[longest], add_special_tokens=False)["input_ids"]
        if not tokens:
            break
        texts[longest] = tokenizer.decode(tokens[: max(len(tokens) - (len(ids) - budget) - 1, 0)])
    raise FusekitError(f"task {task.name}: its prompt does not fit in max_length (expected a max_length above the "
                       f"template's own {len(tokenizer(task.prompt.format(*[''] * len(texts)))['input_ids'])} "
                       "tokens)")


def answer_scores(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """An LM's next-token logits (rows × vocabulary) → each label's answer-token log-probability, normalized over
    the whole vocabulary (so that the text loss is the model's own cross-entropy on the answer, while the arg-max
    over labels, and the softmax over these columns, read the verbalizer alone). Regression puts the expected
    value of the answers' numbers, under the distribution renormalized over them, in column 0."""
    chosen = logits.float().log_softmax(dim=-1).gather(1, batch[CHOICES])
    if CHOICE_VALUES not in batch:
        return chosen
    expected = (chosen.softmax(dim=-1) * batch[CHOICE_VALUES]).sum(dim=-1, keepdim=True)
    return torch.cat([expected, chosen], dim=1)


def text_loss(scores: torch.Tensor, labels: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of the answer token (over the whole vocabulary: the model learns to write the word). For
    regression the target is the label split between the two answers whose numbers enclose it (3.4 → 0.6 on
    ` 3`, 0.4 on ` 4`), so that the expected value can reproduce any score, not only whole ones."""
    if values is None:
        return torch.nn.functional.nll_loss(scores, labels)
    return -(split_targets(labels, values[0]) * scores[:, 1:]).sum(dim=-1).mean()


def split_targets(labels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Each label as a distribution over the answers' numbers `grid` (ascending): its weight split between the two
    numbers that enclose it, in proportion to how near it is to each (3.4 → 0.6 on 3, 0.4 on 4)."""
    y = labels.float().clamp(float(grid[0]), float(grid[-1]))
    upper = torch.searchsorted(grid, y).clamp(1, len(grid) - 1)
    lower = upper - 1
    share = (y - grid[lower]) / (grid[upper] - grid[lower])
    targets = torch.zeros(len(y), len(grid), device=y.device, dtype=share.dtype)
    targets.scatter_(1, lower[:, None], (1 - share)[:, None])
    return targets.scatter_add_(1, upper[:, None], share[:, None])
