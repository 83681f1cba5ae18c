"""Latent ConPreDiff: the autoencoder, and the estimator diffusing in its latents."""

import copy
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.exceptions import NotFittedError

from conprediff import ConPreDiffModel, ContextPrediction, UNet
from conprediff.autoencoders import Autoencoder, KLAutoencoder
from conprediff.data import load_digits_images
from conprediff.diffusion import SAMPLERS
from conprediff.inpainting import MASK_FAMILIES, make_mask
from conprediff.ranges import to_unit


def tiny_ae(**kw):
    params = dict(base_channels=8, latent_channels=2, downsampling_factor=2, max_steps=40,
                  batch_size=32, lr=2e-3, seed=0, verbose=0, device="cpu")
    params.update(kw)
    return KLAutoencoder(**params)


def tiny_model(ae, context=None, **kw):
    params = dict(backbone=UNet(base_channels=8, channel_mults=(1, 2)), context=context,
                  autoencoder=ae, timesteps=50, max_steps=4, batch_size=16, seed=0, verbose=0,
                  device="cpu")
    params.update(kw)
    return ConPreDiffModel(**params)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits_images(size=8)
    return x[:256], y[:256]


@pytest.fixture(scope="module")
def ae(digits):
    return tiny_ae().fit(digits[0])


@pytest.fixture(scope="module")
def pair(digits, ae):
    x = digits[0]
    return (tiny_model(ae, ContextPrediction(strides=(1,))).fit(x), tiny_model(ae).fit(x))


