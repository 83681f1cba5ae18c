"""A pixel-space UNet denoiser that returns its last hidden features beside its prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._params import ModuleParamsMixin
from .._validation import check_choice, check_int, check_real
from ..layers import TimestepEmbedding
from ..text.embedding import TextEmbedding, with_learned_null

__all__ = ["UNet"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest divisor of ``channels`` that is at most ``groups`` groups."""
    n = min(groups, channels)
    while channels % n:
        n -= 1
    return nn.GroupNorm(n, channels)


def _check_levels(values: tuple[int, ...], name: str, minimum: int) -> tuple[int, ...]:
    """``values`` as a tuple, each an integer ``>= minimum`` (the tuple itself if it is one)."""
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of integers, got {values!r}") from None
    for i, value in enumerate(values):
        check_int(value, f"{name}[{i}]", minimum)
    return values


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, add the time embedding, GroupNorm-SiLU-Dropout-Conv, plus a skip.

    ``(B, C_in, H, W), (B, E) -> (B, C_out, H, W)``.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the ``H x W`` positions, with a residual connection.

    ``(B, C, H, W) -> (B, C, H, W)``; uses ``scaled_dot_product_attention``.
    """

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention channels {channels} must be divisible by heads {heads}")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(self.norm(x))  # (B, 3 C, H, W): [q | k | v], each heads x d channels
        q, k, v = rearrange(
            qkv, "b (qkv heads d) h w -> qkv b heads (h w) d", qkv=3, heads=self.heads
        )
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H W, d)
        h = rearrange(h, "b heads (h w) d -> b (heads d) h w", h=x.shape[2])
        return x + self.proj(h)


class CrossAttention(nn.Module):
    """Multi-head attention from the ``H x W`` positions to text tokens, with a residual
    connection: ``(B, C, H, W), TextEmbedding (B, L, D) -> (B, C, H, W)``; padded tokens
    (``mask`` False) get no weight."""

    def __init__(self, channels: int, text_channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention channels {channels} must be divisible by heads {heads}")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(text_channels, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, text: TextEmbedding) -> torch.Tensor:
        q = rearrange(self.q(self.norm(x)), "b (heads d) h w -> b heads (h w) d", heads=self.heads)
        k, v = rearrange(self.kv(text.tokens), "b l (kv heads d) -> kv b heads l d",
                         kv=2, heads=self.heads)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=text.mask[:, None, None, :])
        h = rearrange(h, "b heads (h w) d -> b (heads d) h w", h=x.shape[2])
        return x + self.proj(h)


class UNet(ModuleParamsMixin, nn.Module):
    r"""UNet denoiser (Ho et al. 2020; Nichol & Dhariwal 2021) following the backbone protocol.

    ``forward(x, t, cond=None) -> (prediction, features)`` where ``features`` is, by default,
    the last hidden map :math:`h` (after the final GroupNorm and SiLU, before the output
    convolution), of shape ``(B, base_channels, H, W)``: the :math:`h_i` that context
    prediction decodes.

    Parameters
    ----------
    in_channels : int or None, default=None
        Image channels ``C``. ``None`` lets :class:`~conprediff.estimator.ConPreDiffModel` set it
        from the data.
    base_channels : int, default=32
        Channels at full resolution; also ``feature_channels``.
    channel_mults : tuple of int, default=(1, 2, 2)
        Channel multiplier per resolution level; each level after the first halves ``H`` and
        ``W``, so ``H`` and ``W`` must be divisible by ``2 ** (len(channel_mults) - 1)``.
    num_res_blocks : int, default=1
        Residual blocks per level on the way down (one more on the way up, as in DDPM).
    attention_levels : tuple of int, default=()
        Levels (0 = full resolution) with self-attention after each residual block; the middle
        block always has one.
    heads : int, default=4
        Attention heads; every width that has attention (the middle block, and the levels in
        ``attention_levels``) must be divisible by it.
    dropout : float, default=0.0
        Dropout probability inside the residual blocks, in ``[0, 1]``.
    groups : int, default=8
        GroupNorm groups: a layer of ``c`` channels uses the largest divisor of ``c`` that is at
        most ``groups`` (8 groups for 32 channels, 6 for 12, 5 for 10).
    features : {'output', 'mid'}, default='output'
        Which hidden map is returned as ``features`` (what a context decoder reads). 'output':
        the last one, one convolution before the prediction (the paper's choice). 'mid': the
        middle block's output (after attention, at the lowest resolution, ``base_channels *
        channel_mults[-1]`` channels), repeated to the input grid (nearest): the context term
        then shapes the bottleneck's representation instead of pulling on the output layer's
        input. The prediction and the parameters are the same either way, so a baseline does
        not depend on it.
    num_classes : int or None, default=None
        If set, ``cond`` may be ``(B,)`` integer labels in ``[0, num_classes]``; the label
        ``num_classes`` means "no label", as does ``cond=None``: the unconditional model of
        classifier-free guidance. :class:`~conprediff.ConPreDiffModel` then trains on labels
        (``fit(images, y)``, with ``label_dropout``) and samples with ``labels`` and
        ``guidance_scale``.
    text_channels : int or None, default=None
        If set, ``cond`` may be a :class:`~conprediff.text.TextEmbedding` of this width ``D``:
        cross-attention to its tokens follows every self-attention (the middle block's, and
        those of ``attention_levels``), and its pooled vector is added to the time embedding.
        Null rows (and ``cond=None``) use a learned null token and pooled vector, the
        unconditional model of classifier-free guidance. See :doc:`/text`.

    Raises
    ------
    TypeError
        An argument of the wrong type (integers: Python or numpy integers, not ``bool``).
    ValueError
        An argument out of range (widths, blocks, heads, groups and classes at least 1).

    Examples
    --------
    >>> net = UNet(in_channels=1, base_channels=32, channel_mults=(1, 2))
    >>> pred, feats = net(torch.randn(2, 1, 16, 16), torch.tensor([0, 999]))
    >>> pred.shape, feats.shape
    (torch.Size([2, 1, 16, 16]), torch.Size([2, 32, 16, 16]))
    """

    def __init__(
        self,
        in_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (),
        heads: int = 4,
        dropout: float = 0.0,
        groups: int = 8,
        num_classes: int | None = None,
        features: str = "output",
        text_channels: int | None = None,
    ):
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", 1, optional=True)
        self.base_channels = check_int(base_channels, "base_channels", 1)
        self.channel_mults = _check_levels(channel_mults, "channel_mults", 1)
        self.num_res_blocks = check_int(num_res_blocks, "num_res_blocks", 1)
        self.attention_levels = _check_levels(attention_levels, "attention_levels", 0)
        self.heads = check_int(heads, "heads", 1)
        self.dropout = check_real(dropout, "dropout", 0.0, 1.0)
        self.groups = check_int(groups, "groups", 1)
        self.num_classes = check_int(num_classes, "num_classes", 1, optional=True)
        self.features = check_choice(features, "features", ("output", "mid"))
        self.text_channels = check_int(text_channels, "text_channels", 1, optional=True)
        if self.num_classes is not None and self.text_channels is not None:
            raise ValueError("num_classes and text_channels: a UNet takes labels or text, not both")
        if not self.channel_mults:
            raise ValueError("channel_mults must not be empty")
        if self.in_channels is not None:  # None: built by ConPreDiffModel from the data
            self._build_layers()

    def _build_layers(self) -> None:
        """Create the layers (in a fixed order: the random initialisation depends on it)."""
        base_channels, groups, dropout = self.base_channels, self.groups, self.dropout
        emb_dim = 4 * base_channels * self.channel_mults[0]
        self.time_embed = TimestepEmbedding(base_channels, emb_dim)
        self.class_embed = (
            nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes is not None else None
        )
        self.conv_in = nn.Conv2d(self.in_channels, base_channels, 3, padding=1)

        chans = [base_channels * m for m in self.channel_mults]
        self.down = nn.ModuleList()
        skips = [base_channels]
        c = base_channels
        for level, c_out in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(self.num_res_blocks):
                blocks.append(self._block(c, c_out, emb_dim, level))
                c = c_out
                skips.append(c)
            down = None
            if level < len(chans) - 1:
                down = nn.Conv2d(c, c, 3, stride=2, padding=1)
                skips.append(c)
            self.down.append(nn.ModuleDict({"blocks": blocks, **({"down": down} if down else {})}))

        c_mid = c
        self.mid1 = ResBlock(c, c, emb_dim, groups, dropout)
        self.mid_attn = SelfAttention(c, self.heads, groups)
        self.mid2 = ResBlock(c, c, emb_dim, groups, dropout)

        self.up = nn.ModuleList()
        for level in reversed(range(len(chans))):
            c_out = chans[level]
            blocks = nn.ModuleList()
            for _ in range(self.num_res_blocks + 1):
                blocks.append(self._block(c + skips.pop(), c_out, emb_dim, level))
                c = c_out
            up = nn.Conv2d(c, c, 3, padding=1) if level > 0 else None
            self.up.append(nn.ModuleDict({"blocks": blocks, **({"up": up} if up else {})}))

        self.norm_out = _norm(c, groups)
        self.conv_out = nn.Conv2d(c, self.in_channels, 3, padding=1)
        if self.text_channels is not None:  # built last: a UNet without text is unchanged
            self.mid_cross = self._cross(c_mid)
            self.text_pooled = nn.Linear(self.text_channels, emb_dim)
            self.null_token = nn.Parameter(torch.randn(self.text_channels) * 0.02)
            self.null_pooled = nn.Parameter(torch.zeros(self.text_channels))
            for level in (*self.down, *self.up):
                for block in level["blocks"]:
                    if block.attn is not None:
                        block.cross = self._cross(block.attn.proj.out_channels)

    def _cross(self, channels: int) -> CrossAttention:
        return CrossAttention(channels, self.text_channels, self.heads, self.groups)

    def _block(self, c_in: int, c_out: int, emb_dim: int, level: int) -> nn.Module:
        res = ResBlock(c_in, c_out, emb_dim, self.groups, self.dropout)
        if level in self.attention_levels:
            return _ResAttn(res, SelfAttention(c_out, self.heads, self.groups))
        return _ResAttn(res, None)

    @property
    def feature_channels(self) -> int:
        """Channels ``F`` of the returned features: ``base_channels * channel_mults[0]``, or
        ``base_channels * channel_mults[-1]`` with ``features='mid'``."""
        mult = self.channel_mults[-1] if self.features == "mid" else self.channel_mults[0]
        return self.base_channels * mult

    @property
    def downsample_factor(self) -> int:
        """``H`` and ``W`` must be divisible by this."""
        return 2 ** (len(self.channel_mults) - 1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C, H, W)`` noisy input.
        t : torch.Tensor
            ``(B,)`` integer timesteps.
        cond : torch.Tensor or TextEmbedding, optional
            ``(B,)`` class labels when ``num_classes`` is set; a
            :class:`~conprediff.text.TextEmbedding` of ``B`` prompts when ``text_channels`` is.

        Returns
        -------
        prediction : torch.Tensor
            ``(B, C, H, W)``.
        features : torch.Tensor
            ``(B, feature_channels, H, W)``, the hidden map chosen by ``features``.
        """
        if self.in_channels is None:
            raise RuntimeError("UNet(in_channels=None) is a template: set in_channels to use it")
        f = self.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"x height and width must be divisible by {f} for {len(self.channel_mults)} "
                f"levels, got {tuple(x.shape[-2:])}"
            )
        emb = self.time_embed(t)
        text = None
        if self.class_embed is not None:
            if cond is None:
                cond = torch.full_like(t, self.num_classes)
            emb = emb + self.class_embed(cond.long())
        elif self.text_channels is not None:
            text = self._text(cond, x.shape[0], x.device)
            emb = emb + self.text_pooled(text.pooled)
        h = self.conv_in(x)
        hs = [h]
        for level in self.down:
            for block in level["blocks"]:
                h = block(h, emb, text)
                hs.append(h)
            if "down" in level:
                h = level["down"](h)
                hs.append(h)
        h = self.mid_attn(self.mid1(h, emb))
        if text is not None:
            h = self.mid_cross(h, text)
        h = self.mid2(h, emb)
        mid = h
        for level in self.up:
            for block in level["blocks"]:
                h = block(torch.cat([h, hs.pop()], dim=1), emb, text)
            if "up" in level:
                h = level["up"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        features = F.silu(self.norm_out(h))
        out = self.conv_out(features)
        if self.features == "mid":
            features = F.interpolate(mid, scale_factor=float(f), mode="nearest") if f > 1 else mid
        return out, features

    def _text(self, cond: TextEmbedding | None, batch: int, device: torch.device
              ) -> TextEmbedding:
        """``cond`` with its null rows (all of it if None) replaced by the learned null token
        and pooled vector (:func:`~conprediff.text.embedding.with_learned_null`)."""
        return with_learned_null(cond, batch, self.null_token, self.null_pooled)


class _ResAttn(nn.Module):
    def __init__(self, res: ResBlock, attn: SelfAttention | None):
        super().__init__()
        self.res = res
        self.attn = attn
        self.cross: CrossAttention | None = None  # set by a text UNet after the attention

    def forward(self, x: torch.Tensor, emb: torch.Tensor,
                text: TextEmbedding | None = None) -> torch.Tensor:
        h = self.res(x, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.cross is not None and text is not None:
            h = self.cross(h, text)
        return h
