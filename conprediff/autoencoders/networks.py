"""The encoder and decoder of :class:`~conprediff.autoencoders.kl.KLAutoencoder` (LDM's design).

Encoder: ``conv_in``, per level ``num_res_blocks`` residual blocks and a stride-2 convolution
(none after the last level), a middle block, ``GroupNorm-SiLU-conv`` to ``2 * latent_channels``
(mean and log-variance). Decoder: the mirror image, nearest-neighbour upsampling plus a
convolution in place of the strided ones. No attention: the autoencoders here are small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Decoder", "Encoder"]


def _norm(channels: int) -> nn.GroupNorm:
    groups = min(32, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class _Block(nn.Module):
    """``x + conv(SiLU(norm(conv(SiLU(norm(x))))))``, a 1x1 skip when the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class _Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """``(B, C, H, W) -> (B, 2 * latent_channels, H / 2**(L-1), W / 2**(L-1))``, ``L`` levels."""

    def __init__(self, in_channels: int, latent_channels: int, widths: tuple[int, ...],
                 num_res_blocks: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        c = widths[0]
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(_Block(c, w))
                c = w
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = _Block(c, c)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``(B, latent_channels, h, w) -> (B, C, h * 2**(L-1), w * 2**(L-1))``."""

    def __init__(self, out_channels: int, latent_channels: int, widths: tuple[int, ...],
                 num_res_blocks: int):
        super().__init__()
        c = widths[-1]
        self.conv_in = nn.Conv2d(latent_channels, c, 3, padding=1)
        self.mid = _Block(c, c)
        layers: list[nn.Module] = []
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks):
                layers.append(_Block(c, w))
                c = w
            if i > 0:
                layers.append(_Upsample(c))
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))
