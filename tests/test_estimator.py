"""ConPreDiffModel: the scikit-learn contract, persistence and input validation."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from conprediff import ConPreDiffModel, UNet


def tiny(**kw):
    params = dict(
        backbone=UNet(base_channels=8, channel_mults=(1, 2)),
        timesteps=20,
        max_steps=3,
        batch_size=8,
        seed=0,
        verbose=0,
    )
    params.update(kw)
    return ConPreDiffModel(**params)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 8, 8, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def fitted(images):
    return tiny().fit(images)


def test_constructor_only_stores_arguments():
    b = UNet(base_channels=8)
    m = ConPreDiffModel(backbone=b, lr=-5, schedule="nonsense")  # validated in fit, not here
    assert m.backbone is b and m.lr == -5
    assert not [k for k in vars(m) if k.endswith("_")]


def test_fit_returns_self_and_records_history(images):
    m = tiny()
    assert m.fit(images) is m
    assert m.n_steps_ == 3 and len(m.loss_history_["loss"]) == 3
    assert m.image_shape_ == (1, 8, 8) and m.data_range_ == (-1.0, 1.0)


def test_fit_does_not_modify_the_backbone_argument(images):
    b = UNet(base_channels=8, channel_mults=(1, 2))
    m = tiny(backbone=b).fit(images)
    assert b.in_channels is None and m.backbone_ is not b


def test_seed_makes_training_reproducible(images):
    a = tiny().fit(images)
    b = tiny().fit(images)
    assert a.loss_history_ == b.loss_history_
    for p, q in zip(a.backbone_.parameters(), b.backbone_.parameters(), strict=True):
        assert torch.equal(p, q)


def test_loss_falls_on_a_longer_run(images):
    m = tiny(max_steps=60, lr=3e-3).fit(images)
    loss = np.asarray(m.loss_history_["loss"])
    assert loss[-10:].mean() < 0.7 * loss[:10].mean()


def test_not_fitted_error():
    with pytest.raises(NotFittedError):
        tiny().sample(2)
    with pytest.raises(NotFittedError):
        tiny().save("never.safetensors")


def test_sample_shape_range_and_seed(fitted):
    a = fitted.sample(3, steps=5, seed=7)
    assert a.shape == (3, 1, 8, 8) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, fitted.sample(3, steps=5, seed=7))
    assert not torch.equal(a, fitted.sample(3, steps=5, seed=8))
    # batching does not change the images
    assert torch.equal(a, fitted.sample(3, steps=5, seed=7, batch_size=3))


def test_samples_come_back_in_the_data_range(images):
    m = tiny().fit((images + 1) * 127.5)  # 0..255 data
    assert m.data_range_ == (0.0, 255.0)
    s = m.sample(2, steps=3, seed=0)
    assert s.min() >= 0 and s.max() <= 255 and s.max() > 1.5


def test_get_params_set_params_nested_and_clone(fitted):
    params = fitted.get_params(deep=True)
    assert params["backbone__base_channels"] == 8 and params["timesteps"] == 20
    c = clone(fitted)
    assert not hasattr(c, "backbone_")
    assert c.get_params()["backbone__base_channels"] == 8 and c.backbone is not fitted.backbone
    c.set_params(backbone__base_channels=16, lr=1e-3)
    assert c.backbone.base_channels == 16 and c.lr == 1e-3
    assert fitted.backbone.base_channels == 8


def test_save_load_round_trip_gives_identical_samples(fitted, tmp_path):
    path = fitted.save(tmp_path / "m.safetensors")
    loaded = ConPreDiffModel.load(path)
    assert loaded.get_params()["backbone__base_channels"] == 8
    assert loaded.loss_history_ == fitted.loss_history_
    assert torch.equal(loaded.sample(4, steps=5, seed=3), fitted.sample(4, steps=5, seed=3))
    assert torch.equal(
        loaded.sample(2, steps=5, seed=3, use_ema=False),
        fitted.sample(2, steps=5, seed=3, use_ema=False),
    )
    assert b"pickle" not in path.read_bytes()[:200]


def test_load_refuses_foreign_classes(fitted, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = fitted.save(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["conprediff"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["backbone"] = {"__class__": "os.system", "params": {"command": "echo pwned"}}
    save_file(
        tensors, str(tmp_path / "evil.safetensors"), metadata={"conprediff": json.dumps(meta)}
    )
    with pytest.raises(ValueError, match="refusing"):
        ConPreDiffModel.load(tmp_path / "evil.safetensors")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ConPreDiffModel.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable"):
        ConPreDiffModel.load(bad)


class Custom(nn.Module):
    feature_channels = 4

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 1, 1)

    def forward(self, x, t, cond=None):
        h = torch.tanh(self.body(x) + t[:, None, None, None].float() / 20)
        return self.out(h), h


def test_seed_is_checked_and_numpy_integers_work(images):
    a = tiny(seed=np.int64(3)).fit(images)
    assert a.seed_ == 3 and type(a.seed_) is int
    assert torch.equal(a.sample(2, steps=3, seed=0), tiny(seed=3).fit(images).sample(2, steps=3,
                                                                                      seed=0))
    for bad, err in ((1.5, TypeError), ("abc", TypeError), (-1, ValueError), (2**64, ValueError)):
        with pytest.raises(err, match="seed must be an integer"):
            tiny(seed=bad).fit(images)


def test_ddpm_refuses_eta(fitted):
    with pytest.raises(ValueError, match="eta applies to sampler='ddim' only"):
        fitted.sample(2, steps=3, sampler="ddpm", eta=0.5)


def test_load_warns_about_an_unused_backbone_and_names_a_wrong_architecture(fitted, tmp_path):
    path = fitted.save(tmp_path / "u.safetensors")
    with pytest.warns(UserWarning, match="backbone= is ignored"):
        ConPreDiffModel.load(path, backbone=Custom())
    custom = tiny(backbone=Custom()).fit(torch.rand(16, 1, 8, 8) * 2 - 1)
    other = Custom()
    other.body = nn.Conv2d(1, 4, 5, padding=2)  # another kernel size: the weights do not fit
    with pytest.raises(ValueError, match=r"do not fit the backbone module \(Custom\)"):
        ConPreDiffModel.load(custom.save(tmp_path / "c.safetensors"), backbone=other)


def test_custom_backbone_fit_save_load(images, tmp_path):
    m = tiny(backbone=Custom()).fit(images)
    path = m.save(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="backbone="):
        ConPreDiffModel.load(path)
    loaded = ConPreDiffModel.load(path, backbone=Custom())
    assert torch.equal(loaded.sample(2, steps=3, seed=1), m.sample(2, steps=3, seed=1))


def test_accepts_dataloader_tuples_numpy_and_dataset(images):
    def weights(model):
        return torch.cat([p.detach().flatten() for p in model.backbone_.parameters()])

    labels = torch.arange(16) % 3
    tuples = tiny().fit(DataLoader(TensorDataset(images, labels), batch_size=4))
    plain = tiny().fit(DataLoader(images, batch_size=4))
    # the same batches in the same order (labels of an unconditional model are ignored)
    assert torch.equal(weights(tuples), weights(plain))
    assert tuples.n_steps_ == 3 and tuples.image_shape_ == (1, 8, 8)
    # a tensor, a float64 array and a Dataset are shuffled by the same seeded sampler
    reference = weights(tiny().fit(images))
    assert torch.equal(weights(tiny().fit(images.numpy().astype(np.float64))), reference)
    from_dataset = tiny().fit(TensorDataset(images))
    assert torch.equal(weights(from_dataset), reference)
    assert from_dataset.n_items_seen_ == 16
    assert not torch.equal(reference, weights(plain))  # another order: other weights


# ---------------------------------------------------------------- rejected inputs
def test_rejects_wrong_number_of_dimensions():
    with pytest.raises(ValueError, match=r"data must be 4-dimensional.*x\[:, None\]"):
        tiny().fit(torch.zeros(4, 8, 8))


def test_rejects_non_finite_values(images):
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="data contains non-finite"):
        tiny().fit(bad)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="data contains non-finite"):
        tiny().fit(DataLoader(bad, batch_size=4))


def test_rejects_empty_data():
    with pytest.raises(ValueError, match="data is empty"):
        tiny().fit(torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="data is empty"):
        tiny().fit(DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8)), batch_size=4))


class Varying(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.zeros(1, 8, 8) if i % 2 else torch.zeros(1, 4, 4)


def test_rejects_images_of_varying_size():
    with pytest.raises(ValueError, match="data holds images of varying size"):
        tiny().fit(DataLoader(Varying(), batch_size=4))
    with pytest.raises(ValueError, match="data holds images of varying size"):
        tiny().fit(Varying())
    with pytest.raises(ValueError, match="data holds images of varying size"):
        tiny(max_steps=4).fit(DataLoader(Varying(), batch_size=1))


def test_rejects_non_tensor_data():
    with pytest.raises(TypeError, match="data must be"):
        tiny().fit("digits")


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("lr", 0),
        ("batch_size", 0),
        ("max_steps", -1),
        ("epochs", 0),
        ("timesteps", 1),
        ("schedule", "quadratic"),
        ("prediction", "score"),
        ("ema_decay", 1.0),
        ("data_range", (1, 0)),
        ("device", "tpu"),
        ("min_snr_gamma", -1.0),
    ],
)
def test_rejects_bad_parameters_naming_them(images, param, value):
    name = "schedule kind" if param == "schedule" else param
    with pytest.raises(ValueError, match=name):
        tiny(**{param: value}).fit(images)


def test_rejects_bad_backbone_and_context(images):
    with pytest.raises(TypeError, match="backbone"):
        tiny(backbone="unet").fit(images)
    with pytest.raises(TypeError, match="context"):
        tiny(context="yes").fit(images)


def test_sample_argument_errors(fitted):
    with pytest.raises(ValueError, match="n must"):
        fitted.sample(0)
    with pytest.raises(ValueError, match="steps"):
        fitted.sample(1, steps=21)
    with pytest.raises(ValueError, match="sampler"):
        fitted.sample(1, sampler="euler")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        fitted.sample(2, batch_size=0)
    with pytest.raises(TypeError, match="seed must be an integer"):
        fitted.sample(2, seed="a")
    with pytest.raises(TypeError, match="eta must be a number"):
        fitted.sample(2, eta="a")
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        fitted.sample(2, eta=-0.5)
    with pytest.raises(TypeError, match="n must be an integer"):
        fitted.sample(2.0)


def test_sample_accepts_numpy_integers(fitted):
    got = fitted.sample(np.int64(2), steps=np.int32(3), seed=np.int64(4), batch_size=np.int16(1))
    assert torch.equal(got, fitted.sample(2, steps=3, seed=4, batch_size=1))


def test_inpaint_argument_errors(fitted):
    img = torch.zeros(1, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"one image \(C, H, W\) or a batch.*img\[None\]"):
        fitted.inpaint(img[0], mask)
    with pytest.raises(TypeError, match="img must be a torch.Tensor or a numpy array, got list"):
        fitted.inpaint(img.tolist(), mask)
    with pytest.raises(TypeError, match="seed"):
        fitted.inpaint(img, mask, seed=1.5)
    with pytest.raises(TypeError, match="jump_n_sample must be an integer"):
        fitted.inpaint(img, mask, jump_n_sample=2.0)
    with pytest.raises(ValueError, match="sampler"):
        fitted.inpaint(img, mask, sampler="euler")


def test_inpaint_accepts_numpy_integers(fitted):
    img = fitted.sample(1, steps=2, seed=0)[0]
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4] = True
    kw = dict(steps=6, jump_length=3, jump_n_sample=2, seed=1)
    got = fitted.inpaint(img, mask, **{k: np.int64(v) for k, v in kw.items()})
    assert torch.equal(got, fitted.inpaint(img, mask, **kw))


def test_rejects_channels_last_data_with_a_hint(images):
    with pytest.raises(ValueError, match=r"looks channels-last.*permute\(0, 3, 1, 2\)"):
        tiny().fit(images.permute(0, 2, 3, 1).numpy())
    tiny().fit(torch.rand(4, 3, 8, 8))  # channels first with C = 3 is fine


class PILImages(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        from PIL import Image

        return Image.fromarray(np.zeros((8, 8), np.uint8))


class BuildOnly:
    """A context configuration that is not a scikit-learn estimator (only ``build``)."""

    def __init__(self, hidden):
        self.hidden = hidden

    def build(self, feature_channels, data_channels):
        from conprediff import ContextPrediction

        return ContextPrediction(hidden=self.hidden).build(feature_channels, data_channels)


def test_a_context_without_get_params_is_copied_not_cloned(images):
    ctx = BuildOnly(16)
    m = tiny(context=ctx).fit(images)
    assert isinstance(m.context_, BuildOnly) and m.context_ is not ctx
    assert m.context_.hidden == 16


def test_dataset_of_pil_images_is_named():
    with pytest.raises(TypeError, match=r"got Image.*Dataset must yield \(C, H, W\).*ImageFolder"):
        tiny().fit(PILImages())


def test_given_data_range_must_hold_the_data(images):
    with pytest.raises(ValueError, match=r"data values must lie in the data range \[0, 1\]"):
        tiny(data_range=(0, 1)).fit(images)  # images are in [-1, 1]
    assert tiny(data_range=(-1, 1)).fit(images).data_range_ == (-1.0, 1.0)


# ---------------------------------------------------------------- fitted state and seeding
def test_prediction_time_uses_what_the_model_was_fitted_with(fitted, tmp_path):
    from sklearn.base import clone as sk_clone

    m = sk_clone(fitted).fit(torch.rand(16, 1, 8, 8) * 2 - 1)
    before = m.sample(2, steps=5, seed=0)
    m.set_params(timesteps=40, prediction="x0", schedule="linear")
    assert torch.equal(m.sample(2, steps=5, seed=0), before)
    loaded = ConPreDiffModel.load(m.save(tmp_path / "m.safetensors"))
    assert (loaded.timesteps, loaded.prediction, loaded.schedule) == (20, "eps", "cosine")


def test_inpaint_default_steps_follow_short_schedules(fitted):
    img = fitted.sample(1, steps=2, seed=0)[0]
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4] = True
    out = fitted.inpaint(img, mask, jump_n_sample=1, seed=0)  # timesteps=20 < 250
    assert torch.equal(out[:, 4:], img[:, 4:])


def test_epochs_always_give_at_least_one_step(images):
    m = tiny(epochs=1, grad_accum_steps=4, batch_size=64, max_steps=99).fit(images)
    assert m.n_steps_ == 1


def test_fit_leaves_the_global_rng_alone_and_seeds_dropout(images):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = tiny(backbone=UNet(base_channels=8, channel_mults=(1, 2), dropout=0.3)).fit(images)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # another global state must not change the result
    b = tiny(backbone=UNet(base_channels=8, channel_mults=(1, 2), dropout=0.3)).fit(images)
    for p, q in zip(a.backbone_.parameters(), b.backbone_.parameters(), strict=True):
        assert torch.equal(p, q)


def test_fit_on_a_dataloader_leaves_the_global_rng_alone(images):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(images), batch_size=8, shuffle=True)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    tiny().fit(loader)
    assert torch.equal(torch.get_rng_state(), state)


def test_data_range_tolerates_resize_overshoot():
    from conprediff.training.data import infer_data_range

    assert infer_data_range(torch.tensor([0.0, 0.5, 1.004])) == (0.0, 1.0)
    assert infer_data_range(torch.tensor([-1.01, 0.3])) == (-1.0, 1.0)
    assert infer_data_range(torch.tensor([0.0, 200.0])) == (0.0, 255.0)
    assert infer_data_range(torch.tensor([0.0, 3.0])) == (0.0, 3.0)


def test_unsavable_parameter_is_named(fitted, tmp_path):
    from conprediff.serialization import to_jsonable

    with pytest.raises(TypeError, match="'context__metric'"):
        to_jsonable({"context": {"metric": len}}, "params")


def test_numpy_scalars_are_accepted_and_wrong_types_named(images, tmp_path):
    m = tiny(
        max_steps=np.int64(2), lr=np.float32(1e-3), batch_size=np.int32(8), timesteps=np.int64(20)
    ).fit(images)
    assert m.n_steps_ == 2
    m.save(tmp_path / "np.safetensors")  # numpy scalars serialise as plain numbers
    for param, value in (
        ("weight_decay", "a"),
        ("grad_clip", "1"),
        ("max_steps", 2.5),
        ("compile", "yes"),
    ):
        with pytest.raises(TypeError, match=param):
            tiny(**{param: value}).fit(images)
