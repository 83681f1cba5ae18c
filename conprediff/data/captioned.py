"""Captioned digits whose captions can be checked on the image: digit, stroke thickness, slant,
size and position, measured on the pixels and written through varied templates.

Each base digit (the embedded digits or MNIST-5k) is drawn on a ``size x size`` canvas either
large and centred or small (half the canvas) in one of the four quadrants. Thickness and slant
are measured on the drawn image and split at the median of its digit class, so both words are
equally common. :func:`measure_digit_attributes` measures any image the same way, which is what
the prompt-following score (:func:`conprediff.evaluation.prompt_following`) compares with the
prompt. See :doc:`/text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import check_choice, check_int, check_seed
from .digits import load_digits_images, load_mnist_images

__all__ = ["ATTRIBUTES", "CaptionedDigits", "DIGIT_NAMES", "TEMPLATES", "load_captioned_digits",
           "measure_digit_attributes", "prompts_for"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
POSITIONS = ("in the top left", "in the top right", "in the bottom left", "in the bottom right",
             "in the middle")
#: ``'train'`` templates are for training; ``'test'`` ones only for evaluation prompts.
TEMPLATES = {
    "train": (
        "a {thickness}, {slant} {digit}, {size}, {position}",
        "{digit}, {thickness} and {slant}, {size}, {position}",
        "a {size} {thickness} {digit}, {slant}, {position}",
        "{position}: a {slant} {digit}, {size} and {thickness}",
    ),
    "test": (
        "a {size}, {thickness} {digit} that is {slant}, {position}",
        "{thickness} {slant} {digit} ({size}), {position}",
    ),
}
ATTRIBUTES = {"thickness": ("thin", "thick"), "slant": ("upright", "slanted"),
              "size": ("small", "large"), "position": POSITIONS}


@dataclass
class CaptionedDigits:
    """Images with captions and the attributes the captions state.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, 1, size, size)`` in ``[-1, 1]``.
    captions : list of str
    digits : torch.Tensor
        ``(N,)`` classes.
    attributes : dict of str to list of str
        ``'thickness'``, ``'slant'``, ``'size'``, ``'position'``: the word of each image.
    thresholds : dict
        Per digit class, the medians that split thickness and slant (what
        :func:`measure_digit_attributes` needs to measure other images alike).
    """

    images: torch.Tensor
    captions: list[str]
    digits: torch.Tensor
    attributes: dict[str, list[str]]
    thresholds: dict[str, np.ndarray] = field(default_factory=dict)


def _raw_measures(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: ink mass, box height, centroid, thickness and slant measures."""
    ink = ((images[:, 0].float() + 1) / 2).clamp(0, 1)  # (N, H, W)
    n, h, w = ink.shape
    ys = torch.arange(h, dtype=torch.float32)[None, :, None].expand_as(ink)
    xs = torch.arange(w, dtype=torch.float32)[None, None, :].expand_as(ink)
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    cy, cx = (ink * ys).sum((1, 2)) / mass, (ink * xs).sum((1, 2)) / mass
    dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
    var_y = (ink * dy * dy).sum((1, 2)) / mass
    cov = (ink * dx * dy).sum((1, 2)) / mass
    rows = (ink > 0.5).any(2)
    first = torch.where(rows.any(1), rows.float().argmax(1), torch.zeros(n, dtype=torch.long))
    last = h - 1 - rows.flip(1).float().argmax(1)
    height = (last - first + 1).clamp_min(1).float()
    return {"height": (height / h).numpy(), "cy": (cy / h).numpy(), "cx": (cx / w).numpy(),
            "thickness": (mass / height**2).numpy(),
            "slant": (-cov / var_y.clamp_min(1e-6)).numpy()}


