r"""Classifier-free guidance as a wrapper of the network (Ho & Salimans 2022)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .._validation import check_labels, check_real
from ..backbones.protocol import num_classes_of
from ..text.embedding import TextEmbedding, check_prompts
from .gaussian import DenoiseFn

__all__ = ["check_condition", "guided", "sampling_condition", "text_condition"]


def check_condition(num_classes: int | None, labels: Any, n: int, guidance_scale: Any,
                    label_dropout: float | None) -> tuple[torch.Tensor | None, float]:
    """``(labels (n,) or None, guidance scale)`` of a sampling call, checked against a model
    with ``num_classes`` (None: unconditional) trained with ``label_dropout``."""
    scale = check_real(guidance_scale, "guidance_scale")
    if num_classes is not None and (labels is None or scale != 1.0) and not label_dropout:
        warnings.warn(
            "the model was trained with label_dropout=0, so its null label (the "
            "unconditional model, used without labels and by guidance) was never trained",
            stacklevel=4,
        )
    if labels is None:
        if scale != 1.0:
            raise ValueError("guidance_scale needs labels: pass labels=...")
        return None, scale
    if num_classes is None:
        raise ValueError(
            "labels were given but the model is unconditional: train a class-conditional "
            "backbone (e.g. UNet(num_classes=10)) with fit(images, y)"
        )
    return check_labels(labels, num_classes, n, "labels"), scale


def text_condition(net: nn.Module, prompts: Any, negative_prompts: Any, n: int,
                   guidance_scale: Any, dropout: float | None
                   ) -> tuple[list[str] | None, float, list[str] | None]:
    """``(prompts or None, guidance scale, negative prompts or None)`` of a sampling call of
    ``n`` images, checked against ``net`` (a text model has ``encode``), whose null condition
    was trained with probability ``dropout``. :func:`guided` encodes them, batch by batch."""
    scale = check_real(guidance_scale, "guidance_scale")
    if prompts is None:
        if negative_prompts is not None:
            raise ValueError("negative_prompts needs prompts: pass prompts=...")
        if scale != 1.0:
            raise ValueError("guidance_scale needs prompts: pass prompts=...")
        return None, scale, None
    if not hasattr(net, "encode") or getattr(net, "text_channels", None) is None:
        raise ValueError("prompts were given but the model was trained without text: give "
                         "ConPreDiffModel a text_encoder and fit(images, prompts)")
    if scale != 1.0 and not dropout:
        warnings.warn("the model was trained with label_dropout=0, so its null condition (used "
                      "by guidance) was never trained", stacklevel=4)
    uncond = None
    if negative_prompts is not None:
        uncond = check_prompts(negative_prompts, n, "negative_prompts")
    return check_prompts(prompts, n, "prompts"), scale, uncond


def sampling_condition(net: nn.Module, labels: Any, n: int, guidance_scale: Any, prompts: Any,
                       negative_prompts: Any, dropout: float | None) -> tuple[Any, ...]:
    """``(cond, guidance scale, null label, uncond)`` of a sampling call of ``n`` images:
    :func:`check_condition` for labels, :func:`text_condition` for prompts (then the null label
    is None and ``uncond`` the negative prompts, if any)."""
    text_model = getattr(net, "text_channels", None) is not None
    if prompts is not None or text_model:
        if labels is not None and text_model:
            raise ValueError("labels were given to a text model: pass prompts=...")
        if labels is not None:
            raise ValueError("prompts were given to a class-conditional model: pass labels=...")
        cond, scale, uncond = text_condition(net, prompts, negative_prompts, n, guidance_scale,
                                             dropout)
        return cond, scale, None, uncond
    if negative_prompts is not None:
        raise ValueError("negative_prompts needs prompts: pass prompts=...")
    num_classes = num_classes_of(net)
    cond, scale = check_condition(num_classes, labels, n, guidance_scale, dropout)
    return cond, scale, num_classes, None


def guided(
    net: nn.Module, cond: torch.Tensor | TextEmbedding | None, null: int | None, scale: float,
    uncond: torch.Tensor | TextEmbedding | None = None,
) -> DenoiseFn:
    r"""``denoise(x, t) -> out`` with classifier-free guidance (Ho & Salimans 2022).

    ``net(x, t[, labels])`` returns a tuple whose first item is the ``(B, C, H, W)`` output.
    With a scale :math:`w` the output is

    .. math::

        \hat\epsilon_\varnothing + w\,(\hat\epsilon_c - \hat\epsilon_\varnothing),

    the null label :math:`\varnothing` being ``null`` (``= num_classes``): one forward pass of a
    doubled batch. ``w = 1`` is the plain conditional model (one pass of the batch), ``w = 0``
    the unconditional one.

    Parameters
    ----------
    net : torch.nn.Module
        The backbone.
    cond : torch.Tensor, TextEmbedding, list of str or None
        ``(B,)`` long labels, or ``B`` prompts (encoded here by ``net.encode`` if strings), or
        None: then the null label ``null`` for
        a class-conditional backbone, no condition at all for an unconditional or a text one
        (``null`` None: a text backbone takes None as its null condition); ``scale`` is not
        used.
    null : int or None
        The null label, None for an unconditional backbone.
    scale : float
        The guidance scale :math:`w`.
    uncond : torch.Tensor, TextEmbedding or list of str, optional
        What :math:`\varnothing` is instead of the null condition (e.g. negative prompts).

    Returns
    -------
    callable
        ``denoise(x, t) -> out`` with ``x`` ``(B, C, H, W)``, ``t`` ``(B,)``, ``out`` ``(B, C, H,
        W)``.
    """
    if cond is None:
        if null is None:  # an unconditional backbone
            return lambda x, t: net(x, t)[0]
        return lambda x, t: net(x, t, torch.full_like(t, null))[0]  # the null label
    cond = net.encode(cond) if isinstance(cond, list) else cond
    uncond = net.encode(uncond) if isinstance(uncond, list) else uncond
    if scale == 1.0:
        return lambda x, t: net(x, t, cond.to(x.device))[0]
    text = isinstance(cond, TextEmbedding)
    if uncond is None:
        uncond = cond.nulled() if text else torch.full_like(cond, null)
    if scale == 0.0:
        return lambda x, t: net(x, t, uncond.to(x.device))[0]
    both = TextEmbedding.cat([cond, uncond]) if text else torch.cat([cond, uncond])

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = net(torch.cat([x, x]), torch.cat([t, t]), both.to(x.device))[0]
        c, u = out.to(x.dtype).chunk(2)  # combined in x's dtype (float32) under autocast too
        return u + scale * (c - u)

    return denoise
