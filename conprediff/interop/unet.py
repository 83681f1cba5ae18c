"""diffusers UNets as backbones: ``UNet2DModel`` and ``UNet2DConditionModel`` behind the
library's backbone protocol (:mod:`conprediff.backbones.protocol`)."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from .._params import ModuleParamsMixin
from .._validation import check_bool
from ..text.embedding import TextEmbedding, with_learned_null
from ._load import model_class, plain_config, read_folder_config

__all__ = ["DiffusersUNet", "FeatureTap", "from_diffusers"]

UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


class DiffusersUNet(ModuleParamsMixin, nn.Module):
    r"""A diffusers UNet as a backbone: ``forward(x, t, cond) -> (prediction, features)``.

    ``features`` is the input of the UNet's output convolution ``conv_out`` (after its last
    GroupNorm and SiLU): ``(B, block_out_channels[0], H, W)``, the last hidden map before the
    output projection, read by a forward hook. The conditions map to the UNet's arguments:

    * ``UNet2DModel`` with ``num_class_embeds = K + 1``: a class-conditional backbone with
      ``num_classes = K``; the label ``K`` (and ``cond=None``) is the null label of
      classifier-free guidance, as with :class:`~conprediff.UNet`;
    * ``UNet2DConditionModel``: a text backbone with ``text_channels = cross_attention_dim``;
      a :class:`~conprediff.text.TextEmbedding`'s tokens go to ``encoder_hidden_states``, its
      mask to ``encoder_attention_mask``, its pooled vector to ``class_labels`` when the UNet
      has ``class_embed_type='projection'`` (else it is unused); null rows get a learned null
      token and pooled vector.

    Timesteps are the model's integer ``t`` in ``[0, T)``, as diffusers' schedulers give them.

    Parameters
    ----------
    config : dict
        The UNet's diffusers config (``unet.config``); ``in_channels`` must equal
        ``out_channels``. ``sample_size``, if set, must be the data's (or latents') side.
    class_name : {'UNet2DModel', 'UNet2DConditionModel'}
    pretrained : bool, default=False
        False: ``fit`` trains a new UNet built from ``config`` (seeded, as any backbone).
        True: ``fit`` starts from this module's weights (fine-tuning; what
        :func:`from_diffusers` makes). Saved model files hold the weights either way.

    Raises
    ------
    ImportError
        Without diffusers (``pip install 'conprediff[diffusers]'``).
    ValueError
        ``in_channels`` differs from ``out_channels``, or an unknown ``class_name``.

    Examples
    --------
    >>> from diffusers import UNet2DModel
    >>> unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1,
    ...                    block_out_channels=(32, 64), norm_num_groups=8,
    ...                    down_block_types=("DownBlock2D", "DownBlock2D"),
    ...                    up_block_types=("UpBlock2D", "UpBlock2D"))
    >>> net = DiffusersUNet(unet.config)
    >>> pred, feats = net(torch.randn(2, 1, 16, 16), torch.tensor([0, 999]))
    >>> pred.shape, feats.shape
    (torch.Size([2, 1, 16, 16]), torch.Size([2, 32, 16, 16]))
    """

    def __init__(self, config: dict[str, Any], class_name: str = "UNet2DModel",
                 pretrained: bool = False):
        super().__init__()
        self.config = plain_config(config, "config")
        self.class_name = class_name
        self.pretrained = check_bool(pretrained, "pretrained")
        self.unet = model_class(class_name, UNET_CLASSES, "class_name").from_config(self.config)
        cfg = self.unet.config
        if cfg.in_channels != cfg.out_channels:
            raise ValueError(
                f"backbone: the diffusers UNet's in_channels={cfg.in_channels} and "
                f"out_channels={cfg.out_channels} differ, so it cannot predict the noise of its "
                "input: build it with out_channels equal to in_channels")
        self.in_channels = int(cfg.in_channels)
        self.feature_channels = int(cfg.block_out_channels[0])
        self.sample_size = cfg.sample_size
        conditional = class_name == "UNet2DConditionModel"
        embeds = None if conditional else cfg.num_class_embeds
        self.num_classes = None if not embeds else int(embeds) - 1
        if self.num_classes == 0:
            raise ValueError("backbone: num_class_embeds=1 leaves no class besides the null "
                             "label: use num_class_embeds = classes + 1")
        self.text_channels = int(cfg.cross_attention_dim) if conditional else None
        if conditional:
            self.null_token = nn.Parameter(torch.randn(self.text_channels) * 0.02)
            self.null_pooled = nn.Parameter(torch.zeros(self.text_channels))
        self._tap = FeatureTap(self.unet)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)``; ``cond`` labels ``(B,)``, a TextEmbedding or
        None; returns ``(prediction (B, C, H, W), features (B, F, H, W))``."""
        kwargs: dict[str, Any] = {}
        if self.num_classes is not None:
            kwargs["class_labels"] = torch.full_like(t, self.num_classes) if cond is None else cond
        elif self.text_channels is not None:
            text: TextEmbedding = with_learned_null(cond, x.shape[0], self.null_token,
                                                    self.null_pooled)
            kwargs["encoder_hidden_states"] = text.tokens.to(x.dtype)
            kwargs["encoder_attention_mask"] = text.mask
            if self.unet.config.class_embed_type == "projection":
                kwargs["class_labels"] = text.pooled.to(x.dtype)
        self._tap.features = None
        out = self.unet(x, t, return_dict=False, **kwargs)[0]
        features, self._tap.features = self._tap.features, None
        return out, features

    def __sklearn_clone__(self) -> DiffusersUNet:
        """A pretrained adapter is copied with its weights; else rebuilt from its parameters."""
        if self.pretrained:
            return copy.deepcopy(self)
        return type(self)(**self.get_params())


