"""A word tokenizer whose vocabulary is built from the training captions."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .._validation import check_int

__all__ = ["WordTokenizer"]

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
SPECIALS = ("<pad>", "<unk>", "<bos>")
PAD, UNK, BOS = range(3)


class WordTokenizer:
    """Lower-cased words and punctuation marks to ids, with a vocabulary built by :meth:`fit`.

    Every prompt starts with a ``<bos>`` token, so even the empty prompt has one real token (a
    row with none is the null condition of :class:`~conprediff.text.TextEmbedding`). Words not
    in the vocabulary map to ``<unk>``; prompts longer than ``max_length`` tokens are cut.

    Parameters
    ----------
    max_length : int, default=32
        Tokens per prompt, ``<bos>`` included.
    min_count : int, default=1
        A word enters the vocabulary if it occurs at least this often in the captions.
    vocabulary : list of str, optional
        The words (without the special tokens), for a tokenizer restored from a file.

    Examples
    --------
    >>> tok = WordTokenizer(max_length=6).fit(["a thick seven", "a small two"])
    >>> ids, mask = tok(["a thick two", "seven!"])
    >>> ids.tolist()
    [[2, 3, 6, 7, 0, 0], [2, 4, 1, 0, 0, 0]]
    """

    def __init__(self, max_length: int = 32, min_count: int = 1,
                 vocabulary: Sequence[str] | None = None):
        self.max_length = check_int(max_length, "max_length", 1)
        self.min_count = check_int(min_count, "min_count", 1)
        self.vocabulary = None if vocabulary is None else _check_vocabulary(vocabulary)
        self._index = None if vocabulary is None else self._make_index()

    def _make_index(self) -> dict[str, int]:
        return {w: i + len(SPECIALS) for i, w in enumerate(self.vocabulary)}

    @staticmethod
    def words(prompt: str) -> list[str]:
        """The prompt's words and punctuation marks, lower-cased."""
        return _WORD.findall(prompt.lower())

    def fit(self, captions: Iterable[str]) -> WordTokenizer:
        """Build the vocabulary from ``captions`` (sorted by count, then alphabetically)."""
        counts = Counter(w for c in captions for w in self.words(c))
        self.vocabulary = sorted((w for w, k in counts.items() if k >= self.min_count),
                                 key=lambda w: (-counts[w], w))
        self._index = self._make_index()
        return self

    @property
    def vocab_size(self) -> int:
        """Ids in use: the special tokens and the vocabulary."""
        if self.vocabulary is None:
            raise RuntimeError("the tokenizer has no vocabulary yet: call fit(captions)")
        return len(SPECIALS) + len(self.vocabulary)

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids (B, max_length) long, mask (B, max_length) bool)`` of a list of prompts."""
        if self._index is None:
            raise RuntimeError("the tokenizer has no vocabulary yet: call fit(captions)")
        ids = torch.full((len(prompts), self.max_length), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            seq = [BOS, *(self._index.get(w, UNK) for w in self.words(prompt))]
            seq = seq[: self.max_length]
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids, ids != PAD

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"max_length": self.max_length, "min_count": self.min_count,
                "vocabulary": None if self.vocabulary is None else list(self.vocabulary)}


def _check_vocabulary(vocabulary: Any) -> list[str]:
    if isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence):
        raise TypeError(f"vocabulary must be a list of words, got {type(vocabulary).__name__}")
    words = list(vocabulary)
    if not all(isinstance(w, str) and w for w in words):
        raise TypeError("vocabulary must hold non-empty strings")
    if len(set(words)) != len(words) or set(words) & set(SPECIALS):
        raise ValueError("vocabulary must not repeat a word or hold a special token")
    return words
