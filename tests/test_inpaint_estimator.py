"""ConPreDiffModel.inpaint: known pixels kept exactly, every family, single and batched."""

import numpy as np
import pytest
import torch
from PIL import Image

from conprediff import ConPreDiffModel, UNet
from conprediff.inpainting import MASK_FAMILIES, make_mask


@pytest.fixture(scope="module")
def model_and_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 8, 8, generator=g)  # data in [0, 1]
    m = ConPreDiffModel(
        backbone=UNet(base_channels=8, channel_mults=(1, 2)),
        timesteps=20,
        max_steps=3,
        batch_size=4,
        seed=0,
        verbose=0,
    ).fit(x)
    return m, x


@pytest.mark.parametrize("family", sorted(MASK_FAMILIES))
def test_known_pixels_exact_single_and_batched(model_and_images, family):
    m, x = model_and_images
    mask = make_mask(family, 8, 8, seed=1)
    single = m.inpaint(x[0], mask, steps=10, jump_length=2, jump_n_sample=2, seed=0)
    assert single.shape == (1, 8, 8)
    assert (single - x[0])[:, ~mask].abs().max().item() == 0.0
    batch = m.inpaint(x[:3], mask, steps=10, jump_length=2, jump_n_sample=2, seed=0)
    assert batch.shape == (3, 1, 8, 8)
    assert (batch - x[:3])[:, :, ~mask].abs().max().item() == 0.0
    assert batch.min() >= 0 and batch.max() <= 1  # back in the data's range
    assert torch.equal(
        batch, m.inpaint(x[:3], mask, steps=10, jump_length=2, jump_n_sample=2, seed=0)
    )


def test_mask_forms_numpy_numbers_and_pil(model_and_images):
    m, x = model_and_images
    mask = make_mask("half", 8, 8)
    a = m.inpaint(x[0], mask, steps=5, seed=0)
    b = m.inpaint(x[0].numpy(), mask.numpy().astype(np.float32), steps=5, seed=0)
    pil = Image.fromarray((mask.numpy() * 255).astype(np.uint8), mode="L")
    c = m.inpaint(x[0], pil, steps=5, seed=0)
    assert torch.equal(a, b) and torch.equal(a, c)
    # one image takes the batched forms of a batch of one too
    for batched in (mask[None, None], mask[None, None].expand(1, 1, 8, 8).clone()):
        assert torch.equal(m.inpaint(x[0], batched, steps=5, seed=0), a)


def test_all_known_returns_input_and_all_missing_samples(model_and_images):
    m, x = model_and_images
    assert torch.equal(m.inpaint(x[:2], torch.zeros(8, 8, dtype=torch.bool), steps=5), x[:2])
    out = m.inpaint(x[:2], torch.ones(8, 8, dtype=torch.bool), steps=5, jump_n_sample=1, seed=0)
    assert out.shape == (2, 1, 8, 8) and not torch.equal(out, x[:2])


def test_inpaint_validation(model_and_images):
    m, x = model_and_images
    mask = make_mask("half", 8, 8)
    with pytest.raises(ValueError, match="mask"):
        m.inpaint(x[0], torch.ones(4, 4), steps=5)
    with pytest.raises(ValueError, match="mask"):
        m.inpaint(x[0], torch.full((8, 8), 0.5), steps=5)
    with pytest.raises(ValueError, match=r"img must have the fitted model's \(C, H, W\)"):
        m.inpaint(torch.rand(3, 8, 8), mask, steps=5)
    with pytest.raises(ValueError, match=r"img must have"):
        m.inpaint(torch.rand(1, 16, 16), torch.zeros(16, 16), steps=5)
    with pytest.raises(ValueError, match="data range"):
        m.inpaint(x[0] * 2 - 1, mask, steps=5)
    with pytest.raises(ValueError, match="img contains non-finite"):
        m.inpaint(torch.full((1, 8, 8), float("nan")), mask, steps=5)
    with pytest.raises(TypeError, match="mask"):
        m.inpaint(x[0], "half", steps=5)
