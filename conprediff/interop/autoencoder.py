"""A diffusers ``AutoencoderKL`` as the autoencoder of a latent model
(:mod:`conprediff.autoencoders.protocol`)."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from .._params import ModuleParamsMixin
from .._validation import check_real
from ._load import model_class, plain_config, read_folder_config

__all__ = ["DiffusersAutoencoder"]

AUTOENCODER_CLASSES = ("AutoencoderKL",)


class DiffusersAutoencoder(ModuleParamsMixin, nn.Module):
    r"""A diffusers ``AutoencoderKL`` behind the autoencoder protocol.

    ``encode`` gives the posterior mean (unscaled; minus the config's ``shift_factor`` where
    it has one, as Stable Diffusion 3's), ``decode`` the images around ``[-1, 1]``;
    ``latent_channels`` and ``downsampling_factor = 2 ** (len(block_out_channels) - 1)`` come
    from the config, and ``scaling_factor`` is the config's (LDM's 0.18215 for Stable
    Diffusion's autoencoder) unless given. It is used as it is: a latent model never trains it,
    so give it the weights you want with :meth:`from_diffusers` (a pretrained one from a local
    folder, or a module you trained). A model file holds its weights and config.

    Parameters
    ----------
    config : dict
        The autoencoder's diffusers config (``vae.config``).
    class_name : {'AutoencoderKL'}
    scaling_factor : float, optional
        Overrides the config's ``scaling_factor``.

    Examples
    --------
    >>> vae = DiffusersAutoencoder.from_diffusers("path/to/sd-vae")   # doctest: +SKIP
    >>> model = ConPreDiffModel(autoencoder=vae, context=ContextPrediction())  # doctest: +SKIP
    """

    def __init__(self, config: dict[str, Any], class_name: str = "AutoencoderKL",
                 scaling_factor: float | None = None):
        super().__init__()
        self.config = plain_config(config, "config")
        self.class_name = class_name
        self.scaling_factor_override = check_real(scaling_factor, "scaling_factor", 0.0,
                                                  low_open=True, optional=True)
        self.vae = model_class(class_name, AUTOENCODER_CLASSES, "class_name").from_config(
            self.config)
        cfg = self.vae.config
        self.in_channels = int(cfg.in_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.downsampling_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.vae.requires_grad_(False)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments."""
        return {"config": self.config, "class_name": self.class_name,
                "scaling_factor": self.scaling_factor_override}

    @property
    def scaling_factor(self) -> float:
        """The factor that gives latents about unit variance (the config's, or the one given)."""
        if self.scaling_factor_override is not None:
            return float(self.scaling_factor_override)
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        """The config's ``shift_factor`` (0 when unset), subtracted by :meth:`encode`."""
        return float(self.vae.config.get("shift_factor") or 0.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean minus ``shift_factor``, ``(B, latent_channels, H/f, W/f)``, of
        images ``x`` in ``[-1, 1]``."""
        return self.vae.encode(x).latent_dist.mean - self.shift_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, f h, f w)`` around ``[-1, 1]`` from :meth:`encode`'s latents."""
        return self.vae.decode(z + self.shift_factor).sample

    def __sklearn_clone__(self) -> DiffusersAutoencoder:
        """A copy with the weights: an autoencoder here is never trained, only used."""
        return copy.deepcopy(self)

    @classmethod
    def from_diffusers(cls, vae: nn.Module | str | os.PathLike,
                       scaling_factor: float | None = None) -> DiffusersAutoencoder:
        """Wrap ``vae`` (an ``AutoencoderKL``, or a local folder written by its
        ``save_pretrained``, or a pipeline's folder with a ``vae/`` subfolder), its weights
        copied. Nothing is downloaded."""
        if not isinstance(vae, nn.Module):
            where, config = read_folder_config(vae, "vae")
            name = config.get("_class_name", "AutoencoderKL")
            vae = model_class(name, AUTOENCODER_CLASSES, f"the autoencoder in {str(where)!r}"
                              ).from_pretrained(where, local_files_only=True,
                                            low_cpu_mem_usage=False)
        wrapper = cls(plain_config(getattr(vae, "config", None), "vae.config"),
                      type(vae).__name__, scaling_factor)
        wrapper.vae.load_state_dict(vae.state_dict())
        return wrapper
