"""Captioned digits and the prompt-following score."""

from __future__ import annotations

import numpy as np
import pytest

from conprediff.data import load_captioned_digits, measure_digit_attributes
from conprediff.data.captioned import ATTRIBUTES, DIGIT_NAMES, TEMPLATES, prompts_for
from conprediff.evaluation import prompt_following


@pytest.fixture(scope="module")
def data():
    return load_captioned_digits(size=16, seed=0)


def test_captions_state_what_is_measured_on_the_image(data):
    assert data.images.shape == (1797, 1, 16, 16) and len(data.captions) == 1797
    assert float(data.images.min()) >= -1 and float(data.images.max()) <= 1
    again = measure_digit_attributes(data.images, data.digits, data.thresholds)
    assert again == data.attributes
    for i in (0, 1, 500):
        caption = data.captions[i]
        assert DIGIT_NAMES[int(data.digits[i])] in caption
        assert all(data.attributes[k][i] in caption for k in ATTRIBUTES)
    # each word of thickness and slant is about half of the data; five positions, two sizes
    for name in ("thickness", "slant"):
        share = np.mean([w == ATTRIBUTES[name][0] for w in data.attributes[name]])
        assert 0.45 < share < 0.55
    assert set(data.attributes["position"]) == set(ATTRIBUTES["position"])


def test_held_out_templates_are_not_the_training_ones(data):
    test = load_captioned_digits(size=16, seed=0, templates="test")
    assert test.attributes == data.attributes  # same seed: same images, other wording
    assert not set(test.captions) & set(data.captions)
    assert set(TEMPLATES["train"]).isdisjoint(TEMPLATES["test"])
    prompts = prompts_for(data.digits[:3], {k: v[:3] for k, v in data.attributes.items()})
    assert len(prompts) == 3 and all(DIGIT_NAMES[int(d)] in p
                                     for d, p in zip(data.digits[:3], prompts, strict=True))


def test_prompt_following_is_one_on_the_data_and_falls_when_prompts_disagree(data):
    def perfect(images):
        return data.digits[: len(images)].numpy()

    score = prompt_following(data.images, data.digits, data.attributes, data.thresholds,
                             perfect)
    assert score == {"digit": 1.0, "thickness": 1.0, "slant": 1.0, "size": 1.0,
                     "position": 1.0, "all": 1.0}
    flipped = {**data.attributes, "size": ["large" if w == "small" else "small"
                                           for w in data.attributes["size"]]}
    score = prompt_following(data.images, data.digits, flipped, data.thresholds, perfect)
    assert score["size"] == 0.0 and score["all"] == 0.0 and score["digit"] == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="size must be even"):
        load_captioned_digits(size=15)
    with pytest.raises(ValueError, match="dataset"):
        load_captioned_digits(dataset="cifar")
    with pytest.raises(ValueError, match="templates"):
        load_captioned_digits(templates="val")