def measure_digit_attributes(images: torch.Tensor, digits: Sequence[int],
                             thresholds: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Thickness, slant, size and position words of ``images`` ``(N, 1, H, W)`` in ``[-1, 1]``.

    ``digits`` ``(N,)`` picks each image's class thresholds (the requested or the classified
    digit); ``thresholds`` is :attr:`CaptionedDigits.thresholds`.
    """
    m = _raw_measures(images)
    d = np.asarray(digits, dtype=int)
    large = m["height"] > 0.5
    quadrant = 2 * (m["cy"] >= 0.5) + (m["cx"] >= 0.5)
    return {
        "thickness": [ATTRIBUTES["thickness"][int(v)]
                      for v in m["thickness"] > thresholds["thickness"][d]],
        "slant": [ATTRIBUTES["slant"][int(v)] for v in m["slant"] > thresholds["slant"][d]],
        "size": [ATTRIBUTES["size"][int(v)] for v in large],
        "position": [POSITIONS[4] if big else POSITIONS[q] for big, q in zip(large, quadrant,
                                                                               strict=True)],
    }


def _draw(base: torch.Tensor, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    """Each base digit on a canvas: large and centred, or small in a random quadrant."""
    n = len(base)
    canvas = torch.full((n, 1, size, size), -1.0)
    large = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    half = size // 2
    small = F.interpolate(base, size=(half, half), mode="bilinear", align_corners=False)
    where = rng.integers(0, 5, n)  # 0-3: a quadrant (small), 4: large
    for i in range(n):
        if where[i] == 4:
            canvas[i] = large[i]
        else:
            top, left = half * (where[i] // 2), half * (where[i] % 2)
            canvas[i, :, top:top + half, left:left + half] = small[i]
    return canvas.clamp(-1, 1), where


def load_captioned_digits(dataset: str = "digits", size: int = 32, templates: str = "train",
                          seed: int | None = 0) -> CaptionedDigits:
    """Digits drawn large or small at five positions, captioned from what is measured on them.

    Parameters
    ----------
    dataset : {'digits', 'mnist'}, default='digits'
        The embedded 8x8 digits (1,797) or MNIST-5k (5,000; extra ``[mnist]``).
    size : int, default=32
        Canvas side; even, at least 8.
    templates : {'train', 'test'}, default='train'
        Which caption templates (:data:`TEMPLATES`): held-out ``'test'`` ones for evaluation
        prompts.
    seed : int, optional
        Seeds the placement and the template of each image.

    Returns
    -------
    CaptionedDigits
    """
    dataset = check_choice(dataset, "dataset", ("digits", "mnist"))
    size = check_int(size, "size", 8)
    if size % 2:
        raise ValueError(f"size must be even (small digits fill half the canvas), got {size}")
    templates = check_choice(templates, "templates", ("train", "test"))
    rng = np.random.default_rng(check_seed(seed))
    base, digits = load_mnist_images() if dataset == "mnist" else load_digits_images(size=8)
    images, _ = _draw(base, size, rng)
    m = _raw_measures(images)
    d = digits.numpy()
    thresholds = {k: np.array([np.median(m[k][d == c]) if (d == c).any() else np.inf
                               for c in range(10)]) for k in ("thickness", "slant")}
    attrs = measure_digit_attributes(images, d, thresholds)
    forms = TEMPLATES[templates]
    which = rng.integers(0, len(forms), len(images))
    captions = [forms[which[i]].format(digit=DIGIT_NAMES[d[i]],
                                       **{k: attrs[k][i] for k in ATTRIBUTES})
                for i in range(len(images))]
    return CaptionedDigits(images, captions, digits, attrs, thresholds)


def prompts_for(digits: Sequence[int], attributes: dict[str, Sequence[str]],
                templates: str = "test", seed: int | None = 0) -> list[str]:
    """Prompts stating ``digits`` and ``attributes`` (one per image) through ``templates``."""
    forms = TEMPLATES[check_choice(templates, "templates", ("train", "test"))]
    rng = np.random.default_rng(check_seed(seed))
    which = rng.integers(0, len(forms), len(digits))
    return [forms[which[i]].format(digit=DIGIT_NAMES[int(k)],
                                   **{a: attributes[a][i] for a in ATTRIBUTES})
            for i, k in enumerate(digits)]
