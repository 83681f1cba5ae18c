"""Sample-quality metrics and the feature networks they are computed in.

* :func:`frechet_distance` / :func:`frechet_distance_from_features` -- FID, stable square root;
* :func:`class_balanced_frechet_distance` / :func:`class_total_variation` -- FID without the
  noise of one draw's class proportions, and those proportions themselves;
* :func:`precision_recall` -- improved precision and recall (k-NN manifolds);
* :func:`kernel_inception_distance` -- KID, unbiased MMD² with a cubic kernel;
* :class:`FeatureExtractor` -- the feature network as a component (user module, local weights,
  or a LeNet trained on the data set and cached on disk);
* :func:`evaluate_samples` -- all of the above on two sets of images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from .features import (
    FeatureExtractor,
    LeNetClassifier,
    default_cache_dir,
    default_digits_extractor,
    train_classifier,
)
from .frechet import (
    class_balance_weights,
    class_balanced_frechet_distance,
    class_total_variation,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
)
from .kid import kernel_inception_distance, polynomial_mmd2
from .precision_recall import knn_radii, manifold_coverage, precision_recall

__all__ = [
    "FeatureExtractor",
    "LeNetClassifier",
    "class_balance_weights",
    "class_balanced_frechet_distance",
    "class_total_variation",
    "default_cache_dir",
    "default_digits_extractor",
    "evaluate_samples",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "kernel_inception_distance",
    "knn_radii",
    "manifold_coverage",
    "polynomial_mmd2",
    "precision_recall",
    "train_classifier",
]


def _image_shape(images: Any) -> tuple[int, ...] | None:
    """``(C, H, W)`` of an ``(N, C, H, W)`` (or ``(N, H, W)``: C = 1) set, read without copying
    it; None when it has no such shape (the extractor then says what it needs)."""
    shape = tuple(images.shape) if hasattr(images, "shape") else np.shape(images)
    if len(shape) == 3:
        return (1, *shape[1:])
    return tuple(shape[1:]) if len(shape) == 4 else None


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
    real_images : array_like or torch.Tensor of shape (N_real, C, H, W)
        Real images in [-1, 1]; ``N_real > k``.
    fake_images : array_like or torch.Tensor of shape (N_fake, C, H, W)
        Generated images in [-1, 1], same size; ``N_fake > k``.
    extractor : FeatureExtractor, torch.nn.Module or callable
        The feature network: a fitted :class:`FeatureExtractor` (e.g.
        :func:`default_digits_extractor`), a module wrapped in one, or a callable mapping images
        to an ``(N, D)`` array.
    k : int, default 3
        Neighbour for precision and recall.
    kid_subsets, kid_subset_size : int
        Subsets for KID (see :func:`kernel_inception_distance`).
    seed : int or None, default 0
        Seeds the KID subsets.
    kid_standardize : bool, default False
        Standardise the features with the real set's statistics before KID (see
        :func:`kernel_inception_distance`); advisable for features of a small classifier such
        as the LeNet of :func:`default_digits_extractor`.
    class_balanced : bool, default False
        Also report ``"fid_class_balanced"`` (:func:`class_balanced_frechet_distance`, both sets'
        classes predicted by the extractor's classifier) and ``"class_tv"``
        (:func:`class_total_variation` of those predictions). Needs a :class:`FeatureExtractor`
        whose network is a classifier (:meth:`FeatureExtractor.classify`).

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
    FID is biased by the sample size; compare values only at equal ``N``. For the digits, a few
    thousand samples are needed for differences of ~10% to stand out of the sampling noise, and
    FID in the LeNet's features moves with the class proportions of each draw (see
    :func:`class_balanced_frechet_distance`).
    """
    if class_balanced and not isinstance(extractor, FeatureExtractor):
        raise TypeError("class_balanced=True needs a FeatureExtractor (to classify the images)")
    if isinstance(extractor, FeatureExtractor):
        extract = extractor.extract
    elif isinstance(extractor, nn.Module):
        extract = FeatureExtractor(extractor).extract
    elif callable(extractor):
        extract = extractor
    else:
        raise TypeError(
            "extractor must be a FeatureExtractor, an nn.Module or a callable; "
            f"got {type(extractor)}"
        )
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
        real_cls = extractor.classify(real_images)
        fake_cls = extractor.classify(fake_images)
        result["fid_class_balanced"] = class_balanced_frechet_distance(
            real, real_cls, fake, fake_cls
        )
        result["class_tv"] = class_total_variation(real_cls, fake_cls)
    return result
