"""Model files written by an older release load and sample bitwise as they did then.

The files in ``tests/fixtures/`` were written by ``tests/fixtures/make_v1_model.py`` at commit
6b881d1 (format version 1), together with the samples that commit drew from them.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conprediff import ConPreDiffModel
from conprediff.data import load_digits_images

FIXTURES = Path(__file__).parent / "fixtures"
REFS = load_file(str(FIXTURES / "v1_samples.safetensors"))


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixtures were made: reductions in the same order
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", ["v1_context", "v1_conditional"])
def test_v1_file_samples_bitwise(name):
    model = ConPreDiffModel.load(FIXTURES / f"{name}.safetensors", device="cpu")
    model.verbose = 0
    kw = {"labels": [1, 2, 3, 4], "guidance_scale": 2.0} if name == "v1_conditional" else {}
    got = {
        "ddim": model.sample(4, steps=10, sampler="ddim", seed=1, **kw),
        "ddim_eta": model.sample(4, steps=10, sampler="ddim", eta=0.5, seed=2, **kw),
        "ddpm": model.sample(4, steps=10, sampler="ddpm", seed=3, **kw),
        "ddpm_full": model.sample(4, steps=50, sampler="ddpm", seed=4, **kw),
        "no_ema": model.sample(4, steps=10, seed=5, use_ema=False, **kw),
    }
    images, _ = load_digits_images(size=8)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :, 4:] = True
    got["inpaint"] = model.inpaint(images[:4], mask, steps=20, jump_length=5, jump_n_sample=2,
                                   seed=6, **kw)
    got["inpaint_ddim"] = model.inpaint(images[:4], mask, steps=20, jump_length=5,
                                        jump_n_sample=2, seed=7, sampler="ddim", **kw)
    for key, value in got.items():
        ref = REFS[f"{name}.{key}"]
        assert value.shape == ref.shape, key
        assert torch.equal(value, ref), f"{key}: max diff {(value - ref).abs().max():.3g}"


def test_v1_file_keeps_its_training_record():
    model = ConPreDiffModel.load(FIXTURES / "v1_context.safetensors", device="cpu")
    assert model.n_steps_ == 20
    assert model.image_shape_ == (1, 8, 8)
    assert model.timesteps_ == 50
    assert model.context_head_ is not None
    assert len(model.loss_history_["loss"]) == 20
