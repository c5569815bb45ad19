"""FeMaSR as a tokensr model: UGTSR's ``femasr`` layout with UGTSR's modules switched off.

The network (FeMaSR's LQ encoder with Swin groups, nearest-code matching against the HQ prior's
codebook, the prior's decoder with the LQ features added at every stage above the code grid)
lives in :mod:`tokensr.methods.ugtsr`; this module adds what is FeMaSR's own: the config of
the released models, the ``femasr`` model type (so a converted folder runs as FeMaSR, with no
colour fix) and the authors' test-time padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from tokensr.methods.ugtsr.model import PRESETS, UGTSR, UGTSRConfig
from tokensr.methods.ugtsr.prior import PriorConfig

# UGTSR's modules, off: plain nearest matching, no Align-Attention, no uncertainty head
FEMASR_SWITCHES: dict[str, Any] = dict(top_k=1, align_attention=False, uncertainty_head=False)
# The authors' test() pads the LR so the token grid holds a multiple of this many tokens, plus
# one more block (8 // scale * 8 LR pixels for their f = 8 prior, i.e. one 8-token Swin window)
PAD_TOKENS = 8


def femasr_config(scale: int, prior: PriorConfig, **sizes: Any) -> UGTSRConfig:
    """The config of a FeMaSR model: the ``paper`` preset's sizes (FeMaSR's), ``sizes``
    overriding them (a converter reads them from the checkpoint), UGTSR's modules off."""
    values = {**PRESETS["paper"], **sizes, **FEMASR_SWITCHES, "layout": "femasr"}
    values.pop("scale", None)
    return UGTSRConfig(scale=int(scale), tokenizer=dataclasses.asdict(prior), **values)


def mirror_pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Pad the bottom/right of ``[B, C, h, w]`` with the image's mirror image (edge row
    repeated: ``cat([x, flip(x)])``, as FeMaSR's test()); repeated when the pad is larger."""
    while ph > 0:
        take = min(ph, x.shape[-2])
        x = torch.cat([x, torch.flip(x, [2])[:, :, :take]], 2)
        ph -= take
    while pw > 0:
        take = min(pw, x.shape[-1])
        x = torch.cat([x, torch.flip(x, [3])[:, :, :, :take]], 3)
        pw -= take
    return x


class FeMaSR(UGTSR):
    """A UGTSR network in FeMaSR's configuration, saved as ``model_type "femasr"``."""

    model_type: ClassVar[str] = "femasr"

    def __init__(self, config: UGTSRConfig) -> None:
        if config.layout != "femasr" or config.top_k != 1 or config.align_attention or config.uncertainty_head:
            raise ValueError(
                "a FeMaSR model has the femasr layout, top_k=1, no Align-Attention and no uncertainty head "
                f"(got layout={config.layout}, top_k={config.top_k}, align_attention={config.align_attention}, "
                f"uncertainty_head={config.uncertainty_head})"
            )
        super().__init__(config)

    @property
    def authors_pad_multiple(self) -> int:
        """LR block the authors' test() pads to: ``PAD_TOKENS`` tokens of ``f / scale`` pixels."""
        return max(1, self.tokenizer.factor // self.scale) * PAD_TOKENS

    @torch.no_grad()
    def upscale(self, lr01: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
        """LR batch of any size -> SR image in [0, 1], ``scale`` times its size, padded as the
        authors' test(): mirror padding at the bottom/right to the next multiple of
        :attr:`authors_pad_multiple` strictly above each side (a whole block more when a side
        already is a multiple), output cropped and clamped."""
        h, w = lr01.shape[-2:]
        m = self.authors_pad_multiple
        x = mirror_pad(lr01, (h // m + 1) * m - h, (w // m + 1) * m - w)
        out = self(x, top_k).image
        return out[..., : h * self.scale, : w * self.scale].clamp(0, 1)


__all__ = ["FEMASR_SWITCHES", "FeMaSR", "PAD_TOKENS", "femasr_config", "mirror_pad"]
