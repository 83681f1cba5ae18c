"""Samplers: the denoiser wrapper, exact references, the registry, and classifier-free guidance."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conprediff.diffusion import (
    SAMPLERS,
    STEPS,
    Denoiser,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    generate,
    get_sampler,
    guided,
    reverse_step,
    run_steps,
    sample_ddim,
    sample_dpmpp_2m,
    sample_loop,
    step_ddim,
    step_ddpm,
    step_dpmpp_2m,
    to_x0_eps,
    training_target,
)
from conprediff.schedules import NoiseSchedule

S = NoiseSchedule("cosine", 100)


def _net(seed):
    """A smooth toy network ``(x, t) -> out`` with a weight drawn from ``seed``."""
    w = torch.randn(1, generator=torch.Generator().manual_seed(seed)).item()

    def f(x, t):
        return torch.tanh(w * x) + 0.01 * t[:, None, None, None].float()

    return f


# ------------------------------------------------------------------------------ exact references
def _gaussian_problem(kind, prediction):
    """Data x0 ~ N(mu, s^2) per pixel: the exact network for ``prediction`` and the exact
    probability-flow map x_T -> x_0 on a T = 1000 ``kind`` schedule (float64)."""
    schedule = NoiseSchedule(kind, 1000)
    mu = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64).view(1, 1, 4, 4)
    s = torch.linspace(0.2, 1.5, 16, dtype=torch.float64).view(1, 1, 4, 4)

    def net(x, t):
        ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
        a = ab.sqrt()
        x0 = mu + a * s**2 * (x - a * mu) / (ab * s**2 + 1 - ab)  # E[x0 | x_t]
        eps = (x - a * x0) / (1 - ab).sqrt()  # E[eps | x_t]
        return training_target(x0, eps, t, schedule, prediction)

    def ode(x):
        # along the ODE, (x_t - a_t mu) / sqrt(a_t^2 s^2 + 1 - a_t^2) is constant
        ab = schedule.alpha_bar[-1]
        return mu + s * (x - ab.sqrt() * mu) / (ab * s**2 + 1 - ab).sqrt()

    return Denoiser(net, schedule, prediction, clip=None), ode


def _rms_error(sampler, denoiser, ode, steps, seed=0):
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = SAMPLERS[sampler](denoiser, x, ddim_timesteps(1000, steps))
    return (out - ode(x)).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_gaussian_data_both_solvers_converge_to_the_exact_ode_map(prediction):
    denoiser, ode = _gaussian_problem("cosine", prediction)
    ddim = [_rms_error("ddim", denoiser, ode, n) for n in (200, 500)]
    dpm = [_rms_error("dpmpp_2m", denoiser, ode, n) for n in (200, 500)]
    assert ddim[1] < 0.004 and ddim[1] < 0.5 * ddim[0]  # first order: error ~ 1 / steps
    assert dpm[0] < 1e-3 and dpm[1] < 5e-4
    assert dpm[0] < 0.1 * ddim[0] and dpm[1] < 0.1 * ddim[1]


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("steps", [10, 15, 20])
def test_dpm_solver_beats_ddim_at_few_steps(kind, steps):
    denoiser, ode = _gaussian_problem(kind, "eps")
    ddim = _rms_error("ddim", denoiser, ode, steps)
    dpm = _rms_error("dpmpp_2m", denoiser, ode, steps)
    assert dpm < 0.6 * ddim, (dpm, ddim)


def _k_diffusion_dpmpp_2m(denoiser, x, timesteps):
    """k-diffusion's ``sample_dpmpp_2m`` (variance exploding: x / alpha, sigma / alpha), with
    the first-order steps where ours takes them (no history, into t = 0, to t = -1)."""
    ab = denoiser.schedule.alpha_bar
    ts = [*timesteps, -1]
    sig = [math.sqrt((1 - ab[t]) / ab[t]) if t >= 0 else 0.0 for t in ts]
    y, old = x / ab[ts[0]].sqrt(), None
    for i in range(len(timesteps)):
        t = torch.full((x.shape[0],), ts[i])
        denoised, _ = denoiser(y * ab[ts[i]].sqrt(), t)
        if old is None or ts[i + 1] <= 0:
            y = denoised if sig[i + 1] == 0 else sig[i + 1] / sig[i] * y - math.expm1(
                -(math.log(sig[i]) - math.log(sig[i + 1]))) * denoised
        else:
            h = math.log(sig[i]) - math.log(sig[i + 1])
            r = (math.log(sig[i - 1]) - math.log(sig[i])) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            y = sig[i + 1] / sig[i] * y - math.expm1(-h) * d
        old = denoised
    return y


@given(seed=st.integers(0, 10_000), steps=st.integers(2, 100), pred=st.sampled_from(["eps", "v"]))
@settings(max_examples=30, deadline=None)
def test_dpm_solver_matches_k_diffusion_reference(seed, steps, pred):
    denoiser = Denoiser(_net(seed), S, pred, clip=None)
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ts = ddim_timesteps(100, steps)
    torch.testing.assert_close(
        sample_dpmpp_2m(denoiser, x, ts), _k_diffusion_dpmpp_2m(denoiser, x, ts),
        rtol=1e-9, atol=1e-9,
    )


@given(seed=st.integers(0, 10_000), t=st.integers(1, 99), data=st.data())
def test_first_dpm_solver_step_is_a_ddim_step(seed, t, data):
    t_prev = data.draw(st.integers(-1, t - 1))
    denoiser = Denoiser(_net(seed), S, data.draw(st.sampled_from(["eps", "v", "x0"])))
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    a, x0_a, state = step_dpmpp_2m(denoiser, x, t, t_prev)
    b, x0_b, _ = step_ddim(denoiser, x, t, t_prev)
    assert torch.equal(a, b) and torch.equal(x0_a, x0_b)
    assert state[1] == t and torch.equal(state[0], x0_a)


def test_dpm_solver_second_step_with_constant_denoiser_is_first_order():
    # D = x0 when the two estimates agree: the second-order step is then the DDIM step
    x0 = torch.full((1, 1, 2, 2), 0.3, dtype=torch.float64)
    denoiser = Denoiser(lambda x, t: x0.expand_as(x), S, "x0", clip=None)
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    a, _, _ = step_dpmpp_2m(denoiser, x, 60, 40, state=(x0, 80))
    b, _, _ = step_ddim(denoiser, x, 60, 40)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ bitwise with the old loops
def _old_sample_loop(denoise, shape, schedule, prediction, steps, sampler, eta, generator):
    """The loop ``sample_loop`` ran before the samplers (kept here as the reference)."""
    T = schedule.timesteps
    eta = 1.0 if sampler == "ddpm" else eta
    ts = ddim_timesteps(T, steps)
    x = torch.randn(shape, generator=generator)
    for i, t_int in enumerate(ts):
        t = torch.full((shape[0],), t_int, dtype=torch.long)
        out = denoise(x, t).float()
        if sampler == "ddpm" and steps == T:
            x = ddpm_step(out, x, t, schedule, prediction, torch.randn(shape, generator=generator))
        else:
            t_prev = torch.full_like(t, ts[i + 1] if i + 1 < len(ts) else -1)
            z = torch.randn(shape, generator=generator) if eta > 0 else None
            x = ddim_step(out, x, t, t_prev, schedule, prediction, eta, z)
    return x


@given(
    seed=st.integers(0, 10_000),
    steps=st.sampled_from([1, 2, 7, 40, 51, 60, 99, 100]),
    pred=st.sampled_from(["eps", "v", "x0"]),
    how=st.sampled_from([("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0), ("ddpm", 0.0)]),
)
@settings(max_examples=40, deadline=None)
def test_generate_and_sample_loop_are_bitwise_the_old_loop(seed, steps, pred, how):
    sampler, eta = how
    shape = (2, 1, 4, 4)
    ref = _old_sample_loop(_net(seed), shape, S, pred, steps, sampler, eta,
                           torch.Generator().manual_seed(seed))
    old_api = sample_loop(_net(seed), shape, S, pred, steps, sampler, eta,
                          torch.Generator().manual_seed(seed))
    new_api = generate(Denoiser(_net(seed), S, pred), shape, steps, sampler, eta=eta,
                       generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ref, old_api) and torch.equal(ref, new_api)


def test_ddpm_takes_the_posterior_form_on_the_full_chain_only():
    calls = []
    real = step_ddpm

    def spy(*args, posterior=False, **kw):
        calls.append(posterior)
        return real(*args, posterior=posterior, **kw)

    denoiser = Denoiser(_net(0), S)
    x = torch.zeros(1, 1, 2, 2)
    for ts, expected in ((list(range(99, -1, -1)), True), (ddim_timesteps(100, 60), False),
                         ([3, 2, 1, 0], False), ([0], False), (ddim_timesteps(100, 99), False)):
        calls.clear()
        step = reverse_step("ddpm", ts, S)
        run_steps(lambda *a, _s=step, **k: spy(*a, **{**_s.keywords, **k}), denoiser, x, ts)
        assert calls == [expected] * len(ts), ts
    with pytest.raises(ValueError, match="t_prev = t - 1"):
        step_ddpm(denoiser, x, 5, 3, posterior=True)


# ------------------------------------------------------------------------ denoiser and registry
@pytest.mark.parametrize("pred", ["eps", "v", "x0"])
def test_denoiser_is_to_x0_eps_on_the_network_output(pred):
    net = _net(3)
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 10, 50, 99])
    for clip in (None, (-1.0, 1.0), (-0.2, 0.1)):
        got = Denoiser(net, S, pred, clip)(x, t)
        ref = to_x0_eps(net(x, t).float(), x, t, S, pred, clip)
        assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
    x0, _ = Denoiser(net, S, pred, (-0.2, 0.1))(x, t)
    assert x0.min() >= -0.2 and x0.max() <= 0.1
    assert "Denoiser(" in repr(Denoiser(net, S, pred))
    with pytest.raises(ValueError, match="prediction"):
        Denoiser(net, S, "score")


def test_registry_names_and_errors():
    assert list(SAMPLERS) == ["ddim", "ddpm", "dpmpp_2m"] and set(STEPS) == set(SAMPLERS)
    for name, fn in SAMPLERS.items():
        assert get_sampler(name) is fn and fn.__doc__
    with pytest.raises(ValueError, match="'ddim', 'ddpm', 'dpmpp_2m'"):
        get_sampler("euler")
    with pytest.raises(TypeError, match="sampler"):
        get_sampler(None)
    d = Denoiser(_net(0), S)
    with pytest.raises(ValueError, match="eta"):
        generate(d, (1, 1, 2, 2), 5, "dpmpp_2m", eta=0.5)
    with pytest.raises(ValueError, match="eta"):
        generate(d, (1, 1, 2, 2), 5, "ddim", eta=-1.0)
    with pytest.raises(TypeError, match="eta"):
        sample_ddim(d, torch.zeros(1, 1, 2, 2), [3, 0], eta="1")
    with pytest.raises(ValueError, match="steps"):
        generate(d, (1, 1, 2, 2), 101)
    x = torch.zeros(1, 1, 2, 2)
    for bad in ([], [0, 3], [3, 3], [100, 0], [5, -1]):
        with pytest.raises(ValueError, match="timesteps"):
            sample_dpmpp_2m(d, x, bad)
    with pytest.raises(TypeError, match="timesteps"):
        sample_dpmpp_2m(d, x, [3.0, 1.0])
    # numpy integers and tensors are accepted as a grid
    a = sample_dpmpp_2m(d, x, np.array([50, 20, 0]))
    assert torch.equal(a, sample_dpmpp_2m(d, x, torch.tensor([50, 20, 0])))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_and_progress(name, capsys):
    infos = []
    d = Denoiser(_net(1), S)
    out = generate(d, (2, 1, 3, 3), 7, name, generator=torch.Generator().manual_seed(0),
                   progress=True, callback=infos.append)
    ts = ddim_timesteps(100, 7)
    assert [i["i"] for i in infos] == list(range(7)) and [i["t"] for i in infos] == ts
    assert [i["t_prev"] for i in infos] == [*ts[1:], -1]
    assert torch.equal(infos[-1]["x"], out) and infos[-1]["denoised"].shape == out.shape
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_reproducible_and_deterministic_where_expected(name):
    d = Denoiser(_net(2), S)

    def run(seed):
        return generate(d, (2, 1, 3, 3), 9, name, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(4), run(4)) and not torch.equal(run(4), run(5))
    x = torch.randn(2, 1, 3, 3)
    a = get_sampler(name)(d, x, [60, 30, 0], generator=torch.Generator().manual_seed(0))
    b = get_sampler(name)(d, x, [60, 30, 0], generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) == (name != "ddpm")  # only DDPM draws step noise


# ------------------------------------------------------------------------------------- guidance
class _LabelNet(torch.nn.Module):
    """``net(x, t[, labels]) -> (out, None)``, pointwise in the batch; records its calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, labels=None):
        self.calls.append(None if labels is None else labels.tolist())
        lab = 0.0 if labels is None else labels.float()[:, None, None, None] + 1
        return x * 0.5 + lab * x.pow(2) + 0.01 * t[:, None, None, None], None


