"""Write your own backbone: a small denoiser from scratch, trained with and without context
prediction, sampled, saved and loaded again (the tutorial docs/tutorials/custom_backbone.rst).

    python examples/custom_backbone.py                      # a few minutes on 2 CPU cores
    python examples/custom_backbone.py --steps 5 --samples 4 --sample-steps 2   # a smoke run

Writes into ``--out``: ``context.png``, ``baseline.png`` and ``classes.png`` (sample grids) and
``context.safetensors`` and ``classes.safetensors`` (the fitted models).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from conprediff import ConPreDiffModel, ContextPrediction
from conprediff.backbones import check_backbone_output
from conprediff.data import load_digits_images
from conprediff.layers import TimestepEmbedding
from conprediff.plotting import save_image_grid


class Block(nn.Module):
    """A residual 3x3 convolution, shifted by the embedding of ``t`` (and the class).

    ``h``: ``(B, W, H', W')``, ``emb``: ``(B, E)``; returns ``(B, W, H', W')``.
    """

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.emb = nn.Linear(emb_dim, width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.conv(F.silu(self.norm(h) + self.emb(emb)[:, :, None, None]))


class SmallDenoiser(nn.Module):
    """A two-level convolutional denoiser that follows the backbone protocol.

    ``forward(x, t, cond=None)`` takes ``x`` ``(B, C, H, W)`` (``H`` and ``W`` even), ``t``
    ``(B,)`` integer timesteps and, when ``num_classes`` is set, ``cond`` ``(B,)`` labels in
    ``[0, num_classes]`` (``num_classes`` is the null label, as is ``cond=None``). It returns the
    prediction ``(B, C, H, W)`` and its last hidden map ``(B, width, H, W)``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, num_classes: int | None = None):
        super().__init__()
        self.in_channels = in_channels  # fit checks it against the data's channels
        self.width = width
        self.feature_channels = width  # F: the channels of the features forward returns
        self.num_classes = num_classes  # None: unconditional
        emb = 4 * width
        self.time = TimestepEmbedding(width, emb)  # (B,) -> (B, emb), sinusoidal then an MLP
        self.label = nn.Embedding(num_classes + 1, emb) if num_classes else None  # + null label
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.enc = Block(width, emb)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)  # (H, W) -> (H/2, W/2)
        self.mid = nn.ModuleList([Block(width, emb), Block(width, emb)])
        self.up = nn.Conv2d(width, width, 3, padding=1)
        self.dec = Block(width, emb)
        self.norm = nn.GroupNorm(8, width)
        self.head = nn.Conv2d(width, in_channels, 3, padding=1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.time(t)
        if self.label is not None:
            null = torch.full_like(t, self.num_classes)
            emb = emb + self.label(null if cond is None else cond)
        h = self.enc(self.stem(x), emb)  # (B, W, H, W)
        m = self.down(h)  # (B, W, H/2, W/2)
        for block in self.mid:
            m = block(m, emb)
        h = self.dec(h + self.up(F.interpolate(m, scale_factor=2.0)), emb)
        features = F.silu(self.norm(h))  # the last hidden map: context prediction reads it
        return self.head(features), features


class ConfigurableDenoiser(SmallDenoiser):
    """:class:`SmallDenoiser` with ``get_params``: ``fit`` rebuilds it from its arguments
    (initialised from ``seed``), ``sklearn.base.clone`` and ``get_params(deep=True)`` reach it,
    and a saved file describes it, so ``load`` needs the class (``classes=[...]``), not an
    instance."""

    def get_params(self, deep: bool = True) -> dict:
        return {"in_channels": self.in_channels, "width": self.width,
                "num_classes": self.num_classes}


def check_protocol(backbone: nn.Module, images: torch.Tensor) -> None:
    """One forward pass through the checks the estimator applies."""
    t = torch.randint(0, 1000, (len(images),))
    prediction, features = check_backbone_output(backbone(images, t), images)
    assert features.shape[1] == backbone.feature_channels
    print(f"prediction {tuple(prediction.shape)}, features {tuple(features.shape)}")


def train(backbone: nn.Module, context, images: torch.Tensor, args: argparse.Namespace,
          labels: torch.Tensor | None = None) -> ConPreDiffModel:
    """Fit a model on ``images`` ``(N, 1, 16, 16)``; ``context=None`` is the plain baseline."""
    model = ConPreDiffModel(backbone=backbone, context=context, max_steps=args.steps,
                            lr=1e-3, batch_size=args.batch_size, seed=0)
    return model.fit(images, labels)


def with_and_without_context(images: torch.Tensor, args: argparse.Namespace) -> ConPreDiffModel:
    """Train the same backbone with and without context prediction; save sample grids."""
    backbone = SmallDenoiser(width=args.width)  # deep-copied by fit: both start from its weights
    model = train(backbone, ContextPrediction(strides=(1, 2)), images, args)
    baseline = train(backbone, None, images, args)
    for name, fitted in (("context", model), ("baseline", baseline)):
        samples = fitted.sample(args.samples, steps=args.sample_steps, seed=0)  # (n, 1, 16, 16)
        print(save_image_grid(samples, args.out / f"{name}.png"))
    return model


def save_and_load(model: ConPreDiffModel, args: argparse.Namespace) -> None:
    """A file holds the weights of a custom backbone, not its code: ``load`` gets the module."""
    path = model.save(args.out / "context.safetensors")
    loaded = ConPreDiffModel.load(path, backbone=SmallDenoiser(width=args.width))
    same = torch.equal(loaded.sample(4, steps=args.sample_steps, seed=1),
                       model.sample(4, steps=args.sample_steps, seed=1))
    print(f"{path}: loaded, same samples: {same}")


def class_conditional(images: torch.Tensor, labels: torch.Tensor,
                      args: argparse.Namespace) -> None:
    """A class-conditional backbone with ``get_params``: fit with labels, sample by class."""
    backbone = ConfigurableDenoiser(width=args.width, num_classes=10)
    model = train(backbone, ContextPrediction(strides=(1, 2)), images, args, labels)
    digits = torch.arange(args.samples) % 10  # one class per image: 0, 1, ..., 9, 0, ...
    samples = model.sample(args.samples, steps=args.sample_steps, seed=0, labels=digits,
                           guidance_scale=2.0)
    print(save_image_grid(samples, args.out / "classes.png"))
    path = model.save(args.out / "classes.safetensors")
    loaded = ConPreDiffModel.load(path, classes=[ConfigurableDenoiser])
    print(f"{path}: loaded {loaded.backbone_.get_params()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per model")
    parser.add_argument("--width", type=int, default=32, help="channels (a multiple of 8)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=40, help="images per sample grid")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--out", type=Path, default=Path("outputs/custom_backbone"))
    args = parser.parse_args(argv)

    images, labels = load_digits_images(size=16)  # (1797, 1, 16, 16) in [-1, 1], (1797,)
    check_protocol(SmallDenoiser(width=args.width), images[:4])
    model = with_and_without_context(images, args)
    save_and_load(model, args)
    class_conditional(images, labels, args)


if __name__ == "__main__":
    main()
