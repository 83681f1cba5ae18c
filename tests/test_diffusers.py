"""diffusers interop (extra [diffusers]): UNets as backbones, AutoencoderKL in latent models,
export to diffusers pipelines, import to fine-tune, their schedulers in our sampling."""

from __future__ import annotations

import pytest
import torch
from sklearn.base import clone

diffusers = pytest.importorskip("diffusers")

from conprediff import ConPreDiffModel, ContextPrediction  # noqa: E402
from conprediff.interop import (  # noqa: E402
    DiffusersAutoencoder,
    DiffusersUNet,
    FeatureTap,
    from_diffusers,
    scheduler_config,
)
from conprediff.text import TextTransformer  # noqa: E402

UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
            norm_num_groups=8, layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"))
SMALL = dict(timesteps=20, batch_size=16, verbose=0, seed=0, device="cpu")


def images(n: int = 48, c: int = 1, side: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, side, side, generator=g)


@pytest.fixture(scope="module")
def fitted() -> ConPreDiffModel:
    net = DiffusersUNet(diffusers.UNet2DModel(**UNET).config)
    return ConPreDiffModel(backbone=net, context=ContextPrediction(), max_steps=3,
                           **SMALL).fit(images())


def test_adapter_follows_the_protocol():
    net = DiffusersUNet(diffusers.UNet2DModel(**UNET).config)
    pred, feats = net(torch.randn(3, 1, 8, 8), torch.tensor([0, 7, 19]))
    assert pred.shape == (3, 1, 8, 8)
    assert feats.shape == (3, net.feature_channels, 8, 8) == (3, 16, 8, 8)
    assert net.in_channels == 1 and net.num_classes is None and net.text_channels is None
    # the features are the input of conv_out: the prediction is conv_out of them
    assert torch.allclose(net.unet.conv_out(feats), pred, atol=1e-6)


def test_fit_with_context_is_finite_and_the_decoder_is_trained(fitted):
    assert fitted.n_steps_ == 3
    for values in fitted.loss_history_.values():
        assert torch.isfinite(torch.tensor(values)).all()
    assert min(fitted.loss_history_["context"]) > 0
    assert isinstance(fitted.backbone_, DiffusersUNet)


def test_export_gives_diffusers_ddim_the_same_images(fitted, tmp_path):
    ours = fitted.sample(3, steps=20, seed=5)  # the full chain: diffusers' grid is ours
    fitted.to_diffusers(tmp_path / "pipe")
    pipe = diffusers.DDIMPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, num_inference_steps=20, eta=0.0, output_type="np",
                  generator=torch.Generator().manual_seed(5),
                  use_clipped_model_output=True).images
    theirs = torch.from_numpy(theirs).permute(0, 3, 1, 2)
    assert ours.std() > 0.05  # not a constant image
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    ddpm = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(ddpm.scheduler.betas, pipe.scheduler.betas)


def test_import_reads_the_scheduler_then_fits_saves_and_loads(fitted, tmp_path):
    fitted.to_diffusers(tmp_path / "pipe")
    model = ConPreDiffModel.from_diffusers(tmp_path / "pipe", max_steps=2, batch_size=16,
                                           verbose=0, seed=1, device="cpu", lr=1e-9)
    assert (model.timesteps, model.schedule, model.prediction) == (20, "cosine", "eps")
    assert model.backbone.pretrained
    model.fit(images())
    # fine-tuning started from the exported (EMA) weights (and lr=1e-9 barely moves them)
    exported = fitted.ema_backbone_.state_dict()
    for key, value in model.backbone_.state_dict().items():
        torch.testing.assert_close(value, exported[key])
    model.save(tmp_path / "m.safetensors")
    again = ConPreDiffModel.load(tmp_path / "m.safetensors", device="cpu")
    assert isinstance(again.backbone_, DiffusersUNet)
    assert torch.equal(again.sample(2, steps=5, seed=0), model.sample(2, steps=5, seed=0))


def test_a_pretrained_adapter_keeps_its_weights_through_clone():
    unet = diffusers.UNet2DModel(**UNET)
    net = from_diffusers(unet)
    assert torch.equal(clone(net).unet.conv_in.weight, unet.conv_in.weight)
    fresh = DiffusersUNet(unet.config)
    assert not torch.equal(clone(fresh).unet.conv_in.weight, fresh.unet.conv_in.weight)