def _load_unet(folder: str | os.PathLike) -> nn.Module:
    where, config = read_folder_config(folder, "unet")
    name = config.get("_class_name", "UNet2DModel")
    return model_class(name, UNET_CLASSES, f"the UNet in {str(where)!r}").from_pretrained(
        where, local_files_only=True)


def from_diffusers(unet: nn.Module | str | os.PathLike, pretrained: bool = True
                   ) -> DiffusersUNet:
    """A :class:`DiffusersUNet` holding ``unet``'s weights (``pretrained=True``: ``fit``
    fine-tunes them).

    ``unet`` is a ``UNet2DModel``/``UNet2DConditionModel``, or a local folder written by
    ``save_pretrained`` (the UNet's, or a pipeline's with a ``unet/`` subfolder). Nothing is
    downloaded.
    """
    if not isinstance(unet, nn.Module):
        unet = _load_unet(unet)
    config = getattr(unet, "config", None)
    adapter = DiffusersUNet(plain_config(config, "unet.config"), type(unet).__name__, pretrained)
    adapter.unet.load_state_dict(unet.state_dict())
    return adapter


class FeatureTap:
    """Keeps the input of ``unet.conv_out`` at every forward pass of ``unet``: the features a
    context head reads, for a training loop of one's own.

    >>> tap = FeatureTap(unet)                      # doctest: +SKIP
    >>> pred = unet(noisy, t).sample                # doctest: +SKIP
    >>> loss = F.mse_loss(pred, noise) + head(tap.features, t, clean).loss  # doctest: +SKIP

    ``features`` is ``(B, block_out_channels[0], H, W)``, None before the first pass;
    :meth:`remove` takes the hook off.
    """

    def __init__(self, unet: nn.Module):
        conv = getattr(unet, "conv_out", None)
        if not isinstance(conv, nn.Module):
            raise TypeError(f"unet must be a diffusers UNet (with conv_out), got "
                            f"{type(unet).__name__}")
        self.features: torch.Tensor | None = None
        self._handle = conv.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.features = args[0]

    def remove(self) -> None:
        """Stop keeping features."""
        self._handle.remove()
