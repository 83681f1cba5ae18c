"""RePaint: the jump schedule, the forward jump, and the resampling loop."""

import numpy as np
import pytest
import torch

from conprediff.inpainting import (
    MASK_FAMILIES,
    forward_jump,
    make_mask,
    merge_known,
    repaint,
    repaint_schedule,
)
from conprediff.schedules import NoiseSchedule

S = NoiseSchedule("cosine", 100)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: a second intra-op thread only adds contention on busy shared cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------ jump schedule


def test_schedule_small_case_by_hand():
    # t_T=10, j=2, r=2: jump points range(0, 8, 2) = {0, 2, 4, 6}, each climbed once.
    expected = [9, 8, 7, 6, 7, 8, 7, 6, 5, 4, 5, 6, 5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    times = repaint_schedule(10, 2, 2)
    assert times == expected
    d = np.diff(times)
    assert len(times) == 27  # 10 + 1 + 2 * (4 jumps * 2 steps)
    assert (d > 0).sum() == 8 and (d < 0).sum() == 18
    assert set(np.abs(d)) == {1}
    assert times[0] == 9 and times[-1] == -1


def test_schedule_no_jumps_is_plain_descent():
    assert repaint_schedule(10, 2, 1) == list(range(9, -2, -1))
    assert repaint_schedule(10, 10, 5) == list(range(9, -2, -1))  # range(0, 0, 10) is empty
    assert repaint_schedule(1, 1, 1) == [0, -1]


@pytest.mark.parametrize(
    "t_T, j, r, n_forward",
    [
        (10, 3, 3, 3 * 2 * 3),  # jump points {0, 3, 6}, twice each, 3 steps up
        (7, 2, 3, 3 * 2 * 2),  # {0, 2, 4}
        (250, 10, 10, 24 * 9 * 10),  # RePaint's defaults: {0, ..., 230}
        (20, 1, 4, 19 * 3 * 1),  # {0, ..., 18}
    ],
)
def test_schedule_counts(t_T, j, r, n_forward):
    times = repaint_schedule(t_T, j, r)
    d = np.diff(times)
    assert (d > 0).sum() == n_forward
    assert (d < 0).sum() == t_T + n_forward
    assert len(times) == t_T + 1 + 2 * n_forward
    assert times[0] == t_T - 1 and times[-1] == -1
    assert min(times) == -1 and max(times) == t_T - 1
    assert set(np.abs(d)) == {1}


@pytest.mark.parametrize("args", [(0, 1, 1), (5, 0, 1), (5, 1, 0)])
def test_schedule_rejects_bad_values(args):
    with pytest.raises(ValueError):
        repaint_schedule(*args)


@pytest.mark.parametrize("args", [(5.0, 1, 1), (5, 1, True), (5, "2", 1)])
def test_schedule_rejects_bad_types(args):
    with pytest.raises(TypeError):
        repaint_schedule(*args)


def test_schedule_accepts_numpy_integers():
    assert repaint_schedule(np.int64(6), np.int32(2), np.int16(2)) == repaint_schedule(6, 2, 2)


# ------------------------------------------------------------------------------- step pieces


def test_forward_jump_moments_and_composition():
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 1, 200, 200), 0.7)
    t, t2, t3 = (torch.tensor([k]) for k in (20, 21, 35))
    ab = S.alpha_bar
    one = forward_jump(x, t, t2, S, torch.randn(x.shape, generator=g))
    assert abs(one.mean() - (1 - S.betas[21]).sqrt() * 0.7) < 0.01
    assert abs(one.var() - S.betas[21]) / S.betas[21] < 0.05
    direct = forward_jump(x, t, t3, S, torch.randn(x.shape, generator=g))
    chained = x
    for k in range(20, 35):
        chained = forward_jump(
            chained, torch.tensor([k]), torch.tensor([k + 1]), S, torch.randn(x.shape, generator=g)
        )
    ratio = ab[35] / ab[20]
    for y in (direct, chained):
        assert abs(y.mean() - ratio.sqrt() * 0.7) < 0.01
        assert abs(y.var() - (1 - ratio)) < 0.01
    # from x_0 (t = -1) it is q_sample
    z = torch.randn(x.shape, generator=g)
    assert torch.allclose(
        forward_jump(x, torch.tensor([-1]), t3, S, z), S.q_sample(x, t3, z), atol=1e-6
    )


def test_merge_known():
    x, image, noise = torch.randn(3, 2, 1, 4, 4).unbind(0)
    mask = torch.rand(1, 1, 4, 4) > 0.5
    t = torch.tensor([30, 30])
    out = merge_known(x, image, mask, t, S, noise)
    assert torch.equal(out[:, :, mask[0, 0]], x[:, :, mask[0, 0]])
    known = S.q_sample(image, t, noise)
    assert torch.equal(out[:, :, ~mask[0, 0]], known[:, :, ~mask[0, 0]])
    final = merge_known(x, image, mask, torch.tensor([-1, -1]), S, None)
    assert torch.equal(final, torch.where(mask, x, image))


