"""Context prediction: neighbourhoods, context decoders, lambda_t schedules and the context term.

See :class:`~conprediff.context.loss.ContextPrediction` for the objective.
"""

from conprediff.context.decoders import GaussianDecoder, SampledDecoder
from conprediff.context.loss import ContextHead, ContextOutput, ContextPrediction
from conprediff.context.neighborhoods import Neighborhood, NeighborhoodSampler, reflect_index
from conprediff.context.weights import (
    ConstantWeight,
    DecayingWeight,
    SNRWeight,
    TruncatedWeight,
    resolve_weight,
)

__all__ = [
    "ConstantWeight",
    "ContextHead",
    "ContextOutput",
    "ContextPrediction",
    "DecayingWeight",
    "GaussianDecoder",
    "Neighborhood",
    "NeighborhoodSampler",
    "SNRWeight",
    "SampledDecoder",
    "TruncatedWeight",
    "reflect_index",
    "resolve_weight",
]
