r"""The context-prediction term of ConPreDiff.

.. math::

    L = L_{point}(t) + \lambda_t \cdot \frac{1}{P} \sum_{i} \frac{1}{|S|} \sum_{s \in S}
    W_2^2\big(\psi_n(h_i, t),\ P_{N_i^s}\big)

:class:`ContextPrediction` is the configuration (a scikit-learn estimator: the constructor stores
its arguments, :meth:`ContextPrediction.build` validates them); :class:`ContextHead` is the
``nn.Module`` it builds, holding the decoder's weights and computing the term from the backbone's
last hidden features. The head is used in training only: sampling never calls it.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from einops import rearrange, repeat
from sklearn.base import BaseEstimator
from torch import nn

from conprediff._validation import check_choice, check_int, check_real
from conprediff.context._checks import check_tensor
from conprediff.context.decoders import GaussianDecoder, SampledDecoder
from conprediff.context.neighborhoods import Neighborhood, NeighborhoodSampler
from conprediff.context.weights import resolve_weight
from conprediff.wasserstein import GaussianW2, resolve_metric, weighted_moments

__all__ = ["ContextPrediction", "ContextHead", "ContextOutput"]

_TARGETS = ("x0", "posterior")
_DECODERS = ("sampled", "gaussian")


class ContextOutput(NamedTuple):
    r"""What :meth:`ContextHead.forward` returns.

    Attributes
    ----------
    loss : torch.Tensor
        Scalar :math:`\frac1P \sum_i \lambda_{t(i)} \frac{1}{|S|} \sum_s W_2^2(\psi_n(h_i, t),
        P_{N_i^s})`, differentiable in the decoder's parameters and the features.
    w2 : torch.Tensor
        Scalar, detached: the same mean without :math:`\lambda_t` (for logging).
    """

    loss: torch.Tensor
    w2: torch.Tensor


def _accepts_generator(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "generator" or p.kind == p.VAR_KEYWORD for p in params)


class ContextPrediction(BaseEstimator):
    r"""Configuration of the context term: neighbourhoods, decoder, metric, :math:`\lambda_t`.

    Parameters
    ----------
    strides : tuple of int, default=(1, 2)
        Neighbourhood strides :math:`S`; one W2 term per stride, averaged.
    shape : {'ring', 'square'}, default='ring'
        Neighbourhood shape (see :class:`~conprediff.context.neighborhoods.NeighborhoodSampler`).
    border : {'drop', 'reflect'}, default='drop'
        Treatment of neighbours outside the grid.
    decoder : {'sampled', 'gaussian'} or callable, default='sampled'
        ``'sampled'``: :class:`~conprediff.context.decoders.SampledDecoder` (Q reparameterised
        samples, compared with the neighbours by ``metric``); ``'gaussian'``:
        :class:`~conprediff.context.decoders.GaussianDecoder` (a closed-form Gaussian, compared with
        the neighbours' moment-matched Gaussian by the Bures–Wasserstein formula, full covariance);
        or a factory ``decoder(in_features, out_channels) -> nn.Module`` whose forward
        ``(h (P, F), t (P,)[, generator=...]) -> (P, Q, C)`` returns samples like
        :class:`SampledDecoder` (``generator`` is passed when its forward accepts it).
    latent_dim : int, default=8
        Latent size ``L`` of the built-in decoders; set for cost (the reparameterisation noise and
        the output network run on ``P * Q`` rows), see ``docs/benchmarks/context_overhead.md``.
    hidden : int, default=64
        Trunk width of the built-in decoders.
    n_samples : int or None, default=None
        Samples ``Q`` per point for ``'sampled'``; None means the largest neighbourhood size
        ``K`` over the strides. Ignored by the other decoders.
    metric : str or metric object, default='auto'
        W2 metric for sample-based decoders (see :func:`conprediff.wasserstein.resolve_metric`;
        'auto' is the exact sorting solver for one channel). With ``decoder='gaussian'`` it must
        be ``'auto'``, ``'gaussian'`` or a :class:`~conprediff.wasserstein.GaussianW2`.
    weight : float or weight object, default=0.1
        :math:`\lambda_t` (see :mod:`conprediff.context.weights`); a float is a constant. 0.1
        rather than the specification's 1: see ``docs/benchmarks/ablation.md``.
    target : {'x0', 'posterior'}, default='x0'
        The map whose neighbours are predicted: the clean sample :math:`x_0`, or the posterior
        mean :math:`\tilde\mu_t(x_0, x_t)` of :math:`x_{t-1}` (``schedule.posterior``).
    point_fraction : float, default=0.1
        In ``(0, 1]``: the term is computed on ``max(1, round(point_fraction * B * H * W))``
        points drawn without replacement at every call, an unbiased estimate of the mean over
        all points. A tenth, for cost: see ``docs/benchmarks/ablation.md`` (quality) and
        ``docs/benchmarks/context_overhead.md`` (time).

    Notes
    -----
    The constructor stores its arguments only; :meth:`build` validates them (``TypeError`` for
    a wrong type, ``ValueError`` for a wrong value, naming the parameter).
    ``get_params(deep=True)`` reaches into ``weight`` and ``metric`` objects (``weight__value``,
    ``metric__n_projections``), so :func:`sklearn.base.clone` and grid searches work.

    Examples
    --------
    >>> import torch
    >>> head = ContextPrediction(strides=(1,)).build(feature_channels=8, data_channels=1)
    >>> out = head(torch.randn(2, 8, 5, 5), torch.tensor([3, 7]), torch.randn(2, 1, 5, 5))
    >>> out.loss.shape, bool(out.w2 >= 0)
    (torch.Size([]), True)
    """

    def __init__(
        self,
        strides=(1, 2),
        shape: str = "ring",
        border: str = "drop",
        decoder="sampled",
        latent_dim: int = 8,
        hidden: int = 64,
        n_samples: int | None = None,
        metric="auto",
        weight=0.1,
        target: str = "x0",
        point_fraction: float = 0.1,
    ):
        self.strides = strides
        self.shape = shape
        self.border = border
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.n_samples = n_samples
        self.metric = metric
        self.weight = weight
        self.target = target
        self.point_fraction = point_fraction

    def build(self, feature_channels: int, data_channels: int) -> ContextHead:
        """Validate the parameters and build a fresh head.

        Parameters
        ----------
        feature_channels : int
            ``F``, channels of the backbone's last hidden feature map.
        data_channels : int
            ``C``, channels of the targets (``x0``).

        Returns
        -------
        ContextHead
            A new ``nn.Module`` with freshly initialised decoder weights.

        Raises
        ------
        TypeError
            Naming the first parameter of a wrong type.
        ValueError
            Naming the first parameter of a wrong value.
        """
        feature_channels = check_int(feature_channels, "feature_channels", 1)
        data_channels = check_int(data_channels, "data_channels", 1)
        sampler = NeighborhoodSampler(self.strides, self.shape, self.border)
        k_max = max(sampler.size(s) for s in sampler.validate())
        latent_dim = check_int(self.latent_dim, "latent_dim", 1)
        hidden = check_int(self.hidden, "hidden", 1)
        n_samples = check_int(self.n_samples, "n_samples", 1, optional=True) or k_max
        check_choice(self.target, "target", _TARGETS)
        point_fraction = check_real(self.point_fraction, "point_fraction", 0.0, 1.0, low_open=True)
        weight = resolve_weight(self.weight, "weight")
        kind = self._decoder_kind()
        if kind == "gaussian":
            metric = self._gaussian_metric(data_channels)
            module = GaussianDecoder(feature_channels, data_channels, latent_dim, hidden)
        else:
            metric = self._sample_metric(data_channels)
            if kind == "sampled":
                module = SampledDecoder(
                    feature_channels, data_channels, latent_dim, hidden, n_samples=n_samples
                )
            else:
                module = self._custom_decoder(feature_channels, data_channels)
        return ContextHead(
            module,
            sampler=sampler,
            metric=metric,
            weight=weight,
            kind=kind,
            target=self.target,
            point_fraction=point_fraction,
            feature_channels=feature_channels,
            data_channels=data_channels,
        )

    def _decoder_kind(self) -> str:
        """``'sampled'``, ``'gaussian'`` or ``'custom'`` (a factory)."""
        expected = (
            f"decoder must be one of {_DECODERS} or a factory "
            f"(in_features, out_channels) -> nn.Module, got {self.decoder!r}"
        )
        if isinstance(self.decoder, str):
            if self.decoder not in _DECODERS:
                raise ValueError(expected)
            return self.decoder
        if not callable(self.decoder):
            raise TypeError(expected)
        return "custom"

    def _gaussian_metric(self, data_channels: int) -> GaussianW2:
        """The Bures-Wasserstein metric of ``decoder='gaussian'``."""
        if isinstance(self.metric, GaussianW2):
            return self.metric
        if isinstance(self.metric, str) and self.metric.lower() in ("auto", "gaussian"):
            # the closed form is exact between Gaussians; for C == 1 'diag' is the same formula
            return GaussianW2("diag" if data_channels == 1 else "full", validate=False)
        error = ValueError if isinstance(self.metric, str) or callable(self.metric) else TypeError
        raise error(
            "metric must be 'auto', 'gaussian' or a GaussianW2 with decoder='gaussian' "
            f"(its prediction is a Gaussian in closed form), got {self.metric!r}"
        )

    def _sample_metric(self, data_channels: int):
        """The W2² metric between the decoder's samples and the neighbours."""
        metric = resolve_metric(self.metric, data_channels)
        if isinstance(self.metric, str) and "validate" in metric.get_params():
            # the sampler's weights are valid by construction: skip the per-call checks
            metric.set_params(validate=False)
        return metric

    def _custom_decoder(self, feature_channels: int, data_channels: int) -> nn.Module:
        module = self.decoder(feature_channels, data_channels)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"decoder: the factory must return an nn.Module, got {type(module).__name__}"
            )
        return module