# ------------------------------------------------------------------------------------ repaint


def _zeros(x, t):
    return torch.zeros_like(x)


def _image(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


FAST = dict(steps=10, jump_length=3, jump_n_sample=2)


@pytest.mark.parametrize("family", sorted(MASK_FAMILIES))
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_known_pixels_are_exact(family, batch, sampler):
    image = _image((batch, 3, 16, 12), seed=batch)
    mask = make_mask(family, 16, 12, seed=4)
    out = repaint(
        _zeros,
        image,
        mask,
        S,
        "eps",
        sampler=sampler,
        generator=torch.Generator().manual_seed(1),
        **FAST,
    )
    assert out.shape == image.shape and out.dtype == image.dtype
    assert torch.isfinite(out).all()
    known = ~mask.expand_as(image)
    assert (out[known] - image[known]).abs().max() == 0
    assert not torch.equal(out[~known], image[~known])


def test_known_pixels_exact_with_per_sample_float64_and_numeric_masks():
    image = _image((2, 1, 8, 8)).double()
    masks = torch.stack([make_mask("wide", 8, 8, 0), make_mask("narrow", 8, 8, 1)])[:, None]
    out = repaint(
        _zeros, image, masks.float(), S, "v", generator=torch.Generator().manual_seed(0), **FAST
    )
    assert out.dtype == torch.float64
    assert torch.equal(out[~masks.expand_as(image)], image[~masks.expand_as(image)])


def test_full_chain_ddpm_and_jumps():
    image = _image((1, 1, 8, 8))
    mask = make_mask("half", 8, 8)
    schedule = NoiseSchedule("linear", 20)
    out = repaint(
        _zeros,
        image,
        mask,
        schedule,
        steps=20,
        jump_length=5,
        jump_n_sample=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :, ~mask], image[:, :, ~mask])


