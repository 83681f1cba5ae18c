"""Inpainting: the six mask families of RePaint's benchmark and RePaint resampling."""

from .masks import (
    HALF_SIDES,
    MASK_FAMILIES,
    NARROW_BAND,
    WIDE_BAND,
    alternating_lines,
    as_mask,
    expand,
    half,
    make_mask,
    narrow,
    super_resolve,
    wide,
)
from .repaint import SAMPLERS, forward_jump, merge_known, repaint, repaint_schedule

__all__ = [
    "HALF_SIDES",
    "MASK_FAMILIES",
    "NARROW_BAND",
    "SAMPLERS",
    "WIDE_BAND",
    "alternating_lines",
    "as_mask",
    "expand",
    "forward_jump",
    "half",
    "make_mask",
    "merge_known",
    "narrow",
    "repaint",
    "repaint_schedule",
    "super_resolve",
    "wide",
]
