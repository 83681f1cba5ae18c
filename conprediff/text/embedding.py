"""What a text encoder hands to a backbone: token embeddings, their padding mask, a pooled one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["TextEmbedding", "check_prompts", "with_learned_null"]


@dataclass(frozen=True)
class TextEmbedding:
    """A batch of encoded prompts.

    Attributes
    ----------
    tokens : torch.Tensor
        ``(B, L, D)`` token embeddings (what cross-attention reads).
    mask : torch.Tensor
        ``(B, L)`` bool, True at real tokens and False at padding. A row with no True is the
        **null condition** (a dropped caption, or the unconditional half of guidance): the
        backbone replaces it by its learned null embedding.
    pooled : torch.Tensor
        ``(B, D)`` one vector per prompt (added to the time embedding).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __post_init__(self) -> None:
        b, length, d = self.tokens.shape if self.tokens.dim() == 3 else (None, None, None)
        if b is None or self.mask.shape != (b, length) or self.pooled.shape != (b, d):
            raise ValueError(
                "TextEmbedding needs tokens (B, L, D), mask (B, L) and pooled (B, D); got "
                f"{tuple(self.tokens.shape)}, {tuple(self.mask.shape)} and "
                f"{tuple(self.pooled.shape)}")
        if self.mask.dtype != torch.bool:
            raise TypeError(f"TextEmbedding mask must be bool, got {self.mask.dtype}")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, rows: slice | torch.Tensor) -> TextEmbedding:
        """The rows ``rows`` (a slice or an index tensor) of the batch."""
        return TextEmbedding(self.tokens[rows], self.mask[rows], self.pooled[rows])

    @property
    def null(self) -> torch.Tensor:
        """``(B,)`` bool: the rows that are the null condition (no real token)."""
        return ~self.mask.any(dim=1)

    def to(self, device: torch.device | str) -> TextEmbedding:
        return TextEmbedding(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    def dropped(self, drop: torch.Tensor) -> TextEmbedding:
        """The same batch with the rows where ``drop`` ``(B,)`` is True made null."""
        keep = ~drop.to(self.mask.device)
        return TextEmbedding(self.tokens * keep[:, None, None], self.mask & keep[:, None],
                             self.pooled * keep[:, None])

    def nulled(self) -> TextEmbedding:
        """Every row null: the unconditional model's input."""
        return self.dropped(torch.ones(len(self), dtype=torch.bool))

    @staticmethod
    def from_states(states: torch.Tensor, mask: torch.Tensor,
                    pooled: torch.Tensor | None = None) -> TextEmbedding:
        """An encoder's output states ``(B, L, D)`` with padding and null rows zeroed, and
        ``pooled`` (default: the mean of the real tokens' states)."""
        keep = mask[..., None].to(states.dtype)
        if pooled is None:
            pooled = (states * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        else:
            pooled = pooled * keep[:, 0]
        return TextEmbedding(states * keep, mask, pooled)

    @staticmethod
    def attention_mask(mask: torch.Tensor) -> torch.Tensor:
        """``mask`` with null rows attending to their padding (finite; zeroed afterwards)."""
        return mask | ~mask.any(dim=1, keepdim=True)

    @staticmethod
    def cat(parts: Sequence[TextEmbedding]) -> TextEmbedding:
        """Concatenate along the batch, padding the token axes to the longest."""
        length = max(p.tokens.shape[1] for p in parts)

        def pad(p: TextEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
            extra = length - p.tokens.shape[1]
            return (torch.nn.functional.pad(p.tokens, (0, 0, 0, extra)),
                    torch.nn.functional.pad(p.mask, (0, extra), value=False))

        tokens, masks = zip(*(pad(p) for p in parts), strict=True)
        return TextEmbedding(torch.cat(tokens), torch.cat(masks),
                             torch.cat([p.pooled for p in parts]))


def with_learned_null(cond: TextEmbedding | None, batch: int, null_token: torch.Tensor,
                      null_pooled: torch.Tensor) -> TextEmbedding:
    """``cond`` with its null rows (all ``batch`` rows if None) replaced by a backbone's learned
    null: one real token ``null_token`` ``(D,)`` and the pooled vector ``null_pooled`` ``(D,)``.

    TypeError unless ``cond`` is a :class:`TextEmbedding`; ValueError unless it has ``batch``
    rows of width ``D``.
    """
    width, device = null_token.shape[0], null_token.device
    if cond is None:
        cond = TextEmbedding(torch.zeros(batch, 1, width, device=device),
                             torch.zeros(batch, 1, dtype=torch.bool, device=device),
                             torch.zeros(batch, width, device=device))
    if not isinstance(cond, TextEmbedding):
        raise TypeError(f"cond must be a TextEmbedding for a text backbone, got "
                        f"{type(cond).__name__}")
    if len(cond) != batch or cond.tokens.shape[2] != width:
        raise ValueError(f"cond: expected {batch} prompts of width {width}, got "
                         f"{len(cond)} of width {cond.tokens.shape[2]}")
    null = cond.null
    first = torch.zeros_like(cond.mask)
    first[:, 0] = null
    tokens = torch.where(first[..., None], null_token.to(cond.tokens.dtype), cond.tokens)
    pooled = torch.where(null[:, None], null_pooled.to(cond.pooled.dtype), cond.pooled)
    return TextEmbedding(tokens, cond.mask | first, pooled)


def check_prompts(prompts: Any, n: int | None = None, name: str = "prompts") -> list[str]:
    """``prompts`` as a list of ``n`` strings (one string is repeated ``n`` times).

    Raises
    ------
    TypeError
        Not a string or a sequence of strings.
    ValueError
        An empty list, or a length other than ``n``.
    """
    if isinstance(prompts, str):
        if n is None:
            return [prompts]
        return [prompts] * n
    if isinstance(prompts, (bytes, bytearray)) or not isinstance(prompts, Sequence):
        raise TypeError(f"{name} must be a string or a list of strings, got "
                        f"{type(prompts).__name__}")
    prompts = list(prompts)
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name} must hold strings, found {bad[0]}")
    if not prompts:
        raise ValueError(f"{name} is empty")
    if n is not None and len(prompts) != n:
        raise ValueError(f"{name} has {len(prompts)} prompts for n={n} images: give one prompt, "
                         f"or exactly n")
    return prompts