def test_a_diffusers_scheduler_samples_and_must_match(fitted):
    config = scheduler_config(fitted)
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(config)
    x = fitted.sample(2, steps=8, sampler=dpm, seed=0)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    assert torch.equal(x, fitted.sample(2, steps=8, sampler=dpm, seed=0))
    ddim = diffusers.DDIMScheduler.from_config(config)
    torch.testing.assert_close(fitted.sample(2, steps=20, sampler=ddim, seed=3),
                               fitted.sample(2, steps=20, sampler="ddim", seed=3), atol=1e-5,
                               rtol=0)
    wrong_type = diffusers.DDIMScheduler.from_config({**config, "prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match="sampler.*prediction_type='v_prediction'.*'eps'"):
        fitted.sample(1, sampler=wrong_type)
    linear = {k: v for k, v in config.items() if k != "trained_betas"}
    with pytest.raises(ValueError, match="sampler.*beta_schedule.*schedule='cosine'"):
        fitted.sample(1, sampler=diffusers.DDIMScheduler.from_config(
            {**linear, "beta_schedule": "linear"}))
    with pytest.raises(ValueError, match="eta"):
        fitted.sample(1, sampler=ddim, eta=0.5)


def test_bad_unets_get_clear_errors():
    with pytest.raises(ValueError, match="in_channels=1 and out_channels=2 differ"):
        DiffusersUNet({**UNET, "out_channels": 2})
    net = DiffusersUNet({**UNET, "sample_size": 16})
    with pytest.raises(ValueError, match="sample_size=16 does not match the data's 8x8"):
        ConPreDiffModel(backbone=net, max_steps=1, **SMALL).fit(images())
    with pytest.raises(ValueError, match="class_name"):
        DiffusersUNet(UNET, class_name="Transformer2DModel")
    with pytest.raises(TypeError, match="config must be a dict"):
        DiffusersUNet([1, 2])
    with pytest.raises(TypeError, match="diffusers backbone"):
        ConPreDiffModel(max_steps=1, **SMALL).fit(images()).to_diffusers("unused")


def test_class_conditional_unet2dmodel_with_guidance():
    net = DiffusersUNet({**UNET, "num_class_embeds": 4})
    assert net.num_classes == 3
    y = torch.arange(48) % 3
    model = ConPreDiffModel(backbone=net, context=ContextPrediction(), max_steps=2,
                            label_dropout=0.2, **SMALL).fit(images(), y)
    x = model.sample(3, steps=4, labels=[0, 1, 2], guidance_scale=2.0, seed=0)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    assert not torch.equal(x, model.sample(3, steps=4, labels=[2, 1, 0], guidance_scale=2.0,
                                           seed=0))


def test_text_conditional_unet2dconditionmodel():
    config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                  norm_num_groups=8, layers_per_block=1, cross_attention_dim=16,
                  attention_head_dim=4,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  class_embed_type="projection", projection_class_embeddings_input_dim=16)
    net = DiffusersUNet(diffusers.UNet2DConditionModel(**config).config,
                        class_name="UNet2DConditionModel")
    assert net.text_channels == 16
    captions = ["a small one", "a large two", "a thin three"] * 16
    model = ConPreDiffModel(backbone=net, text_encoder=TextTransformer(width=16, layers=1),
                            context=ContextPrediction(), max_steps=2, label_dropout=0.2,
                            **SMALL).fit(images(), captions)
    a = model.sample(2, steps=3, prompts="a small one", guidance_scale=3.0, seed=0)
    b = model.sample(2, steps=3, prompts="a large two", guidance_scale=3.0, seed=0)
    assert torch.isfinite(a).all() and not torch.equal(a, b)


def test_autoencoderkl_as_the_latent_models_autoencoder(tmp_path):
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2,
                                  block_out_channels=(8, 16), norm_num_groups=4,
                                  layers_per_block=1,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2,
                                  scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    ae = DiffusersAutoencoder.from_diffusers(tmp_path / "vae")
    assert (ae.latent_channels, ae.downsampling_factor, ae.scaling_factor) == (2, 2, 0.5)
    assert torch.equal(ae.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    model = ConPreDiffModel(autoencoder=ae, context=ContextPrediction(), max_steps=2,
                            backbone=DiffusersUNet({**UNET, "in_channels": 2, "out_channels": 2,
                                                    "sample_size": 4}),
                            **SMALL).fit(images())
    x = model.sample(2, steps=3, seed=0)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    missing = torch.zeros(1, 8, 8, dtype=torch.bool)
    missing[:, :, 4:] = True
    img = images(1)[0]
    filled = model.inpaint(img, missing, steps=3, jump_length=1, jump_n_sample=1, seed=0)
    assert filled.shape == img.shape and torch.equal(filled[~missing], img[~missing])
    model.save(tmp_path / "latent.safetensors")
    again = ConPreDiffModel.load(tmp_path / "latent.safetensors", device="cpu")
    assert isinstance(again.autoencoder_, DiffusersAutoencoder)
    assert torch.equal(again.sample(2, steps=3, seed=0), x)


def test_feature_tap_in_a_loop_of_ones_own():
    unet = diffusers.UNet2DModel(**UNET)
    tap = FeatureTap(unet)
    head = ContextPrediction().build(unet.config.block_out_channels[0], 1)
    x0, t = images(4), torch.tensor([1, 5, 9, 13])
    pred = unet(torch.randn_like(x0), t).sample
    loss = pred.pow(2).mean() + head(tap.features, t, x0).loss
    loss.backward()
    assert tap.features.shape == (4, 16, 8, 8)
    assert unet.conv_in.weight.grad is not None
    assert any(p.grad is not None for p in head.parameters())
    tap.remove()
    tap.features = None
    unet(x0, t)
    assert tap.features is None
    with pytest.raises(TypeError, match="diffusers UNet"):
        FeatureTap(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("edit", [
    {"layers_per_block": 10**6},
    {"block_out_channels": [2**20, 2**20]},
    {"down_block_types": ["NoSuchBlock2D", "DownBlock2D"]},
    {"in_channels": 3},
])
def test_a_crafted_diffusers_config_is_one_value_error(fitted, tmp_path, edit):
    """A model file's UNet config is built on the meta device and checked against the file's
    tensors before anything is allocated: one ValueError, quickly."""
    import json
    import time

    from safetensors.torch import load_file, safe_open, save_file

    good = fitted.save(tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as f:
        meta = json.loads(f.metadata()["conprediff"])
    meta["backbone"]["params"]["config"].update(edit)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata={"conprediff": json.dumps(meta)})
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="bad.safetensors"):
        ConPreDiffModel.load(bad, device="cpu")
    assert time.perf_counter() - t0 < 5.0