def test_seed_reproducible():
    image = _image((2, 1, 8, 8))
    mask = make_mask("expand", 8, 8)

    def run(seed):
        return repaint(
            _zeros, image, mask, S, generator=torch.Generator().manual_seed(seed), **FAST
        )

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_denoiser_calls_follow_the_schedule():
    calls = []

    def f(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    image = _image((1, 1, 4, 4))
    repaint(
        f,
        image,
        make_mask("half", 4, 4),
        S,
        steps=10,
        jump_length=3,
        jump_n_sample=3,
        generator=torch.Generator().manual_seed(0),
    )
    times = repaint_schedule(10, 3, 3)
    grid = [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]  # ddim_timesteps(100, 10), ascending
    expected = [grid[a] for a, b in zip(times[:-1], times[1:], strict=True) if b < a]
    assert calls == expected


def test_all_known_returns_input_without_model_calls():
    image = _image((2, 3, 8, 8))

    def boom(x, t):
        raise AssertionError("denoise must not be called")

    out = repaint(boom, image, torch.zeros(8, 8, dtype=torch.bool), S, **FAST)
    assert torch.equal(out, image) and out.data_ptr() != image.data_ptr()


def _mixture_oracle(points, schedule):
    """Exact E[x_0 | x_t] for data uniform over ``points`` ``(K, C, H, W)``, as an x0-prediction."""

    def f(x, t):
        ab = schedule.alpha_bar[t].float().view(-1, 1, 1, 1, 1)
        d2 = (x[:, None] - ab.sqrt() * points[None]).pow(2).flatten(2).sum(-1)
        w = torch.softmax(-d2 / (2 * (1 - ab.view(-1, 1))), dim=1)
        return torch.einsum("bk,kchw->bchw", w, points)

    return f


def test_oracle_x0_denoiser_recovers_the_image():
    image = _image((2, 1, 8, 8), seed=5)

    def oracle(x, t):
        return image

    for family in MASK_FAMILIES:
        mask = make_mask(family, 8, 8, seed=2)
        out = repaint(
            oracle, image, mask, S, "x0", generator=torch.Generator().manual_seed(0), **FAST
        )
        assert (out - image).abs().max() < 1e-4, family


def _points():
    """6 random +-0.8 images of 1 x 8 x 8: a toy data set whose exact denoiser is known."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 2, (6, 1, 8, 8), generator=g) * 1.6 - 0.8


def _success_rate(points, mask, **kw):
    """Fraction of 48 completions (each of the 6 images 8 times) equal to their image."""
    image = points.repeat(8, 1, 1, 1)
    out = repaint(
        _mixture_oracle(points, S),
        image,
        mask,
        S,
        "x0",
        steps=20,
        jump_length=4,
        generator=torch.Generator().manual_seed(0),
        **kw,
    )
    assert torch.equal(out[:, :, ~mask], image[:, :, ~mask])
    return ((out - image).abs().flatten(1).amax(1) < 1e-3).float().mean().item()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize("jump_n_sample, at_least", [(1, 0.8), (10, 0.95)])
def test_mixture_oracle_completes_a_half_with_the_right_image(sampler, jump_n_sample, at_least):
    # the known half identifies the image among the 6, so the missing half must be its pixels
    for side in ("left", "right", "top", "bottom"):
        mask = make_mask("half", 8, 8, side=side)
        rate = _success_rate(_points(), mask, jump_n_sample=jump_n_sample, sampler=sampler)
        assert rate >= at_least, (side, rate)


@pytest.mark.parametrize(
    "family, plain, resampled", [("super_resolve", 0.6, 0.75), ("wide", 0.9, 0.95)]
)
def test_resampling_harmonises_better_than_plain_replacement(family, plain, resampled):
    # With sparse known pixels, plain replacement often commits to an image that contradicts
    # them (RePaint, Sec. 4.2); resampling fixes most of those. Rates over 48 completions.
    mask = make_mask(family, 8, 8, seed=0)
    rates = [_success_rate(_points(), mask, jump_n_sample=r) for r in (1, 10)]
    assert rates[0] < plain and rates[1] > resampled and rates[1] > rates[0] + 0.1, rates


def test_validation_errors():
    image = _image((1, 1, 4, 4))
    mask = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="sampler"):
        repaint(_zeros, image, mask, S, sampler="euler", **FAST)
    with pytest.raises(TypeError, match="sampler"):
        repaint(_zeros, image, mask, S, sampler=None, **FAST)
    with pytest.raises(ValueError, match="prediction"):
        repaint(_zeros, image, mask, S, prediction="score", **FAST)
    with pytest.raises(ValueError, match="steps"):
        repaint(_zeros, image, mask, S, steps=101)
    with pytest.raises(ValueError, match="image"):
        repaint(_zeros, image[0], mask, S, **FAST)
    with pytest.raises(ValueError, match="mask"):
        repaint(_zeros, image, torch.ones(5, 4, dtype=torch.bool), S, **FAST)


def test_progress_bar_runs(capsys):
    out = repaint(
        _zeros,
        _image((1, 1, 4, 4)),
        make_mask("half", 4, 4),
        S,
        progress=True,
        generator=torch.Generator().manual_seed(0),
        **FAST,
    )
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------ built from the samplers' steps


def _tanh(x, t):
    return torch.tanh(0.7 * x) + 0.001 * t[:, None, None, None].float()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_all_missing_without_jumps_is_the_plain_sampler(sampler):
    # merge_known draws noise but changes nothing when every pixel is missing; the deterministic
    # samplers use no noise after the first draw, so RePaint is the sampler itself, bitwise
    from conprediff.diffusion import SAMPLERS, Denoiser, ddim_timesteps

    shape = (2, 1, 4, 4)
    out = repaint(_tanh, _image(shape), torch.ones(4, 4, dtype=torch.bool), S, steps=12,
                  jump_n_sample=1, sampler=sampler, generator=torch.Generator().manual_seed(3))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    ref = SAMPLERS[sampler](Denoiser(_tanh, S), x, ddim_timesteps(100, 12))
    assert torch.equal(out, ref)


def test_multistep_history_is_reset_after_every_jump(monkeypatch):
    import importlib

    # the module, which the package's function of the same name hides from attribute access
    module = importlib.import_module("conprediff.inpainting.repaint")

    seen = []
    real = module.reverse_step

    def spy(*args, **kw):
        step = real(*args, **kw)

        def wrapped(denoiser, x, t, t_prev, *, generator=None, state=None):
            seen.append((t, state is None))
            return step(denoiser, x, t, t_prev, generator=generator, state=state)

        return wrapped

    monkeypatch.setattr(module, "reverse_step", spy)
    repaint(_tanh, _image((1, 1, 4, 4)), make_mask("half", 4, 4), S, steps=10, jump_length=3,
            jump_n_sample=2, sampler="dpmpp_2m", generator=torch.Generator().manual_seed(0))
    times = repaint_schedule(10, 3, 2)
    grid = [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    fresh, previous_up = [], True  # the first step starts without history
    for a, b in zip(times[:-1], times[1:], strict=True):
        if b > a:
            previous_up = True
        else:
            fresh.append((grid[a], previous_up))
            previous_up = False
    assert seen == fresh
    assert sum(f for _, f in seen) == 1 + len(range(0, 10 - 3, 3))  # the start and each jump
