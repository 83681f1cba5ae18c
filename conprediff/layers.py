"""Small building blocks shared by backbones and context decoders."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._validation import check_int

__all__ = ["timestep_embedding", "TimestepEmbedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    r"""Sinusoidal embedding of (integer or real) timesteps (Vaswani et al. 2017; Ho et al. 2020).

    .. math::

        e(t)_{2k} = \cos(t\, \omega_k), \quad e(t)_{2k+1} = \sin(t\, \omega_k), \quad
        \omega_k = \mathrm{max\_period}^{-k / (d/2)}

    Parameters
    ----------
    t : torch.Tensor
        ``(N,)`` timesteps.
    dim : int
        Embedding size ``d`` (an odd ``d`` gets a zero last column).

    Returns
    -------
    torch.Tensor
        ``(N, dim)`` float32 embedding on ``t``'s device.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding followed by a two-layer MLP: ``(N,) -> (N, out_dim)``.

    Parameters
    ----------
    sinusoidal_dim : int
        Size of the sinusoidal features.
    out_dim : int
        Output size.
    """

    def __init__(self, sinusoidal_dim: int, out_dim: int):
        super().__init__()
        sinusoidal_dim = check_int(sinusoidal_dim, "sinusoidal_dim", 1)
        out_dim = check_int(out_dim, "out_dim", 1)
        self.sinusoidal_dim = sinusoidal_dim
        self.mlp = nn.Sequential(
            nn.Linear(sinusoidal_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed ``t`` ``(N,)`` into ``(N, out_dim)``."""
        return self.mlp(timestep_embedding(t, self.sinusoidal_dim))