def _inputs(b=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 1, 2, 2, generator=g), torch.tensor([5, 7, 9][:b])


def test_guidance_without_labels():
    net = _LabelNet()
    x, t = _inputs()
    assert torch.equal(guided(net, None, None, 3.0)(x, t), net(x, t)[0])  # unconditional
    assert net.calls[0] is None
    out = guided(net, None, 10, 3.0)(x, t)  # class-conditional: the null label, scale unused
    assert net.calls[-1] == [10, 10, 10] and torch.equal(out, net(x, t, torch.full((3,), 10))[0])


@pytest.mark.parametrize("scale, passes", [(1.0, [[1, 2, 0]]), (0.0, [[10, 10, 10]])])
def test_guidance_scale_one_and_zero_take_one_pass(scale, passes):
    net = _LabelNet()
    x, t = _inputs()
    out = guided(net, torch.tensor([1, 2, 0]), 10, scale)(x, t)
    assert net.calls == passes
    assert torch.equal(out, net(x, t, torch.tensor(passes[0]))[0])


@given(scale=st.floats(-3, 8, allow_nan=False).filter(lambda w: w not in (0.0, 1.0)))
def test_guidance_other_scales_mix_one_doubled_pass(scale):
    net = _LabelNet()
    x, t = _inputs()
    cond = torch.tensor([1, 2, 0])
    out = guided(net, cond, 10, scale)(x, t)
    assert net.calls == [[1, 2, 0, 10, 10, 10]]
    c, u = net(x, t, cond)[0], net(x, t, torch.full((3,), 10))[0]
    assert torch.equal(out, u + scale * (c - u))
