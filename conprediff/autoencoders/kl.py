"""A KL-regularised convolutional autoencoder (LDM's first stage, small) with its own ``fit``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from sklearn.exceptions import NotFittedError
from torch import nn

from .._params import ModuleParamsMixin
from .._validation import check_image_or_batch, check_int, check_real, check_seed
from ..ranges import from_unit, to_unit
from .networks import Decoder, Encoder

__all__ = ["KLAutoencoder"]


def _check_factor(value: Any) -> int:
    f = check_int(value, "downsampling_factor", 1)
    if f & (f - 1):
        raise ValueError(f"downsampling_factor must be a power of 2 (1, 2, 4, 8...), got {f}")
    return f


class KLAutoencoder(ModuleParamsMixin, nn.Module):
    r"""A convolutional autoencoder with a Gaussian posterior and a small KL term (LDM's KL-f4/f8).

    ``encode`` gives the posterior mean :math:`\mu(x)`; training samples
    :math:`z = \mu + \sigma \epsilon` and minimises

    .. math::

        \mathcal{L} = \frac{1}{CHW}\Big(\lVert x - D(z) \rVert_1
        + \beta\, \mathrm{KL}\big(\mathcal{N}(\mu, \sigma^2) \,\|\, \mathcal{N}(0, I)\big)\Big)

    per image (LDM's loss without its perceptual and adversarial terms, which need pretrained
    networks). After training, ``scaling_factor`` is :math:`1 / \mathrm{std}(\mu)` over the data,
    so the diffusion sees latents of about unit variance. See ``docs/latent.rst``.

    The constructor stores its arguments (scikit-learn convention); the network is built as soon
    as ``in_channels`` is known (now, or from the data at :meth:`fit`).

    Parameters
    ----------
    in_channels : int, optional
        Image channels; ``None`` takes them from the data at :meth:`fit`.
    latent_channels : int
        Channels of the latent grid.
    downsampling_factor : int
        ``f``, a power of 2: images ``(C, H, W)`` become latents ``(latent_channels, H/f, W/f)``.
    base_channels : int
        Width of the first level.
    channel_mults : tuple of int, optional
        Width of each of the ``log2(f) + 1`` levels as a multiple of ``base_channels``; default
        ``(1, 2, 2, ...)``.
    num_res_blocks : int
        Residual blocks per level.
    kl_weight : float
        :math:`\beta` (LDM: 1e-6).
    lr : float
        Adam learning rate of :meth:`fit`.
    batch_size : int
        Images per step of :meth:`fit`.
    max_steps : int
        Optimisation steps of :meth:`fit`.
    data_range : 'auto' or tuple of float
        Range of the images, mapped onto ``[-1, 1]``; ``'auto'`` as in
        :class:`~conprediff.ConPreDiffModel`.
    seed : int, optional
        Seeds initialisation, data order and posterior noise of :meth:`fit`.
    device : str
        Where :meth:`fit` trains (``'auto'``: CUDA when available).
    verbose : int
        ``1`` shows a progress bar during :meth:`fit`.

    Attributes
    ----------
    scaling_factor : float
        Fitted; see above.
    data_range_ : tuple of float
        The range used by :meth:`fit` (and by :meth:`reconstruct`).
    n_steps_ : int
        Optimisation steps taken.
    loss_history_ : dict of list of float
        ``'loss'``, ``'rec'`` and ``'kl'`` per step of the last :meth:`fit`.

    Examples
    --------
    >>> from conprediff.autoencoders import KLAutoencoder
    >>> from conprediff.data import load_digits_images
    >>> images, _ = load_digits_images(size=16)
    >>> ae = KLAutoencoder(downsampling_factor=4, max_steps=1000).fit(images)  # doctest: +SKIP
    >>> ae.encode(images[:8]).shape  # digits lie in [-1, 1]  # doctest: +SKIP
    torch.Size([8, 4, 4, 4])
    """

    def __init__(
        self,
        in_channels: int | None = None,
        latent_channels: int = 4,
        downsampling_factor: int = 4,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] | None = None,
        num_res_blocks: int = 1,
        kl_weight: float = 1e-6,
        lr: float = 1e-3,
        batch_size: int = 64,
        max_steps: int = 2000,
        data_range: str | tuple[float, float] = "auto",
        seed: int | None = None,
        device: str = "auto",
        verbose: int = 1,
    ):
        nn.Module.__init__(self)
        self.in_channels = in_channels
        self.latent_channels = check_int(latent_channels, "latent_channels", 1)
        self.downsampling_factor = _check_factor(downsampling_factor)
        self.base_channels = check_int(base_channels, "base_channels", 1)
        levels = int(math.log2(self.downsampling_factor)) + 1
        if channel_mults is None:
            mults = (1,) + (2,) * (levels - 1)
        else:
            mults = tuple(check_int(m, f"channel_mults[{i}]", 1)
                          for i, m in enumerate(channel_mults))
            if len(mults) != levels:
                raise ValueError(f"channel_mults needs log2(downsampling_factor) + 1 = {levels} "
                                 f"entries, got {len(mults)}")
        self.channel_mults = channel_mults if channel_mults is None else tuple(mults)
        self.num_res_blocks = check_int(num_res_blocks, "num_res_blocks", 1)
        self.kl_weight = check_real(kl_weight, "kl_weight", 0.0)
        self.lr = check_real(lr, "lr", 0.0, low_open=True)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.max_steps = check_int(max_steps, "max_steps", 1)
        self.data_range = data_range
        self.seed = check_seed(seed)
        self.device = device
        self.verbose = check_int(verbose, "verbose", 0)
        self.loss_history_: dict[str, list[float]] = {}
        # fitted state, kept in buffers so that state_dict() is the whole fitted autoencoder
        self.register_buffer("fitted_scale", torch.zeros(()))  # 0: not fitted
        self.register_buffer("fitted_range", torch.tensor([0.0, 1.0], dtype=torch.float64))
        self.register_buffer("fitted_steps", torch.zeros((), dtype=torch.int64))
        self.encoder: Encoder | None = None
        self.decoder: Decoder | None = None
        if in_channels is not None:
            channels = check_int(in_channels, "in_channels", 1)
            widths = tuple(self.base_channels * m for m in mults)
            self.encoder = Encoder(channels, self.latent_channels, widths, self.num_res_blocks)
            self.decoder = Decoder(channels, self.latent_channels, widths, self.num_res_blocks)

    # ------------------------------------------------------------------ fitted state
    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run (or a fitted state was loaded)."""
        return bool(self.fitted_scale > 0)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {type(self).__name__} is not fitted: call fit(images) "
                                 "first")

    @property
    def scaling_factor(self) -> float:
        """``1 / std`` of the latent means over the training data."""
        self._check_fitted()
        return float(self.fitted_scale)

    @property
    def data_range_(self) -> tuple[float, float]:
        """The ``(lo, hi)`` range :meth:`fit` mapped onto ``[-1, 1]``."""
        self._check_fitted()
        lo, hi = self.fitted_range.tolist()
        return float(lo), float(hi)

    @property
    def n_steps_(self) -> int:
        """Optimisation steps taken."""
        return int(self.fitted_steps)

    # ------------------------------------------------------------------ the maps
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_variance)`` of the latent, each ``(B, latent_channels, H/f, W/f)``, for
        images ``x`` ``(B, C, H, W)`` in ``[-1, 1]``."""
        if self.encoder is None:
            raise NotFittedError("the autoencoder has no network yet: set in_channels or fit it")
        f = self.downsampling_factor
        if x.ndim != 4 or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"images must be (B, C, H, W) with H and W divisible by the "
                             f"downsampling_factor {f}, got {tuple(x.shape)}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent mean ``(B, latent_channels, H/f, W/f)`` of images ``x`` in ``[-1, 1]``."""
        self._check_fitted()
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, f h, f w)`` around ``[-1, 1]`` from latents ``(B, latent_channels, h,
        w)`` (unscaled: ``encode``'s output)."""
        if self.decoder is None:
            raise NotFittedError("the autoencoder has no network yet: set in_channels or fit it")
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be (B, {self.latent_channels}, h, w), got "
                             f"{tuple(z.shape)}")
        return self.decoder(z)

    @torch.no_grad()
    def reconstruct(self, images: Any, batch_size: int = 256) -> torch.Tensor:
        """``decode(encode(images))`` in the data's range, clamped to it.

        Parameters
        ----------
        images : torch.Tensor or numpy.ndarray
            ``(C, H, W)`` or ``(B, C, H, W)`` in ``data_range_``.
        batch_size : int
            Images per forward pass.

        Returns
        -------
        torch.Tensor
            Same shape as ``images``, float32 on the CPU.
        """
        self._check_fitted()
        rng = self.data_range_
        x, single = check_image_or_batch(images, None, rng, "images")
        device = self.fitted_scale.device
        out = []
        for start in range(0, x.shape[0], check_int(batch_size, "batch_size", 1)):
            part = to_unit(x[start : start + batch_size], rng).to(device)
            out.append(from_unit(self.decode(self.encode(part)).clamp(-1, 1), rng).cpu())
        out = torch.cat(out)
        return out[0] if single else out

    def evaluate(self, images: Any, batch_size: int = 256) -> dict[str, float]:
        """Reconstruction error on ``images``: ``'mse'`` and ``'mae'`` in the data's units,
        ``'psnr'`` in dB with the range's width as the peak."""
        x, _ = check_image_or_batch(images, None, self.data_range_, "images")
        err = self.reconstruct(x, batch_size) - x
        lo, hi = self.data_range_
        mse = float(err.pow(2).mean())
        return {"mse": mse, "mae": float(err.abs().mean()),
                "psnr": 10 * math.log10((hi - lo) ** 2 / max(mse, 1e-20))}

    # ------------------------------------------------------------------ fit and files
    def fit(self, data: Any, y: Any = None) -> KLAutoencoder:
        """Train on images (labels, if any, are ignored); returns ``self``.

        Parameters
        ----------
        data : torch.Tensor, numpy.ndarray, Dataset or DataLoader
            Images ``(N, C, H, W)`` with ``H`` and ``W`` divisible by ``downsampling_factor``,
            or batches of them (``(images, labels)`` tuples too).
        y : ignored
            Accepted so that labelled data can be passed as to
            :meth:`~conprediff.ConPreDiffModel.fit`.
        """
        from .training import fit_autoencoder

        fit_autoencoder(self, data, y)
        return self

    def save(self, path: str | Path) -> Path:
        """Write the fitted autoencoder to one safetensors file (arguments as JSON metadata)."""
        from .files import save_autoencoder

        self._check_fitted()
        return save_autoencoder(self, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> KLAutoencoder:
        """Read a file written by :meth:`save`; the file is checked, no code in it runs."""
        from .files import load_autoencoder

        return load_autoencoder(path, device, classes=(cls,))

    def extra_repr(self) -> str:  # noqa: D102
        return "" if self.is_fitted else "not fitted"

    def __repr__(self) -> str:
        return ModuleParamsMixin.__repr__(self)
