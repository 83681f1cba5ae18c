"""Interoperability with Hugging Face ``diffusers`` (the optional extra ``[diffusers]``).

* :class:`DiffusersUNet` and :func:`from_diffusers`: a ``UNet2DModel`` or
  ``UNet2DConditionModel`` as a backbone, new or pretrained;
* :class:`DiffusersAutoencoder`: an ``AutoencoderKL`` as the autoencoder of a latent model;
* :func:`to_diffusers`: a trained model as a folder that ``DDPMPipeline.from_pretrained`` loads;
* :class:`FeatureTap`: the features a context head reads, in a training loop of one's own;
* a diffusers scheduler as ``sampler=`` of :meth:`ConPreDiffModel.sample
  <conprediff.ConPreDiffModel.sample>` (:mod:`conprediff.interop.scheduler`).

diffusers is imported when one of these is first built, so importing this package works
without it. See :doc:`/diffusers`.
"""

from .autoencoder import DiffusersAutoencoder
from .export import import_params, scheduler_config, to_diffusers
from .unet import DiffusersUNet, FeatureTap, from_diffusers

__all__ = ["DiffusersAutoencoder", "DiffusersUNet", "FeatureTap", "from_diffusers",
           "import_params", "scheduler_config", "to_diffusers"]
