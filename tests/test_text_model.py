"""Text-conditional ConPreDiffModel: fit on captions, sample and inpaint from prompts, guidance,
caption dropout, save/load and resume, and the errors."""

from __future__ import annotations

import pytest
import torch

from conprediff import ConPreDiffModel, ContextPrediction, UNet
from conprediff.data import load_digits_images
from conprediff.diffusion import guided
from conprediff.text import TextEmbedding, TextTransformer
from conprediff.text.conditioned import TextConditioned

NAMES = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits_images(size=8)
    return x[:48], [f"a {NAMES[int(k)]}" for k in y[:48]]


def make(**kw):
    params = dict(backbone=UNet(base_channels=8, channel_mults=(1, 2), text_channels=16, heads=2),
                  text_encoder=TextTransformer(width=16, heads=2, max_length=8),
                  max_steps=4, batch_size=16, seed=0, verbose=0, device="cpu",
                  label_dropout=0.3)
    params.update(kw)
    return ConPreDiffModel(**params)


@pytest.fixture(scope="module")
def fitted(digits):
    return make(context=ContextPrediction(strides=(1,))).fit(*digits)


def test_fit_sample_inpaint_save_load_round_trip(fitted, digits, tmp_path):
    assert isinstance(fitted.backbone_, TextConditioned)
    assert fitted.backbone_.text_encoder.vocabulary[0] == "a"  # built from the captions
    assert fitted.text_encoder.vocabulary is None  # the parameter is left as it was
    s = fitted.sample(4, steps=3, prompts="a three", seed=0)
    assert s.shape == (4, 1, 8, 8) and torch.isfinite(s).all()
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    f = fitted.inpaint(digits[0][:2], mask, steps=4, jump_length=2, jump_n_sample=2,
                       prompt=["a seven", "a one"], seed=0)
    assert torch.equal(f[:, :, 4:], digits[0][:2, :, 4:])  # known pixels exact
    loaded = ConPreDiffModel.load(fitted.save(tmp_path / "m.safetensors"))
    assert torch.equal(loaded.sample(4, steps=3, prompts="a three", seed=0), s)
    # the parameters are the backbone and the encoder again, ready to refit
    assert isinstance(loaded.backbone, UNet) and isinstance(loaded.text_encoder, TextTransformer)
    assert loaded.backbone_.text_encoder.vocabulary == fitted.backbone_.text_encoder.vocabulary


def test_prompts_change_the_samples_and_guidance_one_and_zero_are_the_two_models(fitted):
    def draw(**kw):
        return fitted.sample(4, steps=3, seed=1, **kw)

    assert not torch.equal(draw(prompts="a three"), draw(prompts="a nine"))
    torch.testing.assert_close(draw(prompts="a three", guidance_scale=0.0), draw())
    # w = 1: the conditional model itself; w = 0 with negative prompts: the negative prompts'
    torch.testing.assert_close(draw(prompts="a nine", guidance_scale=0.0,
                                    negative_prompts="a three"), draw(prompts="a three"))
    net = fitted.ema_backbone_
    cond = net.encode(["a three", "a one"])
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    torch.testing.assert_close(guided(net, cond, None, 1.0)(x, t), net(x, t, cond)[0])
    torch.testing.assert_close(guided(net, cond, None, 0.0)(x, t), net(x, t)[0])
    w = 2.5
    c, u = net(x, t, cond)[0], net(x, t)[0]
    torch.testing.assert_close(guided(net, cond, None, w)(x, t), u + w * (c - u))


def test_caption_dropout_feeds_the_null_condition_at_the_set_rate(digits, monkeypatch):
    seen = []
    forward = TextConditioned.forward

    def spy(self, x, t, cond=None):
        seen.append(cond[1].any(dim=1))
        return forward(self, x, t, cond)

    monkeypatch.setattr(TextConditioned, "forward", spy)
    make(max_steps=20, label_dropout=0.5).fit(*digits)
    null = (~torch.cat(seen)).float().mean().item()
    assert 0.35 < null < 0.65  # 320 draws of probability 0.5 (sd 0.028)
    seen.clear()
    make(max_steps=3, label_dropout=0.0).fit(*digits)
    assert torch.cat(seen).all()


def test_resume_continues_a_text_run_exactly(digits, tmp_path):
    whole = make(max_steps=6).fit(*digits)
    make(max_steps=3, checkpoint_dir=tmp_path, checkpoint_every=3).fit(*digits)
    resumed = make(max_steps=6, checkpoint_dir=tmp_path, checkpoint_every=3).fit(
        *digits, resume="latest")
    for a, b in zip(whole.backbone_.state_dict().values(),
                    resumed.backbone_.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, images, captions):
        self.images, self.captions = images, captions

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i):
        return self.images[i], self.captions[i]


def test_one_prompt_for_every_image_is_words_not_letters(digits):
    m = make(max_steps=1).fit(digits[0], "a seven")
    assert m.backbone_.text_encoder.vocabulary == ["a", "seven"]


def test_a_dataset_of_image_caption_pairs_trains_too(digits):
    m = make(max_steps=2).fit(Pairs(*digits))
    assert m.backbone_.text_encoder.vocabulary == make(max_steps=2).fit(*digits).backbone_\
        .text_encoder.vocabulary


