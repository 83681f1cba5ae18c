"""The backbone ``fit`` trains: a new copy of the user's template, or a UNet sized for the data."""

from __future__ import annotations

import copy

from torch import nn

from .unet import UNet

__all__ = ["build_backbone", "default_unet"]


def default_unet(channels: int, height: int, width: int) -> UNet:
    """A 32-channel UNet with as many levels (up to three) as ``height`` and ``width`` halve."""
    levels = 3 if height % 4 == 0 and width % 4 == 0 else 2 if height % 2 == 0 == width % 2 else 1
    return UNet(in_channels=channels, base_channels=32, channel_mults=(1, 2, 2)[:levels])


def build_backbone(template: nn.Module | None, shape: tuple[int, int, int]) -> nn.Module:
    """A new, untrained backbone for images of ``shape = (C, H, W)``.

    ``None`` gives :func:`default_unet`. A template with ``get_params`` is rebuilt from its
    parameters (``in_channels=None`` filled in from the data), as :func:`sklearn.base.clone`
    would, unless its ``pretrained`` is True (fine-tuning, e.g.
    :func:`conprediff.interop.from_diffusers`); that one, and any other module, is deep-copied,
    weights included. The template is never modified. A backbone's ``sample_size`` (diffusers
    UNets), when set, must be ``(H, W)``.
    """
    C, H, W = shape
    if template is None:
        return default_unet(C, H, W)
    if hasattr(template, "get_params") and getattr(template, "pretrained", False) is not True:
        params = dict(template.get_params(deep=False))
        if params.get("in_channels", C) is None:
            params["in_channels"] = C
        net = type(template)(**params)
    else:
        net = copy.deepcopy(template)
    if getattr(net, "in_channels", C) != C:
        raise ValueError(
            f"backbone in_channels={net.in_channels} does not match the data's {C} channels"
        )
    size = getattr(net, "sample_size", None)
    sides = tuple(size) if isinstance(size, list | tuple) else (size, size)
    if size is not None and sides != (H, W):
        raise ValueError(f"backbone sample_size={size} does not match the data's {H}x{W} "
                         "(a latent model's: its latents'): build the UNet with "
                         f"sample_size={H if H == W else (H, W)}")
    if not hasattr(net, "feature_channels"):
        raise TypeError("backbone must expose feature_channels (see conprediff.backbones.protocol)")
    return net
