"""Feature networks for the evaluation metrics.

Pretrained Inception weights cannot be downloaded here, so every metric takes its feature network
as a component (:class:`FeatureExtractor`):

* a user module: any ``torch.nn.Module`` with a ``features(x) -> (N, D)`` method, or any callable
  returning ``(N, D)`` (or ``(N, D, 1, 1)``, which is flattened);
* a local safetensors weights file plus the module to load it into (e.g. an Inception network the
  user has on disk);
* by default, a small :class:`LeNetClassifier` (:mod:`.network`) trained on the data set itself
  (:func:`train_classifier`, :mod:`.training`) and cached on disk as safetensors plus a JSON file
  with its held-out accuracy and the data fingerprint (:mod:`.cache`) -- the usual practice for
  MNIST-scale FID. No pickle is used anywhere.

Images are float tensors or arrays of shape ``(N, C, H, W)`` (or ``(N, H, W)`` for grey images)
with values in [-1, 1].
"""

from .cache import CACHE_ENV_VAR, ClassifierCache, data_fingerprint, default_cache_dir
from .extractor import FeatureExtractor, default_digits_extractor
from .network import LeNetClassifier
from .training import train_classifier

__all__ = [
    "CACHE_ENV_VAR",
    "ClassifierCache",
    "FeatureExtractor",
    "LeNetClassifier",
    "data_fingerprint",
    "default_cache_dir",
    "default_digits_extractor",
    "train_classifier",
]
