"""All the metrics of a set of generated images against real ones: :func:`evaluate_samples`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from .._validation import check_bool
from .features import FeatureExtractor
from .frechet import (
    class_balanced_frechet_distance,
    class_total_variation,
    frechet_distance_from_features,
)
from .kid import kernel_inception_distance
from .precision_recall import precision_recall

__all__ = ["evaluate_samples"]


def _image_shape(images: Any) -> tuple[int, ...] | None:
    """``(C, H, W)`` of an ``(N, C, H, W)`` (or ``(N, H, W)``: C = 1) set, read without copying
    it; None when it has no such shape (the extractor then says what it needs)."""
    shape = tuple(images.shape) if hasattr(images, "shape") else np.shape(images)
    if len(shape) == 3:
        return (1, *shape[1:])
    return tuple(shape[1:]) if len(shape) == 4 else None


def _extract_function(extractor: Any, class_balanced: bool) -> Callable[[Any], Any]:
    """The callable mapping images to features that ``extractor`` stands for."""
    if check_bool(class_balanced, "class_balanced") and not isinstance(
        extractor, FeatureExtractor
    ):
        raise TypeError("class_balanced=True needs a FeatureExtractor (to classify the images)")
    if isinstance(extractor, FeatureExtractor):
        return extractor.extract
    if isinstance(extractor, nn.Module):
        return FeatureExtractor(extractor).extract
    if callable(extractor):
        return extractor
    raise TypeError(
        f"extractor must be a FeatureExtractor, an nn.Module or a callable; got {type(extractor)}"
    )


def _class_metrics(
    extractor: FeatureExtractor, real_images: Any, fake_images: Any, real: np.ndarray,
    fake: np.ndarray,
) -> dict[str, float]:
    """``fid_class_balanced`` and ``class_tv`` with both sets' classes predicted."""
    real_cls = extractor.classify(real_images)
    fake_cls = extractor.classify(fake_images)
    return {
        "fid_class_balanced": class_balanced_frechet_distance(real, real_cls, fake, fake_cls),
        "class_tv": class_total_variation(real_cls, fake_cls),
    }


def evaluate_samples(
    real_images: Any,
    fake_images: Any,
    extractor: FeatureExtractor | nn.Module | Callable[[Any], Any],
    *,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int | None = 0,
    kid_standardize: bool = False,
    class_balanced: bool = False,
) -> dict[str, float]:
    """FID, precision, recall and KID of generated images against real ones.

    Parameters
    ----------
    real_images, fake_images : array_like or torch.Tensor of shape (N, C, H, W)
        Real and generated images in [-1, 1], of the same ``(C, H, W)``; each ``N > k``.
    extractor : FeatureExtractor, torch.nn.Module or callable
        The feature network: a fitted :class:`FeatureExtractor` (e.g.
        :func:`default_digits_extractor`), a module wrapped in one, or a callable mapping images
        to an ``(N, D)`` array.
    k : int, default 3
        Neighbour for precision and recall.
    kid_subsets, kid_subset_size, seed : int, defaults 100, 1000 and 0
        Subsets for KID and their seed (see :func:`kernel_inception_distance`).
    kid_standardize : bool, default False
        Standardise the features with the real set's statistics before KID; advisable for
        features of a small classifier such as the LeNet of :func:`default_digits_extractor`.
    class_balanced : bool, default False
        Also report ``"fid_class_balanced"`` (:func:`class_balanced_frechet_distance`, both sets'
        classes predicted by :meth:`FeatureExtractor.classify`) and ``"class_tv"``
        (:func:`class_total_variation` of those predictions); needs a
        :class:`FeatureExtractor` whose network is a classifier.

    Returns
    -------
    dict
        ``{"fid", "precision", "recall", "kid_mean", "kid_std", "n_real", "n_fake"}``, plus
        ``"fid_class_balanced"`` and ``"class_tv"`` with ``class_balanced``; the metrics are
        floats computed on the same features.

    Raises
    ------
    ValueError
        If the two sets differ in ``(C, H, W)``, and (with the default classifier) if they are
        not of the size, or lie outside the range, of the images it was trained on: a model's
        :meth:`~conprediff.estimator.ConPreDiffModel.sample` returns the *data's* range, so map
        samples of data in ``[0, 1]`` or ``[0, 255]`` to ``[-1, 1]`` first.

    Notes
    -----
    FID is biased by the sample size: compare values only at equal ``N``. The sampling noise of
    FID in the LeNet's features is measured in ``docs/benchmarks/ablation.md``.
    """
    extract = _extract_function(extractor, class_balanced)
    real_shape, fake_shape = _image_shape(real_images), _image_shape(fake_images)
    if None not in (real_shape, fake_shape) and real_shape != fake_shape:
        raise ValueError(
            f"real and fake images must have the same (C, H, W), got {real_shape} and {fake_shape}"
        )
    real = np.asarray(extract(real_images), dtype=np.float64)
    fake = np.asarray(extract(fake_images), dtype=np.float64)
    precision, recall = precision_recall(real, fake, k=k)
    kid_mean, kid_std = kernel_inception_distance(
        real, fake, n_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed,
        standardize=kid_standardize,
    )
    result = {
        "fid": frechet_distance_from_features(real, fake),
        "precision": precision,
        "recall": recall,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "n_real": int(real.shape[0]),
        "n_fake": int(fake.shape[0]),
    }
    if class_balanced:
        result |= _class_metrics(extractor, real_images, fake_images, real, fake)
    return result
