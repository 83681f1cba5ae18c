"""Sample-quality metrics and the feature networks they are computed in.

* :func:`frechet_distance` / :func:`frechet_distance_from_features` -- FID, stable square root;
* :func:`class_balanced_frechet_distance` / :func:`class_total_variation` -- FID without the
  noise of one draw's class proportions, and those proportions themselves;
* :func:`precision_recall` -- improved precision and recall (k-NN manifolds);
* :func:`kernel_inception_distance` -- KID, unbiased MMD² with a cubic kernel;
* :class:`FeatureExtractor` -- the feature network as a component (user module, local weights,
  or a LeNet trained on the data set and cached on disk);
* :func:`evaluate_samples` -- all of the above on two sets of images;
* :func:`paired_difference` -- two variants compared over paired seeds (mean difference, its
  t-interval, how many pairs favour one), with :func:`t_interval` and :func:`finite_summary`.
"""

from .evaluate import evaluate_samples
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
from .paired import PairedResult, finite_summary, paired_difference, t_interval
from .precision_recall import knn_radii, manifold_coverage, precision_recall
from .prompts import prompt_following

__all__ = [
    "FeatureExtractor",
    "LeNetClassifier",
    "PairedResult",
    "class_balance_weights",
    "class_balanced_frechet_distance",
    "class_total_variation",
    "default_cache_dir",
    "default_digits_extractor",
    "evaluate_samples",
    "feature_statistics",
    "finite_summary",
    "frechet_distance",
    "frechet_distance_from_features",
    "kernel_inception_distance",
    "knn_radii",
    "manifold_coverage",
    "paired_difference",
    "polynomial_mmd2",
    "precision_recall",
    "prompt_following",
    "t_interval",
    "train_classifier",
]
