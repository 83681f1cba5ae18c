"""Gaussian diffusion: losses and reverse steps."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conprediff.diffusion import (
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    diffusion_loss,
    min_snr_weight,
    sample_loop,
    to_x0_eps,
    training_target,
)
from conprediff.schedules import NoiseSchedule

S = NoiseSchedule("cosine", 100)


def _denoiser(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, generator=g).item()

    def f(x, t):
        return torch.tanh(w * x) + 0.01 * t[:, None, None, None].float()

    return f


@given(
    seed=st.integers(0, 10_000), steps=st.integers(1, 100), pred=st.sampled_from(["eps", "v", "x0"])
)
def test_ddim_eta0_is_deterministic(seed, steps, pred):
    shape = (2, 1, 4, 4)
    a = sample_loop(
        _denoiser(seed), shape, S, pred, steps, "ddim", 0.0, torch.Generator().manual_seed(seed)
    )
    b = sample_loop(
        _denoiser(seed), shape, S, pred, steps, "ddim", 0.0, torch.Generator().manual_seed(seed)
    )
    assert torch.equal(a, b)
    # the only randomness is the initial noise: a different start gives a different result
    c = sample_loop(
        _denoiser(seed), shape, S, pred, steps, "ddim", 0.0, torch.Generator().manual_seed(seed + 1)
    )
    assert not torch.equal(a, c)


@given(seed=st.integers(0, 10_000), t=st.integers(1, 99))
def test_ddim_eta0_step_with_oracle_eps_stays_on_the_forward_trajectory(seed, t):
    # with the true eps, a deterministic DDIM step lands exactly on sqrt(ab')x0 + sqrt(1-ab')eps
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64)
    tt = torch.full((2,), t)
    xt = S.q_sample(x0, tt, eps)
    prev = ddim_step(eps, xt, tt, tt - 1, S, "eps", eta=0.0)
    torch.testing.assert_close(prev, S.q_sample(x0, tt - 1, eps), rtol=1e-6, atol=1e-6)


def test_ddim_final_step_returns_x0_prediction():
    x0 = torch.rand(1, 1, 2, 2, dtype=torch.float64) - 0.5
    eps = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([10])
    xt = S.q_sample(x0, t, eps)
    out = ddim_step(eps, xt, t, torch.tensor([-1]), S, "eps", eta=0.0)
    torch.testing.assert_close(out, x0)


def test_ddpm_step_is_posterior_mean_plus_scaled_noise():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 2, 2, generator=g, dtype=torch.float64) - 0.5
    eps = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    z = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 70])
    xt = S.q_sample(x0, t, eps)
    mean, var = S.posterior(x0, xt, t)
    torch.testing.assert_close(ddpm_step(eps, xt, t, S, "eps", z), mean + var.sqrt() * z)
    # at t = 0 no noise is added: the result is the clean prediction's posterior mean
    torch.testing.assert_close(ddpm_step(eps, xt, t, S, "eps", z)[0], mean[0])


@pytest.mark.parametrize("pred", ["eps", "v", "x0"])
def test_to_x0_eps_inverts_each_parameterisation(pred):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 2, 2, generator=g, dtype=torch.float64) - 0.5
    eps = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 20, 50, 80])
    xt = S.q_sample(x0, t, eps)
    out = training_target(x0, eps, t, S, pred)
    x0_hat, eps_hat = to_x0_eps(out, xt, t, S, pred)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-6, atol=1e-6)


def test_loss_is_zero_for_perfect_prediction_and_mse_otherwise():
    x0 = torch.zeros(2, 1, 2, 2)
    eps = torch.ones(2, 1, 2, 2)
    t = torch.tensor([3, 4])
    assert torch.all(diffusion_loss(eps, x0, eps, t, S, "eps") == 0)
    torch.testing.assert_close(diffusion_loss(eps + 2, x0, eps, t, S, "eps"), torch.full((2,), 4.0))


def test_min_snr_weights():
    t = torch.tensor([0, 50, 99])
    snr = S.snr(t)
    torch.testing.assert_close(min_snr_weight(t, S, "eps", 5.0), (snr.clamp(max=5) / snr).float())
    torch.testing.assert_close(
        min_snr_weight(t, S, "v", 5.0), (snr.clamp(max=5) / (snr + 1)).float()
    )
    w = min_snr_weight(t, S, "x0", 5.0)
    assert w[0] == 5.0 and w[2] < 5.0


def test_ddim_timesteps():
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    ts = ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    assert len(set(ts)) == 50
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(10, 11)


def test_ddpm_full_and_respaced_run():
    a = sample_loop(
        _denoiser(0),
        (1, 1, 2, 2),
        S,
        "eps",
        100,
        "ddpm",
        generator=torch.Generator().manual_seed(0),
    )
    b = sample_loop(
        _denoiser(0), (1, 1, 2, 2), S, "eps", 10, "ddpm", generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    with pytest.raises(ValueError, match="sampler"):
        sample_loop(_denoiser(0), (1, 1, 2, 2), S, sampler="euler")
