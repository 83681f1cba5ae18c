"""Context decoders: shapes, reparameterisation, the affine closed form, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conprediff.context.decoders import LOGVAR_MAX, LOGVAR_MIN, GaussianDecoder, SampledDecoder

P, F, C = 5, 6, 2


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(P, F, generator=g), torch.randint(0, 1000, (P,), generator=g)


def test_sampled_shapes_and_reproducibility():
    torch.manual_seed(0)
    dec = SampledDecoder(F, C, latent_dim=4, hidden=16, n_samples=7)
    h, t = inputs()
    out = dec(h, t)
    assert out.shape == (P, 7, C) and out.dtype == torch.float32
    assert dec(h, t, n_samples=3).shape == (P, 3, C)
    a = dec(h, t, generator=torch.Generator().manual_seed(1))
    b = dec(h, t, generator=torch.Generator().manual_seed(1))
    c = dec(h, t, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # samples differ across q (the noise is per sample), initial outputs are small
    assert not torch.allclose(a[:, 0], a[:, 1])
    assert a.abs().max() < 1.0


def test_reparameterisation_moments():
    torch.manual_seed(0)
    dec = SampledDecoder(F, C, latent_dim=3, hidden=16)
    with torch.no_grad():  # make sigma differ across points and dimensions
        dec.heads.weight.normal_(0, 0.5)
    h, t = inputs()
    mu, logvar = dec.latent(h, t)
    assert mu.shape == (P, 3) and logvar.shape == (P, 3)
    xi = dec.sample_latent(h, t, n_samples=40000, generator=torch.Generator().manual_seed(0))
    assert xi.shape == (P, 40000, 3)
    sigma2 = logvar.exp()
    se = (sigma2 / 40000).sqrt()
    assert ((xi.mean(1) - mu).abs() < 5 * se).all()
    assert torch.allclose(xi.var(1), sigma2, rtol=0.05)


def test_logvar_is_clamped():
    dec = SampledDecoder(F, C)
    with torch.no_grad():
        dec.heads.bias[dec.latent_dim :] = 100.0
    _, logvar = dec.latent(*inputs())
    assert logvar.max() == LOGVAR_MAX
    with torch.no_grad():
        dec.heads.bias[dec.latent_dim :] = -100.0
    assert dec.latent(*inputs())[1].min() == LOGVAR_MIN


def test_gaussian_closed_form_matches_samples():
    torch.manual_seed(0)
    dec = GaussianDecoder(F, 3, latent_dim=4, hidden=16).double()
    with torch.no_grad():
        dec.heads.weight.normal_(0, 0.5)
    h, t = inputs()
    mean, cov = dec(h.double(), t)
    assert mean.shape == (P, 3) and cov.shape == (P, 3, 3)
    assert torch.equal(cov, cov.transpose(1, 2))
    assert (torch.linalg.eigvalsh(cov) > -1e-12).all()
    # exactly A mu + b and A diag(sigma^2) A^T
    mu, logvar = dec.latent(h.double(), t)
    A, b = dec.output.weight, dec.output.bias
    assert torch.allclose(mean, mu @ A.T + b)
    assert torch.allclose(cov, A @ torch.diag_embed(logvar.exp()) @ A.T)
    # and the moments of A xi + b over many samples
    y = dec.sample(h.double(), t, 100000, generator=torch.Generator().manual_seed(0))
    assert y.shape == (P, 100000, 3)
    yc = y - y.mean(1, keepdim=True)
    emp_cov = yc.transpose(1, 2) @ yc / y.shape[1]
    scale = cov.diagonal(dim1=1, dim2=2).max().item()
    assert torch.allclose(y.mean(1), mean, atol=0.02 * scale**0.5)
    assert torch.allclose(emp_cov, cov, atol=0.03 * scale)


@pytest.mark.parametrize("cls", [SampledDecoder, GaussianDecoder])
def test_gradients_reach_every_parameter(cls):
    torch.manual_seed(0)
    dec = cls(F, C, latent_dim=4, hidden=8)
    h, t = inputs()
    h.requires_grad_(True)
    out = dec(h, t)
    loss = out.square().sum() if cls is SampledDecoder else out[0].sum() + out[1].sum()
    loss.backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_validation():
    with pytest.raises(ValueError, match="latent_dim"):
        SampledDecoder(F, C, latent_dim=0)
    with pytest.raises(ValueError, match="n_samples"):
        SampledDecoder(F, C, n_samples=0)
    with pytest.raises(ValueError, match="out_channels"):
        GaussianDecoder(F, 0)
    with pytest.raises(TypeError, match="hidden"):
        GaussianDecoder(F, C, hidden=8.0)
    with pytest.raises(TypeError, match="n_samples"):
        GaussianDecoder(F, C).sample(*inputs(), n_samples=2.0)
    dec = SampledDecoder(F, C)
    with pytest.raises(ValueError, match="h"):
        dec(torch.zeros(P, F + 1), torch.zeros(P, dtype=torch.long))
    with pytest.raises(ValueError, match="t"):
        dec(torch.zeros(P, F), torch.zeros(P + 1, dtype=torch.long))


@pytest.mark.parametrize("cls", [SampledDecoder, GaussianDecoder])
@pytest.mark.parametrize("key", ["in_features", "out_channels", "latent_dim", "hidden", "time_dim"])
@pytest.mark.parametrize(
    "value,error", [(np.int64(4), None), (np.int32(4), None), (True, TypeError), (4.0, TypeError)]
)
def test_dimensions_take_numpy_integers_not_bools_or_floats(cls, key, value, error):
    kwargs = {"in_features": F, "out_channels": C, key: value}
    if error is not None:
        with pytest.raises(error, match=key):
            cls(**kwargs)
        return
    dec = cls(**kwargs)
    assert all(type(getattr(dec, k)) is int for k in ("in_features", "latent_dim", "hidden"))
    h = torch.randn(5, dec.in_features)
    out = dec(h, torch.zeros(5, dtype=torch.long))
    assert (out if cls is SampledDecoder else out[0]).shape[-1] == dec.out_channels


def test_autocast_runs():
    dec = SampledDecoder(F, C)
    h, t = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dec(h, t)
        mean, cov = GaussianDecoder(F, C)(h, t)
    assert torch.isfinite(out.float()).all() and torch.isfinite(cov.float()).all()
