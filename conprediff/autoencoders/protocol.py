"""What :class:`~conprediff.ConPreDiffModel` needs of an autoencoder to diffuse in its latents.

An autoencoder maps images in ``[-1, 1]`` (the diffusion's pixel convention, LDM's and
diffusers') to latents and back:

* ``encode(x) -> z``: ``(B, C, H, W)`` in ``[-1, 1]`` to ``(B, latent_channels, H/f, W/f)``, the
  unscaled latent (a KL autoencoder's posterior mean);
* ``decode(z) -> x``: the inverse map, to ``(B, C, H, W)`` around ``[-1, 1]``;
* ``latent_channels`` and ``downsampling_factor`` (``f``), integers;
* ``scaling_factor``: a float that gives ``scaling_factor * z`` about unit variance on the data
  (LDM's "scale factor"); the diffusion runs on the scaled latents.

:class:`~conprediff.autoencoders.kl.KLAutoencoder` is the library's own. A pretrained one (such as
a diffusers ``AutoencoderKL`` loaded from a local folder) takes its place through a thin wrapper
with the same four members. To be saved inside a model file an autoencoder must also be an
``nn.Module`` with ``get_params`` (rebuilt from its parameters, its state from
``state_dict``), as the library's backbones are.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from .._validation import check_int, check_real

__all__ = ["Autoencoder", "check_autoencoder", "check_image_size"]


@runtime_checkable
class Autoencoder(Protocol):
    """The members :class:`~conprediff.ConPreDiffModel` uses (see the module's docs)."""

    latent_channels: int
    downsampling_factor: int

    @property
    def scaling_factor(self) -> float: ...  # noqa: D102

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...  # noqa: D102

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...  # noqa: D102


def is_fitted(autoencoder: Any) -> bool:
    """Whether ``autoencoder`` can encode: its ``is_fitted`` when it has one, else True."""
    return bool(getattr(autoencoder, "is_fitted", True))


def check_autoencoder(autoencoder: Any, name: str = "autoencoder",
                      fitted: bool = True) -> Any:
    """``autoencoder`` if it has the protocol's members (and, with ``fitted``, is fitted).

    Raises
    ------
    TypeError
        When a member is missing or ``latent_channels``/``downsampling_factor`` is not an
        integer.
    ValueError
        When it is not fitted (with ``fitted``), or a number is out of range.
    """
    missing = [m for m in ("encode", "decode", "latent_channels", "downsampling_factor")
               if not hasattr(autoencoder, m)]
    if missing:
        raise TypeError(f"{name} must follow conprediff.autoencoders.Autoencoder (encode, "
                        f"decode, latent_channels, downsampling_factor, scaling_factor); "
                        f"{type(autoencoder).__name__} lacks {', '.join(missing)}")
    check_int(autoencoder.latent_channels, f"{name}.latent_channels", 1)
    check_int(autoencoder.downsampling_factor, f"{name}.downsampling_factor", 1)
    if fitted:
        if not is_fitted(autoencoder):
            raise ValueError(f"{name} is not fitted: call {name}.fit(images) first, or pass it "
                             "to ConPreDiffModel.fit, which fits it on the same data")
        check_real(float(autoencoder.scaling_factor), f"{name}.scaling_factor", 0.0,
                   low_open=True)
    return autoencoder


def check_image_size(shape: tuple[int, ...], factor: int) -> None:
    """ValueError, naming ``downsampling_factor``, unless the last two sides of ``shape`` are
    divisible by ``factor``."""
    if shape[-1] % factor or shape[-2] % factor:
        raise ValueError(
            f"image size {tuple(shape[-2:])} is not divisible by the autoencoder's "
            f"downsampling_factor={factor}: resize or crop the images (e.g. ImageFolder(root, "
            "size=...)), or choose a smaller downsampling_factor"
        )