# ---------------------------------------------------------------------------- the autoencoder
@pytest.mark.parametrize("f", [4, 8])
def test_autoencoder_shapes(f):
    ae = KLAutoencoder(in_channels=3, latent_channels=4, downsampling_factor=f, base_channels=8)
    x = torch.rand(2, 3, 32, 16) * 2 - 1
    mean, logvar = ae.posterior(x)
    assert mean.shape == logvar.shape == (2, 4, 32 // f, 16 // f)
    assert ae.decode(mean).shape == (2, 3, 32, 16)
    assert len(ae.encoder.down) == (f.bit_length() - 1) * 2 + 1  # a block per level, a stride
    with pytest.raises(NotFittedError, match="not fitted"):
        ae.encode(x)
    with pytest.raises(ValueError, match="divisible by the downsampling_factor"):
        ae.posterior(torch.zeros(1, 3, 30, 16))


def test_reconstruction_error_falls_and_the_scaling_factor_whitens_held_out_latents():
    x = load_digits_images(size=8)[0]
    ae = tiny_ae(max_steps=80).fit(x[:1200])
    rec = ae.loss_history_["rec"]
    assert np.mean(rec[-10:]) < 0.5 * np.mean(rec[:10]), (rec[:10], rec[-10:])
    held_out = x[1200:]
    with torch.no_grad():
        z = ae.encode(to_unit(held_out, ae.data_range_)) * ae.scaling_factor
    assert 0.85 < float(z.std()) < 1.15
    err = ae.evaluate(held_out)  # well below the error of the mean image
    assert err["mse"] < 0.5 * float((held_out - x[:1200].mean(0)).pow(2).mean()), err
    assert ae.reconstruct(x[0]).shape == x[0].shape


def test_autoencoder_file_round_trip_and_refusals(ae, digits, tmp_path):
    path = ae.save(tmp_path / "ae.safetensors")
    back = KLAutoencoder.load(path)
    torch.testing.assert_close(back.reconstruct(digits[0][:4]), ae.reconstruct(digits[0][:4]),
                               rtol=0, atol=0)
    assert back.scaling_factor == ae.scaling_factor and back.data_range_ == ae.data_range_
    assert back.get_params() == ae.get_params()
    assert isinstance(back, Autoencoder)  # the protocol's members, fitted
    with pytest.raises(NotFittedError):
        KLAutoencoder().save(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not written by an autoencoder"):
        KLAutoencoder.load(tiny_model(ae).fit(digits[0][:32]).save(tmp_path / "m.safetensors"))


def test_autoencoder_arguments_are_checked():
    with pytest.raises(ValueError, match="downsampling_factor must be a power of 2"):
        KLAutoencoder(downsampling_factor=3)
    with pytest.raises(ValueError, match="channel_mults needs"):
        KLAutoencoder(downsampling_factor=4, channel_mults=(1, 2))
    with pytest.raises(TypeError, match="latent_channels"):
        KLAutoencoder(latent_channels=2.5)
    with pytest.raises(ValueError, match="in_channels=3 does not match the data's 1"):
        KLAutoencoder(in_channels=3, max_steps=1, verbose=0).fit(torch.rand(4, 1, 8, 8))


# ---------------------------------------------------------------------------- the latent model
def test_latent_fit_sample_inpaint_save_load_round_trip(pair, digits, tmp_path):
    model, _ = pair
    x = digits[0]
    assert model.backbone_.in_channels == 2 and model.image_shape_ == (1, 8, 8)
    samples = model.sample(3, steps=5, seed=1)
    assert samples.shape == (3, 1, 8, 8)
    lo, hi = model.data_range_
    assert float(samples.min()) >= lo and float(samples.max()) <= hi
    mask = make_mask("half", 8, 8, seed=0)
    filled = model.inpaint(x[:2], mask, steps=6, seed=2)
    back = ConPreDiffModel.load(model.save(tmp_path / "m.safetensors"), device="cpu")
    assert back.autoencoder_.scaling_factor == model.autoencoder_.scaling_factor
    torch.testing.assert_close(back.sample(3, steps=5, seed=1), samples, rtol=0, atol=0)
    torch.testing.assert_close(back.inpaint(x[:2], mask, steps=6, seed=2), filled, rtol=0,
                               atol=0)
    lean = model.save(tmp_path / "lean.safetensors", include_decoder=False)
    with safe_open(str(lean), "pt") as f:
        keys = list(f.keys())  # noqa: SIM118
    assert any(k.startswith("autoencoder.") for k in keys)
    assert not any(k.startswith("context.") for k in keys)
    lean_model = ConPreDiffModel.load(lean, device="cpu")
    assert lean_model.context_head_ is None
    torch.testing.assert_close(lean_model.sample(3, steps=5, seed=1), samples, rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(MASK_FAMILIES))
def test_known_pixels_are_exact_after_latent_inpainting(pair, digits, family):
    model, _ = pair
    img = digits[0][:2]
    mask = make_mask(family, 8, 8, seed=3)
    out = model.inpaint(img, mask, steps=4, jump_length=2, jump_n_sample=2, seed=0)
    known = ~mask.expand_as(img)
    assert torch.equal(out[known], img[known])
    # what lies under the mask does not matter
    noisy = torch.where(mask.expand_as(img), torch.rand_like(img), img)
    again = model.inpaint(noisy, mask, steps=4, jump_length=2, jump_n_sample=2, seed=0)
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_latent_mask_marks_every_latent_that_sees_a_missing_pixel(pair):
    space = pair[0]._space()
    missing = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    missing[0, 0, 3, 5] = True  # one pixel, in latent cell (1, 2) with f = 2
    cells = space.point_mask(missing)
    assert cells.shape == (1, 2, 4, 4)
    assert cells.sum() == 2 and bool(cells[0, :, 1, 2].all())


def test_context_model_and_baseline_with_the_same_weights_sample_identically(pair, digits):
    ctx, base = pair

    def boom(*args, **kwargs):
        raise AssertionError("the context decoder ran at sampling")

    ctx.context_head_.forward = boom
    twin = copy.deepcopy(base)
    twin.backbone_.load_state_dict(ctx.backbone_.state_dict())
    twin.ema_backbone_.load_state_dict(ctx.ema_backbone_.state_dict())
    for sampler in sorted(SAMPLERS):
        torch.testing.assert_close(ctx.sample(3, steps=4, seed=1, sampler=sampler),
                                   twin.sample(3, steps=4, seed=1, sampler=sampler),
                                   rtol=0, atol=0)
    mask = make_mask("wide", 8, 8, seed=0)
    torch.testing.assert_close(ctx.inpaint(digits[0][:1], mask, steps=4, seed=2),
                               twin.inpaint(digits[0][:1], mask, steps=4, seed=2), rtol=0, atol=0)
    del ctx.context_head_.forward


def test_class_labels_and_guidance_work_on_latents(digits, ae):
    x, y = digits
    m = tiny_model(ae, backbone=UNet(base_channels=8, channel_mults=(1, 2), num_classes=10),
                   label_dropout=0.2).fit(x, y)
    s = m.sample(4, steps=4, seed=0, labels=[1, 2, 3, 4], guidance_scale=2.0, sampler="dpmpp_2m")
    assert s.shape == (4, 1, 8, 8)
    out = m.inpaint(x[:1], make_mask("narrow", 8, 8, seed=1), steps=4, labels=3, seed=0)
    assert out.shape == (1, 1, 8, 8)


def test_training_the_latent_model_encodes_the_data_once(digits, ae, monkeypatch):
    calls = []
    original = KLAutoencoder.encode

    def counting(self, x):
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(KLAutoencoder, "encode", counting)
    tiny_model(ae, max_steps=24).fit(digits[0][:128])  # three epochs of 8 batches
    assert sum(calls) == 128  # each image once, before the first step


def test_resume_continues_a_latent_run_exactly_and_refuses_another_autoencoder(digits, ae,
                                                                             tmp_path):
    x = digits[0][:64]
    whole = tiny_model(ae, max_steps=6).fit(x)
    part = tiny_model(ae, max_steps=3, checkpoint_dir=tmp_path, checkpoint_every=3).fit(x)
    assert part.n_steps_ == 3
    resumed = tiny_model(ae, max_steps=6, checkpoint_dir=tmp_path).fit(x, resume="latest")
    for p, q in zip(resumed.backbone_.parameters(), whole.backbone_.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    other = tiny_ae(seed=1, max_steps=5).fit(x)
    with pytest.raises(ValueError, match="another autoencoder"):
        tiny_model(other, max_steps=6, checkpoint_dir=tmp_path).fit(x, resume="latest")


# ---------------------------------------------------------------------------- bad input
def test_an_unfitted_autoencoder_is_fitted_first_with_a_warning_and_left_untouched(digits):
    given = tiny_ae(max_steps=5, seed=None)
    with pytest.warns(UserWarning, match="autoencoder is not fitted: fitting it"):
        m = tiny_model(given, max_steps=2).fit(digits[0][:64])
    assert m.autoencoder_.is_fitted and not given.is_fitted and given.encoder is None


def test_bad_latent_input_gets_errors_that_name_the_argument(digits, ae, pair):
    x = digits[0]

    class NoFit(torch.nn.Module):
        latent_channels, downsampling_factor, is_fitted = 2, 2, False

        def encode(self, x):
            return x

        def decode(self, z):
            return z

    with pytest.raises(ValueError, match="autoencoder is not fitted"):
        tiny_model(NoFit()).fit(x)
    with pytest.raises(TypeError, match="autoencoder must follow"):
        tiny_model(object()).fit(x)
    with pytest.raises(ValueError, match="downsampling_factor=2"):
        tiny_model(ae).fit(torch.rand(8, 1, 9, 9))
    with pytest.raises(ValueError, match="latent_channels=2"):
        tiny_model(ae, backbone=UNet(in_channels=1, base_channels=8)).fit(x)
    with pytest.raises(ValueError, match="differs from the autoencoder's data_range_"):
        tiny_model(ae, data_range=(0, 255)).fit(x)
    with pytest.raises(ValueError, match="mask"):
        pair[0].inpaint(x[:1], torch.zeros(4, 4, dtype=torch.bool), steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ae.is_fitted  # the fitted one passed to every model above is unchanged


def test_the_evaluation_features_train_on_the_colour_photo_crops(tmp_path):
    from conprediff.data import PHOTOS, load_photo_crops
    from conprediff.evaluation import FeatureExtractor

    x, y = load_photo_crops(size=16, n_per_photo=60, scale=64)
    ext = FeatureExtractor(cache_dir=tmp_path, epochs=6, width=8, device="cpu").fit(x, y)
    assert ext.extract(x[:10]).shape == (10, 128)
    assert ext.test_accuracy_ > 3 / len(PHOTOS), ext.test_accuracy_  # chance is 1/7


def test_latent_sampling_clamps_to_the_training_latents_and_stays_finite(pair, digits):
    """An epsilon model's clean-latent estimate at the cosine schedule's last timestep is its
    error times sqrt(1 - alpha_bar_T) / sqrt(alpha_bar_T) (about 2e4): unclamped, sampling a
    trained latent model diverged; the latent model clamps to the largest |latent| it was
    trained on, as pixel models clamp to [-1, 1]."""
    from conprediff.diffusion import Denoiser
    from conprediff.schedules import NoiseSchedule

    model = pair[0]
    space = model._space()
    bound = float(space.encode(digits[0]).abs().max())
    assert space.clip == pytest.approx((-bound, bound), rel=1e-6)
    assert model.latent_bound_ == pytest.approx(bound, rel=1e-6)
    schedule = NoiseSchedule("cosine", 1000)

    def slightly_wrong(x, t):  # the exact noise of x_t = sqrt(1 - ab) eps for data at 0, + 1 %
        ab = schedule.alpha_bar.to(x)[t][:, None, None, None]
        return x / (1 - ab).sqrt() + 0.01

    x_T = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 999)
    free = Denoiser(slightly_wrong, schedule, clip=None)(x_T, t)[0]
    clamped = Denoiser(slightly_wrong, schedule, clip=space.clip)(x_T, t)[0]
    assert float(free.abs().min()) > 10 * bound  # the estimate the clamp keeps in range
    assert float(clamped.abs().max()) <= bound + 1e-5
    samples = model.sample(8, steps=50, seed=0)  # the full grid, from t = 999
    assert bool(torch.isfinite(samples).all())