def test_bad_text_input_is_refused_with_the_argument_named(fitted, digits):
    x, prompts = digits
    with pytest.raises(ValueError, match="prompts is empty"):
        fitted.sample(2, steps=2, prompts=[])
    with pytest.raises(TypeError, match="prompts must be a string"):
        fitted.sample(2, steps=2, prompts=3)
    with pytest.raises(ValueError, match="3 prompts for n=2"):
        fitted.sample(2, steps=2, prompts=["a", "b", "c"])
    with pytest.raises(ValueError, match="guidance_scale needs prompts"):
        fitted.sample(2, steps=2, guidance_scale=3.0)
    with pytest.raises(ValueError, match="negative_prompts needs prompts"):
        fitted.sample(2, steps=2, negative_prompts="a one")
    with pytest.raises(ValueError, match="labels were given to a text model"):
        fitted.sample(2, steps=2, labels=[1, 2])
    plain = ConPreDiffModel(backbone=UNet(base_channels=8, channel_mults=(1, 2)), max_steps=1,
                            batch_size=16, verbose=0, device="cpu").fit(x)
    with pytest.raises(ValueError, match="trained without text"):
        plain.sample(2, steps=2, prompts="a one")
    with pytest.raises(ValueError, match="width 32 but the backbone's text_channels=16"):
        make(text_encoder=TextTransformer(width=32, heads=2)).fit(x, prompts)
    with pytest.raises(ValueError, match="backbone takes no text"):
        make(backbone=UNet(base_channels=8, channel_mults=(1, 2))).fit(x, prompts)
    with pytest.raises(ValueError, match="needs captions"):
        make().fit(x)
    with pytest.raises(ValueError, match="prompts y has 3 prompts for n=48"):
        make().fit(x, prompts[:3])
    with pytest.raises(TypeError, match="text_encoder must be a text encoder"):
        make(text_encoder=torch.nn.Linear(2, 2)).fit(x, prompts)


def test_text_embedding_slices_like_a_batch():
    e = TextEmbedding(torch.randn(5, 3, 2), torch.ones(5, 3, dtype=torch.bool), torch.randn(5, 2))
    part = e[1:3]
    assert len(part) == 2 and torch.equal(part.tokens, e.tokens[1:3])


# -- captions beside a folder, and the command line ---------------------------------------------


def _folder(tmp_path, n=6):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / ("sub" if i % 2 else "") / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
    return folder


def test_image_folder_reads_captions_from_txt_files_or_json_lines(tmp_path):
    import json

    from conprediff.data import ImageFolder

    folder = _folder(tmp_path)
    paths = ImageFolder(folder).paths
    for i, p in enumerate(paths):
        p.with_suffix(".txt").write_text(f"a {NAMES[i]}\n")
    data = ImageFolder(folder, captions="txt")
    assert [data[i][1] for i in range(len(data))] == [f"a {NAMES[i]}" for i in range(6)]
    lines = [json.dumps({"file": p.relative_to(folder).as_posix(), "text": f"b{i}"})
             for i, p in enumerate(paths)]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    assert ImageFolder(folder, captions="captions.jsonl")[5][1] == "b5"
    (folder / "captions.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="no caption for image"):
        ImageFolder(folder, captions="captions.jsonl")
    (folder / "captions.jsonl").write_text('{"file": 3}\n')
    with pytest.raises(ValueError, match="line 1: expected"):
        ImageFolder(folder, captions="captions.jsonl")
    (folder / "captions.jsonl").write_text("[" * 100_000 + "\n")
    with pytest.raises(ValueError, match="line 1"):
        ImageFolder(folder, captions="captions.jsonl")
    paths[0].with_suffix(".txt").unlink()
    with pytest.raises(ValueError, match="no caption file '0.txt'"):
        ImageFolder(folder, captions="txt")
    with pytest.raises(ValueError, match="labels or captions"):
        ImageFolder(folder, labels=True, captions="txt")
    with pytest.raises(ValueError, match="captions: no file"):
        ImageFolder(folder, captions="missing.jsonl")


def test_a_text_model_from_the_command_line(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from conprediff.cli import main
    from conprediff.data import ImageFolder

    folder = _folder(tmp_path)
    for i, p in enumerate(ImageFolder(folder).paths):
        p.with_suffix(".txt").write_text(f"a {NAMES[i % 3]}")
    model = tmp_path / "m.safetensors"
    assert main(["train", str(folder), "--captions", "txt", "--text-width", "8", "--out",
                 str(model), "--steps", "2", "--base-channels", "8", "--channel-mults", "1", "2",
                 "--batch-size", "4", "--device", "cpu"]) == 0
    loaded = ConPreDiffModel.load(model)
    assert loaded.backbone_.text_encoder.vocabulary == ["a", "one", "two", "zero"]
    assert main(["sample", str(model), "--n", "2", "--steps", "2", "--prompt", "a two",
                 "--negative-prompt", "a one", "--guidance-scale", "2",
                 "--out", str(tmp_path / "s.png")]) == 0
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "filled.png"
    image = ImageFolder(folder).paths[0]
    assert main(["inpaint", str(image), str(tmp_path / "mask.png"), "--model", str(model),
                 "--steps", "4", "--jump-n-sample", "1", "--prompt", "a zero",
                 "--out", str(out)]) == 0
    assert np.array_equal(np.asarray(Image.open(out))[:, :4], np.asarray(Image.open(image))[:, :4])
    capsys.readouterr()
    assert main(["sample", str(model), "--n", "2", "--steps", "2", "--label", "1"]) == 2
    assert "labels were given to a text model" in capsys.readouterr().err


def test_prompt_grid_picture(tmp_path):
    from conprediff.plotting import plot_prompt_grid

    path = plot_prompt_grid(torch.rand(2, 3, 1, 8, 8) * 2 - 1, ["a one", "a two"],
                            tmp_path / "grid.png")
    assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="prompts: 1 for 2 rows"):
        plot_prompt_grid(torch.rand(2, 3, 1, 8, 8), ["a one"], tmp_path / "bad.png")
