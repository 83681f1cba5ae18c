"""Denoiser backbones and the protocol a custom backbone follows."""

from .protocol import Backbone, check_backbone_output
from .unet import UNet

__all__ = ["Backbone", "UNet", "check_backbone_output"]
