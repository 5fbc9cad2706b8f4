"""Held-out data for a task whose training split is the labelled phrases of parsed sentences (SST-2).

SST-2's 67,349 training examples are every phrase of 6,885 parsed movie-review sentences, labelled apart; its dev
split holds whole sentences of other reviews. A held-out phrase is then often part of a sentence whose other
phrases were trained on (15% of a 500-example sample is a word span of a phrase trained on at 2,000 examples),
and it is shorter than what is scored (median 7 words against dev's 19). Held out here are whole sentences (a
phrase that is no word span of another) of which no word span was trained on: examples the adapter never saw any
labelled part of, shaped like the reported split. At 2,000 trained phrases 4,670 sentences qualify; at 30,000
only 120 (sentences holding a trained phrase are dropped even when that phrase is generic, a small bias towards
rarer wording, taken over any doubt about leakage).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache


def word_spans(phrase: str) -> Iterator[str]:
    """Every contiguous run of the phrase's words (the phrase itself last), as text."""
    words = phrase.split()
    for length in range(1, len(words) + 1):
        for start in range(len(words) - length + 1):
            yield " ".join(words[start:start + length])


@lru_cache(maxsize=4)
def whole_sentences(phrases: tuple[str, ...]) -> frozenset[str]:
    """The phrases that are no word span of another phrase: the parsed sentences."""
    known = {" ".join(p.split()) for p in phrases}
    inner = set()
    for phrase in known:
        inner.update(span for span in word_spans(phrase) if span != phrase and span in known)
    return frozenset(known - inner)


@lru_cache(maxsize=4)
def sentence_indices(phrases: tuple[str, ...]) -> tuple[int, ...]:
    """Where each whole sentence first occurs among the phrases (a sentence labelled twice counts once)."""
    sentences, taken, indices = whole_sentences(phrases), set(), []
    for i, phrase in enumerate(phrases):
        text = " ".join(phrase.split())
        if text in sentences and text not in taken:
            taken.add(text)
            indices.append(i)
    return tuple(indices)


def unseen_sentences(phrases: list[str], trained: set[int]) -> list[int]:
    """Indices of the whole sentences none of whose word spans is one of the `trained` phrases (each once)."""
    seen = {" ".join(phrases[i].split()) for i in trained}
    return [i for i in sentence_indices(tuple(phrases))
            if not any(span in seen for span in word_spans(" ".join(phrases[i].split())))]
