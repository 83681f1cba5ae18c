"""The built-in text encoder: a word tokenizer and a small transformer, trained with the model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .._params import ModuleParamsMixin
from .._validation import check_int, check_real
from .embedding import TextEmbedding
from .tokenizer import WordTokenizer

__all__ = ["TextTransformer"]


class TextTransformer(ModuleParamsMixin, nn.Module):
    r"""A small transformer encoder over word tokens, trained together with the diffusion model.

    No download and no extra dependency: the vocabulary comes from the training captions
    (:meth:`fit_vocabulary`, which :meth:`ConPreDiffModel.fit
    <conprediff.ConPreDiffModel.fit>` calls), the weights from training. Token embeddings plus
    learned positions go through ``layers`` pre-norm transformer layers; ``pooled`` is the mean
    of the real tokens' outputs.

    Parameters
    ----------
    width : int, default=64
        Embedding width ``D`` (the backbone's ``text_channels``).
    layers : int, default=2
    heads : int, default=4
        Attention heads; ``width`` must be divisible by it.
    max_length : int, default=32
        Tokens per prompt (longer prompts are cut).
    dropout : float, default=0.0
    vocabulary : list of str, optional
        Set by :meth:`fit_vocabulary` (kept in saved models); None until then.

    Examples
    --------
    >>> enc = TextTransformer(width=32).fit_vocabulary(["a thick seven", "a small two"])
    >>> e = enc.encode(["a thick two", ""])
    >>> e.tokens.shape, e.mask.shape, e.pooled.shape
    (torch.Size([2, 32, 32]), torch.Size([2, 32]), torch.Size([2, 32]))
    """

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4, max_length: int = 32,
                 dropout: float = 0.0, vocabulary: Sequence[str] | None = None):
        super().__init__()
        self.width = check_int(width, "width", 1)
        self.layers = check_int(layers, "layers", 1)
        self.heads = check_int(heads, "heads", 1)
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be divisible by heads={self.heads}")
        self.max_length = check_int(max_length, "max_length", 1)
        self.dropout = check_real(dropout, "dropout", 0.0, 1.0)
        self.tokenizer = WordTokenizer(self.max_length, vocabulary=vocabulary)
        if vocabulary is not None:
            self._build_layers()

    @property
    def vocabulary(self) -> list[str] | None:
        return self.tokenizer.vocabulary

    @property
    def token_channels(self) -> int:
        """``D``: the width of ``tokens`` and ``pooled``."""
        return self.width

    @property
    def is_built(self) -> bool:
        return self.vocabulary is not None

    def fit_vocabulary(self, captions: Iterable[str]) -> TextTransformer:
        """Build the vocabulary from ``captions`` and (re)initialise the layers; returns self."""
        self.tokenizer.fit(captions)
        self._build_layers()
        return self

    def _build_layers(self) -> None:
        self.embed = nn.Embedding(self.tokenizer.vocab_size, self.width)
        self.position = nn.Parameter(torch.randn(self.max_length, self.width) * 0.02)
        layer = nn.TransformerEncoderLayer(self.width, self.heads, 4 * self.width, self.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, self.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.width)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids (B, L) long, mask (B, L) bool)``; every prompt has at least one real token."""
        return self.tokenizer(prompts)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TextEmbedding:
        """Encode token ids ``(B, L)`` with their mask ``(B, L)``; null rows stay null."""
        if not self.is_built:
            raise RuntimeError("TextTransformer has no vocabulary yet: call fit_vocabulary")
        h = self.embed(ids) + self.position[: ids.shape[1]]
        attend = TextEmbedding.attention_mask(mask)
        return TextEmbedding.from_states(
            self.norm(self.encoder(h, src_key_padding_mask=~attend)), mask)

    def encode(self, prompts: Sequence[str]) -> TextEmbedding:
        """Tokenize and encode a list of prompts (on this module's device)."""
        ids, mask = self.tokenize(prompts)
        device = self.embed.weight.device
        return self(ids.to(device), mask.to(device))