class ContextHead(nn.Module):
    r"""The context decoder and the computation of the context term (training only).

    Built by :meth:`ContextPrediction.build`; its ``state_dict`` holds the decoder's weights only.
    The neighbourhood sampler, the metric and :math:`\lambda_t` are plain attributes.

    Parameters
    ----------
    decoder : nn.Module
        The context decoder.
    sampler : NeighborhoodSampler
        Gathers the neighbourhoods (validated).
    metric : callable
        W2² metric ``(x, y, x_weights, y_weights) -> (P,)`` (sample-based decoders), or a
        :class:`~conprediff.wasserstein.GaussianW2` (``kind='gaussian'``).
    weight : callable
        :math:`\lambda_t`: ``weight(t, schedule) -> (B,)``.
    kind : {'sampled', 'gaussian', 'custom'}
        How the decoder's output is read.
    target : {'x0', 'posterior'}
        Which map's neighbours are predicted.
    point_fraction : float
        Fraction of the points used per call.
    feature_channels, data_channels : int
        ``F`` and ``C``.
    """

    def __init__(
        self,
        decoder: nn.Module,
        *,
        sampler: NeighborhoodSampler,
        metric,
        weight,
        kind: str,
        target: str,
        point_fraction: float,
        feature_channels: int,
        data_channels: int,
    ):
        super().__init__()
        self.decoder = decoder
        self.sampler = sampler
        self.strides = sampler.validate()
        self.metric = metric
        self.weight = weight
        self.kind = kind
        self.target = target
        self.point_fraction = point_fraction
        self.feature_channels = feature_channels
        self.data_channels = data_channels
        self._pass_generator = kind == "sampled" or (
            kind == "custom" and _accepts_generator(decoder)
        )

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, strides={self.strides}, shape={self.sampler.shape!r}, "
            f"border={self.sampler.border!r}, target={self.target!r}, "
            f"point_fraction={self.point_fraction}"
        )

    def n_points(self, n_total: int) -> int:
        """Number of points used per call for a batch of ``n_total = B * H * W`` points."""
        if self.point_fraction >= 1.0:
            return n_total
        return min(n_total, max(1, round(self.point_fraction * n_total)))

    def _check(self, features, t, x0, xt, schedule) -> None:
        check_tensor(features, "features", "(B, F, H, W)")
        check_tensor(x0, "x0", "(B, C, H, W)")
        check_tensor(t, "t", "(B,)")
        if self.target == "posterior" and xt is not None:
            check_tensor(xt, "xt", "(B, C, H, W)")
        B, F, H, W = features.shape
        if F != self.feature_channels:
            raise ValueError(
                f"features must have F = {self.feature_channels} channels, "
                f"got {tuple(features.shape)}"
            )
        if x0.shape[0] != B or x0.shape[1] != self.data_channels:
            raise ValueError(
                f"x0 must be ({B}, {self.data_channels}, H, W) for features of shape "
                f"{tuple(features.shape)}, got {tuple(x0.shape)}"
            )
        if x0.shape[2:] != features.shape[2:]:
            raise ValueError(
                f"features must lie on the grid of x0: features are {H}x{W} but x0 is "
                f"{x0.shape[2]}x{x0.shape[3]}"
            )
        if t.shape != (B,):
            raise ValueError(f"t must be a ({B},) tensor of integer timesteps")
        if self.target == "posterior":
            if schedule is None:
                raise ValueError("schedule is required with target='posterior'")
            if xt is None or xt.shape != x0.shape:
                raise ValueError(
                    f"xt of shape {tuple(x0.shape)} is required with target='posterior'"
                )

    def forward(
        self,
        features: torch.Tensor,
        t: torch.Tensor,
        x0: torch.Tensor,
        xt: torch.Tensor | None = None,
        schedule=None,
        generator: torch.Generator | None = None,
    ) -> ContextOutput:
        r"""The context term for one batch.

        Parameters
        ----------
        features : torch.Tensor
            ``(B, F, H, W)`` the backbone's last hidden features :math:`h`, on the grid of ``x0``.
        t : torch.Tensor
            ``(B,)`` integer timesteps.
        x0 : torch.Tensor
            ``(B, C, H, W)`` clean samples.
        xt : torch.Tensor, optional
            ``(B, C, H, W)`` noisy samples; required with ``target='posterior'``.
        schedule : NoiseSchedule, optional
            Required with ``target='posterior'`` and by schedule-dependent weights.
        generator : torch.Generator, optional
            On the features' device: draws the point subset and the decoder's samples.

        Returns
        -------
        ContextOutput
            ``(loss, w2)``: the :math:`\lambda_t`-weighted mean over points of the stride-averaged
            :math:`W_2^2`, and its unweighted, detached mean over the points computed (those of
            images with :math:`\lambda_t > 0`).

        Notes
        -----
        Targets are computed without gradient. Under ``torch.autocast`` the decoder runs in the
        autocast dtype; its output and the targets are cast to float32 and the metric runs in
        float32 (autocast off), so the term and ``w2`` are float32.
        """
        self._check(features, t, x0, xt, schedule)
        B, F, H, W = features.shape
        hw = H * W
        device = features.device

        with torch.no_grad():
            y = x0 if self.target == "x0" else schedule.posterior(x0, xt, t)[0]
            y = y.detach().float()
        lam = self.weight(t, schedule).to(device=device, dtype=torch.float32)

        index, divisor = self._points(lam, B, hw, generator)
        h = rearrange(features, "b f h w -> (b h w) f")  # the row order of sampler.gather
        if index is not None:
            h = torch.index_select(h, 0, index)  # backward: index_add, fast
            image = index // hw
        else:
            image = repeat(torch.arange(B, device=device), "b -> (b p)", p=hw)
        w2 = self._w2(h, t.to(device)[image], self.sampler.gather(y, index), generator)
        weighted = lam[image] * w2
        # the plain mean when every computed point counts once (every image active)
        loss = weighted.mean() if divisor == weighted.numel() else weighted.sum() / divisor
        return ContextOutput(loss, w2.detach().mean())

    def _w2(
        self,
        h: torch.Tensor,
        t: torch.Tensor,
        neighbourhoods: list[Neighborhood],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        r"""``(P,)`` :math:`\frac{1}{|S|} \sum_s W_2^2(\psi_n(h_i, t_i), P_{N_i^s})`, float32.

        ``h`` is ``(P, F)``, ``t`` ``(P,)``, one neighbourhood per stride. The decoder runs
        under any active autocast; the metric runs in float32 with autocast off.
        """
        if self.kind == "gaussian":
            mean, cov = self.decoder(h, t)
        elif self._pass_generator:
            samples = self.decoder(h, t, generator=generator)
        else:
            samples = self.decoder(h, t)
        with torch.autocast(h.device.type, enabled=False):
            if self.kind == "gaussian":
                terms = self._gaussian_terms(mean.float(), cov.float(), neighbourhoods)
            else:
                samples = samples.float()
                terms = [self.metric(samples, v, None, w) for v, w in neighbourhoods]
            return torch.stack(terms).mean(0) if len(terms) > 1 else terms[0]

    def _gaussian_terms(
        self, mean: torch.Tensor, cov: torch.Tensor, neighbourhoods: list[Neighborhood]
    ) -> list[torch.Tensor]:
        """Bures-Wasserstein W2² between ``N(mean (P, C), cov (P, C, C))`` and each
        neighbourhood's moment-matched Gaussian: one ``(P,)`` term per stride."""
        if self.metric.covariance == "diag":
            cov = torch.diagonal(cov, dim1=1, dim2=2)
        terms = []
        for values, weights in neighbourhoods:
            mean_y, cov_y = weighted_moments(values, weights, self.metric.covariance)
            terms.append(self.metric.from_moments(mean, cov, mean_y, cov_y))
        return terms

    def _points(
        self, lam: torch.Tensor, B: int, hw: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor | None, float]:
        r"""The points the term is computed on this call, and the divisor of its weighted sum.

        Returns ``(index, divisor)``: ``index`` holds flat indices into the ``B * hw`` points
        (``None``: all of them, in order) and the loss is ``sum_i lam_i W2_i / divisor``, an
        unbiased estimate of the mean of :math:`\lambda_t W_2^2` over all points.

        Points of images whose :math:`\lambda_t` is 0 (e.g. outside a
        :class:`~conprediff.context.TruncatedWeight` window) add nothing to the loss or its
        gradient, so they are not computed: the ``n = point_fraction * B * hw`` points are
        drawn from the ``B_a`` images with :math:`\lambda_t > 0` only, ``n_a = round(n B_a /
        B)`` of them, and the divisor is ``n_a B / B_a``. With every image active this is the
        plain uniform draw of ``n`` points (divisor ``n``). With none active one point is kept
        (its weight is 0), so that the decoder still takes part in the graph (DDP expects every
        parameter to).
        """
        n_total = B * hw
        n = self.n_points(n_total)
        device = lam.device
        active = lam > 0
        n_images = int(active.sum())
        if n_images == B:
            if n == n_total:
                return None, float(n)
            return torch.randperm(n_total, generator=generator, device=device)[:n], float(n)
        if n_images == 0:
            return torch.zeros(1, dtype=torch.long, device=device), 1.0
        images = torch.nonzero(active).squeeze(1)
        candidates = (images[:, None] * hw + torch.arange(hw, device=device)).reshape(-1)
        n_active = min(candidates.numel(), max(1, round(n * n_images / B)))
        if n_active < candidates.numel():
            pick = torch.randperm(candidates.numel(), generator=generator, device=device)
            candidates = candidates[pick[:n_active]]
        return candidates, n_active * B / n_images
