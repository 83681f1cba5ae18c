"""Autoencoders for latent diffusion: the protocol a latent :class:`~conprediff.ConPreDiffModel`
needs, and :class:`KLAutoencoder`, LDM's KL-regularised first stage in small."""

from .kl import KLAutoencoder
from .protocol import Autoencoder, check_autoencoder

__all__ = ["Autoencoder", "KLAutoencoder", "check_autoencoder"]
