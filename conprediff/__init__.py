"""conprediff: diffusion models that learn with neighbourhood context prediction.

The public API, re-exported from the modules that define it.
"""

from .autoencoders import KLAutoencoder
from .backbones import Backbone, UNet
from .context import (
    ConstantWeight,
    ContextPrediction,
    DecayingWeight,
    GaussianDecoder,
    NeighborhoodSampler,
    SampledDecoder,
    SNRWeight,
    TruncatedWeight,
)
from .estimator import ConPreDiffModel
from .schedules import NoiseSchedule
from .wasserstein import ExactW2, GaussianW2, SinkhornW2, SlicedW2, SortedW2

__all__ = [
    "Backbone",
    "ConPreDiffModel",
    "ConstantWeight",
    "ContextPrediction",
    "DecayingWeight",
    "ExactW2",
    "GaussianDecoder",
    "GaussianW2",
    "KLAutoencoder",
    "NeighborhoodSampler",
    "NoiseSchedule",
    "SNRWeight",
    "SampledDecoder",
    "SinkhornW2",
    "SlicedW2",
    "SortedW2",
    "TruncatedWeight",
    "UNet",
]
__version__ = "0.1.0"
