"""ConPreDiffModel with context prediction: both loss terms logged, decoder dropped at inference."""

import copy

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conprediff import ConPreDiffModel, ContextPrediction, UNet
from conprediff.data import load_digits_images


def make(context, **kw):
    params = dict(
        backbone=UNet(base_channels=8, channel_mults=(1, 2)),
        context=context,
        timesteps=50,
        max_steps=4,
        batch_size=8,
        seed=0,
        verbose=0,
        device="cpu",
    )
    params.update(kw)
    return ConPreDiffModel(**params)


@pytest.fixture(scope="module")
def images():
    return load_digits_images(size=8)[0][:64]


@pytest.fixture(scope="module")
def pair(images):
    ctx = make(ContextPrediction(strides=(1, 2))).fit(images)
    base = make(None).fit(images)
    return ctx, base


def test_history_records_point_and_context_terms(pair):
    ctx, base = pair
    assert set(ctx.loss_history_) >= {"loss", "point", "context", "w2"}
    h = ctx.loss_history_
    np.testing.assert_allclose(np.add(h["point"], h["context"]), h["loss"], rtol=1e-5)
    assert "context" not in base.loss_history_ and "w2" not in base.loss_history_


def test_same_seed_same_backbone_init_and_batches(images):
    # zero learning rate: nothing moves, so both arms must hold the identical initial backbone
    a = make(ContextPrediction(), lr=1e-12, ema_decay=None).fit(images)
    b = make(None, lr=1e-12, ema_decay=None).fit(images)
    for p, q in zip(a.backbone_.parameters(), b.backbone_.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-9)
    # the point-wise losses see the same batches, timesteps and noise
    np.testing.assert_allclose(a.loss_history_["point"], b.loss_history_["point"], rtol=1e-5)


def test_sampling_never_runs_the_decoder_and_matches_a_baseline_with_the_same_weights(pair):
    ctx, base = pair

    def boom(*args, **kwargs):
        raise AssertionError("the context decoder ran at inference")

    ctx.context_head_.forward = boom
    twin = copy.deepcopy(base)
    twin.backbone_.load_state_dict(ctx.backbone_.state_dict())
    twin.ema_backbone_.load_state_dict(ctx.ema_backbone_.state_dict())
    torch.testing.assert_close(
        ctx.sample(4, steps=5, seed=1), twin.sample(4, steps=5, seed=1), rtol=0, atol=0
    )
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, 4:] = True
    img = ctx.sample(1, steps=2, seed=0)[0]
    torch.testing.assert_close(
        ctx.inpaint(img, mask, steps=5, seed=2),
        twin.inpaint(img, mask, steps=5, seed=2),
        rtol=0,
        atol=0,
    )
    del ctx.context_head_.forward


def test_save_with_and_without_decoder(pair, tmp_path):
    ctx, _ = pair
    full = ctx.save(tmp_path / "full.safetensors")
    lean = ctx.save(tmp_path / "lean.safetensors", include_decoder=False)
    with safe_open(str(full), "pt") as f:
        assert any(k.startswith("context.") for k in f.keys())  # noqa: SIM118
    with safe_open(str(lean), "pt") as f:
        assert not any(k.startswith("context.") for k in f.keys())  # noqa: SIM118
    assert lean.stat().st_size < full.stat().st_size
    a, b = ConPreDiffModel.load(full), ConPreDiffModel.load(lean)
    assert a.context_head_ is not None and b.context_head_ is None
    for key, value in ctx.context_head_.state_dict().items():
        assert torch.equal(a.context_head_.state_dict()[key], value)
    assert torch.equal(a.sample(3, steps=4, seed=5), b.sample(3, steps=4, seed=5))
    assert torch.equal(b.sample(3, steps=4, seed=5), ctx.sample(3, steps=4, seed=5))
    assert b.get_params()["context__strides"] == (1, 2)


def test_a_file_saved_after_changing_the_context_loads_with_the_fitted_one(images, tmp_path):
    m = make(ContextPrediction(hidden=16), max_steps=1).fit(images)
    m.set_params(context__hidden=32, context__decoder="gaussian")
    loaded = ConPreDiffModel.load(m.save(tmp_path / "m.safetensors"))
    assert loaded.context.hidden == 16 and loaded.context.decoder == "sampled"
    assert m.context_.hidden == 16 and loaded.context_.hidden == 16
    for key, value in m.context_head_.state_dict().items():
        assert torch.equal(loaded.context_head_.state_dict()[key], value)


def test_a_file_whose_decoder_does_not_match_its_settings_loads_without_it(images, tmp_path):
    # what save wrote before it stored the fitted context: the current settings, the old weights
    m = make(ContextPrediction(hidden=16), max_steps=1).fit(images)
    m.context_ = ContextPrediction(hidden=32)
    path = m.save(tmp_path / "old.safetensors")
    with pytest.warns(UserWarning, match="loaded without the decoder"):
        loaded = ConPreDiffModel.load(path)
    assert loaded.context_head_ is None
    assert torch.equal(loaded.sample(2, steps=3, seed=0), m.sample(2, steps=3, seed=0))


def test_context_training_drives_the_w2_term_down(images):
    m = make(ContextPrediction(strides=(1, 2)), max_steps=150, lr=3e-3, batch_size=32).fit(images)
    w2 = np.asarray(m.loss_history_["w2"])
    assert w2[-20:].mean() < 0.7 * w2[:20].mean()  # measured: 0.54 -> 0.30


def test_nested_context_params_reach_the_model():
    m = make(ContextPrediction(weight=0.3))
    assert m.get_params()["context__weight"] == 0.3
    m.set_params(context__strides=(1, 2, 3), context__decoder="gaussian")
    assert m.context.strides == (1, 2, 3) and m.context.decoder == "gaussian"
