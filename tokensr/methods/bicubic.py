"""Bicubic interpolation: the baseline every learned method must beat, and the default method.

It has no weights and no options; options meant for other methods (``steps``, ``alpha``, ...)
are accepted and ignored so that one command line works for every method.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from tokensr.errors import OptionError

log = logging.getLogger(__name__)


class Bicubic:
    """``lr [B, 3, h, w] -> [B, 3, h*scale, w*scale]`` by bicubic interpolation, clamped to [0, 1]."""

    name = "bicubic"

    def __init__(self, scale: int = 4, device: str | torch.device = "cpu") -> None:
        if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
            raise OptionError(f"bicubic: scale must be a whole number >= 1, got {scale!r}")
        self.scale = scale
        self.device = torch.device(device)

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.ndim != 4:
            raise ValueError(f"expected a [B, C, h, w] tensor, got shape {tuple(lr.shape)}")
        if self.scale == 1:
            return lr.clamp(0.0, 1.0)
        h, w = lr.shape[-2:]
        out = F.interpolate(lr, size=(h * self.scale, w * self.scale), mode="bicubic", align_corners=False)
        return out.clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"Bicubic(scale={self.scale})"


def build(scale: int = 4, weights: str | None = None, device: str = "cpu", **options: Any) -> Bicubic:
    """Factory used by ``tokensr.methods.build_method``; ``weights`` and ``options`` are ignored."""
    if weights is not None:
        raise OptionError("bicubic has no weights; leave out --weights or choose another --method")
    if options:
        log.debug("bicubic ignores options: %s", ", ".join(sorted(options)))
    return Bicubic(scale=scale, device=device)
