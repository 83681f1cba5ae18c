"""A backbone and its text encoder as one module: what a text model trains, averages and saves."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._params import ModuleParamsMixin
from .._validation import check_images
from .embedding import TextEmbedding, check_prompts

__all__ = ["TextConditioned", "captioned_data", "check_text_encoder", "collect_captions",
           "with_text_encoder"]


def check_text_encoder(encoder: Any, backbone: Any, name: str = "text_encoder") -> None:
    """Raise unless ``encoder`` follows the text-encoder protocol (``tokenize``, a module call
    ``(ids, mask) -> TextEmbedding``, ``token_channels``) with the width of the backbone's
    ``text_channels``."""
    if not isinstance(encoder, nn.Module) or not all(
            hasattr(encoder, a) for a in ("tokenize", "token_channels", "encode")):
        raise TypeError(f"{name} must be a text encoder (an nn.Module with tokenize, encode and "
                        f"token_channels, e.g. TextTransformer), got {type(encoder).__name__}")
    width = getattr(backbone, "text_channels", None)
    if width is None:
        raise ValueError(f"{name} was given but the backbone takes no text: build it with "
                         f"text_channels={encoder.token_channels} (e.g. UNet(text_channels=...))")
    if width != encoder.token_channels:
        raise ValueError(f"{name} gives tokens of width {encoder.token_channels} but the "
                         f"backbone's text_channels={width}: make them equal")


def collect_captions(data: Any) -> list[str]:
    """Every caption of a Dataset (or DataLoader) of ``(image, caption)``: its ``texts`` (an
    :class:`~conprediff.data.ImageFolder` with captions, :func:`captioned_data`'s), or the
    second item of each item."""
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    texts = getattr(data, "texts", None)
    if texts is None:
        texts = [data[i][1] for i in range(len(data))]
    return check_prompts(texts, len(data), "the data's captions")


class TextConditioned(ModuleParamsMixin, nn.Module):
    """``backbone`` with ``text_encoder`` in front: ``forward(x, t, cond)`` where ``cond`` is
    token ids and mask ``((B, L), (B, L))`` (encoded here, so a trained encoder learns with the
    backbone), a :class:`TextEmbedding` (already encoded), or None (the null condition).

    Training, the EMA copy, checkpoints and model files treat it as the backbone. Made by
    :meth:`ConPreDiffModel.fit <conprediff.ConPreDiffModel.fit>` from its ``backbone`` and
    ``text_encoder`` parameters.
    """

    def __init__(self, backbone: nn.Module, text_encoder: nn.Module):
        super().__init__()
        check_text_encoder(text_encoder, backbone)
        self.backbone = backbone
        self.text_encoder = text_encoder

    @property
    def feature_channels(self) -> int:
        return self.backbone.feature_channels

    @property
    def in_channels(self) -> int | None:
        return getattr(self.backbone, "in_channels", None)

    @property
    def text_channels(self) -> int:
        return self.backbone.text_channels

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_encoder.tokenize(prompts)

    def encode(self, prompts: Sequence[str]) -> TextEmbedding:
        """The prompts' embedding on this module's device."""
        return self.text_encoder.encode(prompts)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> Any:
        if isinstance(cond, tuple | list):
            ids, mask = cond
            cond = self.text_encoder(ids, mask)
        return self.backbone(x, t, cond)


def captioned_data(data: Any, y: Any) -> Any:
    """Images with captions as a Dataset of ``(image, caption)``: ``data`` and the list ``y``,
    or ``data`` itself when it already yields pairs (``y`` None)."""
    if y is None:
        if not isinstance(data, torch.utils.data.Dataset | torch.utils.data.DataLoader):
            raise ValueError("a text model needs captions: fit(images, prompts) with one prompt "
                             "per image, or a Dataset yielding (image, caption)")
        return data
    images = check_images(data, "data")
    prompts = check_prompts(y, len(images), "prompts y")
    return _Captioned(images, prompts)


class _Captioned(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, prompts: list[str]):
        self.images, self.texts = images, prompts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.images[i], self.texts[i]


def with_text_encoder(backbone: nn.Module, template: nn.Module, captions: list[str],
                      seed: int) -> TextConditioned:
    """``backbone`` behind a copy of ``template``; a built-in encoder without a vocabulary gets
    one from ``captions`` (and its layers, seeded with ``seed``)."""
    encoder = copy.deepcopy(template)
    if not getattr(encoder, "is_built", True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder.fit_vocabulary(check_prompts(captions, None, "captions"))
    return TextConditioned(backbone, encoder)
