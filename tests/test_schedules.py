"""Schedule identities, checked as properties."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conprediff.schedules import NoiseSchedule, _gather, gather, make_betas

kinds = st.sampled_from(["linear", "cosine", "sigmoid"])
sizes = st.integers(min_value=2, max_value=2000)


@given(kind=kinds, T=sizes)
def test_alpha_bar_in_open_unit_interval_and_decreasing(kind, T):
    ab = NoiseSchedule(kind, T).alpha_bar
    assert ab.shape == (T,)
    assert torch.all(ab > 0) and torch.all(ab < 1)
    assert torch.all(ab[1:] < ab[:-1])


@given(kind=kinds, T=st.integers(2, 500), seed=st.integers(0, 2**31 - 1))
def test_posterior_mean_and_variance_match_closed_form(kind, T, seed):
    s = NoiseSchedule(kind, T)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, T, (5,), generator=g)
    x0 = torch.randn(5, 3, dtype=torch.float64, generator=g)
    xt = torch.randn(5, 3, dtype=torch.float64, generator=g)
    mean, var = s.posterior(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        beta = s.betas[ti].item()
        ab = math.prod(1 - b for b in s.betas[: ti + 1].tolist())
        ab_prev = math.prod(1 - b for b in s.betas[:ti].tolist())
        c0 = math.sqrt(ab_prev) * beta / (1 - ab)
        ct = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        torch.testing.assert_close(mean[i], c0 * x0[i] + ct * xt[i], rtol=1e-9, atol=1e-9)
        assert var[i].item() == pytest.approx(beta * (1 - ab_prev) / (1 - ab), rel=1e-9, abs=1e-15)


@given(kind=kinds, t=st.integers(0, 999))
def test_posterior_is_gaussian_product_of_forward_and_prior(kind, t):
    # q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): precision = 1/(1-ab_prev) + a/beta
    s = NoiseSchedule(kind, 1000)
    if t == 0:
        assert s.posterior_variance[0].item() == 0.0
        return
    beta, ab_prev = s.betas[t].item(), s.alpha_bar_prev[t].item()
    precision = 1 / (1 - ab_prev) + (1 - beta) / beta
    assert s.posterior_variance[t].item() == pytest.approx(1 / precision, rel=1e-9)


@given(kind=kinds, t=st.integers(0, 999), seed=st.integers(0, 1000))
def test_q_sample_moments(kind, t, seed):
    s = NoiseSchedule(kind, 1000)
    g = torch.Generator().manual_seed(seed)
    n = 20000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    xt = s.q_sample(x0, torch.full((n,), t), noise)
    ab = s.alpha_bar[t].item()
    # 5-sigma bounds of the sample mean and variance
    assert abs(xt.mean().item() - math.sqrt(ab) * 0.7) < 5 * math.sqrt((1 - ab) / n)
    assert abs(xt.var().item() - (1 - ab)) < 5 * (1 - ab) * math.sqrt(2 / n) + 1e-12


@given(kind=kinds, t=st.integers(0, 999), seed=st.integers(0, 1000))
def test_eps_x0_v_conversions_round_trip(kind, t, seed):
    s = NoiseSchedule(kind, 1000)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 4, dtype=torch.float64, generator=g)
    eps = torch.randn(3, 4, dtype=torch.float64, generator=g)
    tt = torch.full((3,), t)
    xt = s.q_sample(x0, tt, eps)
    v = s.velocity(x0, tt, eps)
    x0_v, eps_v = s.split_v(xt, tt, v)
    torch.testing.assert_close(x0_v, x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(eps_v, eps, rtol=1e-7, atol=1e-7)
    if s.alpha_bar[t] > 1e-4:  # x0 from eps divides by sqrt(alpha_bar)
        torch.testing.assert_close(s.predict_x0(xt, tt, eps), x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.predict_eps(xt, tt, x0), eps, rtol=1e-6, atol=1e-6)


def test_snr_is_alpha_bar_over_one_minus():
    s = NoiseSchedule("linear", 100)
    t = torch.tensor([0, 50, 99])
    ab = s.alpha_bar[t]
    torch.testing.assert_close(s.snr(t), ab / (1 - ab))


def test_cosine_matches_nichol_dhariwal_definition():
    T, s_ = 1000, 0.008
    f = [math.cos((k / T + s_) / (1 + s_) * math.pi / 2) ** 2 for k in range(T + 1)]
    expected = [min(1 - f[k + 1] / f[k], 0.999) for k in range(T)]
    torch.testing.assert_close(make_betas("cosine", T), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kind", "T", "error", "match"),
    [
        ("quadratic", 10, ValueError, "kind"),
        (None, 10, TypeError, "kind"),
        ("linear", 1, ValueError, "timesteps"),
        ("linear", 10.0, TypeError, "timesteps"),
        ("linear", True, TypeError, "timesteps"),
    ],
)
def test_bad_schedule_arguments(kind, T, error, match):
    with pytest.raises(error, match=match):
        make_betas(kind, T)


@pytest.mark.parametrize("T", [np.int64(10), np.int32(10)])
def test_numpy_timesteps_are_accepted(T):
    torch.testing.assert_close(make_betas("cosine", T), make_betas("cosine", 10), rtol=0, atol=0)
    assert NoiseSchedule("linear", T).alpha_bar.shape == (10,)


def test_gather_broadcasts_per_timestep_coefficients():
    table = torch.arange(10, dtype=torch.float64) / 10
    x = torch.zeros(3, 2, 4, 5, dtype=torch.float32)
    out = gather(table, torch.tensor([0, 4, 9]), x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([0.0, 0.4, 0.9])
    assert _gather is gather  # the former private name still works


def test_tables_follow_parameter_changes():
    s = NoiseSchedule("linear", 10)
    assert s.alpha_bar.shape == (10,)
    s.set_params(timesteps=20)
    assert s.alpha_bar.shape == (20,)
