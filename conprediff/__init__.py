"""conprediff: diffusion models that learn with neighbourhood context prediction.

The public API, re-exported from the modules that define it.
"""

from .backbones import Backbone, UNet
from .estimator import ConPreDiffModel
from .schedules import NoiseSchedule

__all__ = ["Backbone", "ConPreDiffModel", "NoiseSchedule", "UNet"]
__version__ = "0.1.0"
