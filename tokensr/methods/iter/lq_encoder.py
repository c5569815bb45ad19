"""ITER's LQ encoder ``E_l``: LR image -> HQ token logits (distortion removal, paper Eq. 2).

The encoder works at LR resolution and changes it only as far as the token grid requires:
the HR image of an ``h x w`` LR image is ``s*h x s*w`` and the tokenizer's grid for it is
``s*h/f x s*w/f``. So the encoder has ``log2(f / s)`` stride-2 downsampling stages when
``f > s`` (f=8 at x4: one; f=4 at x2: one), none when ``f = s`` (the bundled f=4 tokenizer at
x4), and ``log2(s / f)`` x2 upsampling stages when ``f < s``. Each stage is a resampling conv
and two ResNet blocks (channels double going down and halve going up). Then a 1x1 conv to
``dim`` channels, ``groups`` residual Swin groups, and a 1x1 head with one logit per code.

The ``paper`` preset follows the authors' released ``E_l`` layer for layer, through options whose
defaults keep the earlier layout: the input stays in [0, 1] (``signed_input=False``), the ResNet
blocks use LeakyReLU(0.2) (``act``), the Swin groups sit inside 3x3 convs with a residual and
their MLPs carry a squeeze-and-excitation gate (``swin_convs``, ``mlp_se``: SwinIR-style
``SwinLayers``), and the head is a bare 1x1 conv (``head_norm=False``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.nn.blocks import ResnetBlock, group_norm
from tokensr.nn.swin import SwinGroup, SwinStack

ACTIVATIONS = ("silu", "leaky_relu")


def resample_log2(factor: int, scale: int) -> int:
    """``log2(f / s)``: >0 downsampling stages, <0 upsampling stages (both powers of two)."""
    for name, v in (("tokenizer factor", factor), ("scale", scale)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"ITER needs a power-of-two {name}, got {v}")
    return int(round(math.log2(factor / scale)))


def lr_multiple(factor: int, scale: int) -> int:
    """Smallest LR side ``m`` with ``m * scale`` a multiple of ``factor`` (LR sizes must be multiples of it)."""
    return factor // math.gcd(factor, scale)


@dataclass
class LQEncoderConfig:
    codebook_size: int = 1024  # K: one logit per code (set from the tokenizer)
    resample: int = 0  # log2(f / scale), set from the tokenizer and the scale
    ch: int = 64  # conv width at LR resolution
    res_blocks: int = 2  # ResNet blocks per resampling stage
    dim: int = 128  # Swin width
    groups: int = 2  # residual Swin groups
    depth: int = 4  # Swin blocks per group
    heads: int = 4
    window: int = 8
    mlp_ratio: float = 2.0
    mlp_se: bool = False  # squeeze-and-excitation gate in the Swin MLPs (the released E_l)
    signed_input: bool = True  # map the [0, 1] input to [-1, 1] first (False: the released E_l)
    act: str = "silu"  # ResNet block activation: "silu" or "leaky_relu" (slope 0.2, the released E_l)
    swin_convs: bool = False  # 3x3 convs into and out of the Swin groups, with a residual (SwinStack)
    head_norm: bool = True  # GroupNorm + swish before the logit conv (False: a bare 1x1 conv)


class LeakyResnetBlock(ResnetBlock):
    """:class:`ResnetBlock` with LeakyReLU(0.2) in place of swish (the released ``E_l``'s blocks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.norm1(x), 0.2))
        h = self.conv2(self.dropout(F.leaky_relu(self.norm2(h), 0.2)))
        return self.skip(x) + h


class LQEncoder(nn.Module):
    """``[B, 3, h, w]`` in [0, 1] -> token logits ``[B, K, h * s / f, w * s / f]``."""

    def __init__(self, config: LQEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got '{c.act}'")
        block = LeakyResnetBlock if c.act == "leaky_relu" else ResnetBlock
        self.conv_in = nn.Conv2d(3, c.ch, 3, padding=1)
        stages: list[nn.Module] = []
        ch = c.ch
        for _ in range(abs(c.resample)):
            if c.resample > 0:
                out = ch * 2
                resample: nn.Module = nn.Conv2d(ch, out, 3, stride=2, padding=1)
            else:
                out = max(ch // 2, 8)
                resample = nn.Sequential(
                    nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, out, 3, padding=1)
                )
            stages.append(nn.Sequential(resample, *[block(out, out) for _ in range(c.res_blocks)]))
            ch = out
        if not stages:
            stages.append(nn.Sequential(*[block(ch, ch) for _ in range(c.res_blocks)]))
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Conv2d(ch, c.dim, 1)
        self.swin: nn.Module
        if c.swin_convs:
            self.swin = SwinStack(c.dim, c.dim, c.groups, c.depth, c.heads, c.window, c.mlp_ratio, c.mlp_se)
        else:
            self.swin = nn.Sequential(
                *[SwinGroup(c.dim, c.depth, c.heads, c.window, c.mlp_ratio, c.mlp_se) for _ in range(c.groups)]
            )
        self.norm_out = group_norm(c.dim) if c.head_norm else None
        self.head = nn.Conv2d(c.dim, c.codebook_size, 1)

    def forward(self, lr01: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(lr01 * 2 - 1 if self.config.signed_input else lr01)
        h = self.swin(self.proj(self.stages(h)))
        if self.norm_out is not None:
            h = F.silu(self.norm_out(h))
        return self.head(h)


__all__ = ["ACTIVATIONS", "LQEncoder", "LQEncoderConfig", "LeakyResnetBlock", "lr_multiple", "resample_log2"]
