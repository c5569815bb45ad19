"""FeMaSR's high-resolution prior (HRP, the "HQ stage"): a VQGAN in FeMaSR's layout, the codebook
and decoder that FeMaSR, and UGTSR's ``paper`` preset, match LR features against.

It differs from the taming-style :class:`tokensr.nn.vqgan.VQGAN` in ways that change its
weights and maths, so it is a class of its own rather than a VQGAN option:

- pixels are in [0, 1] inside the network (no ``* 2 - 1``), and the decoder ends in one 3x3
  conv (no GroupNorm + swish before it);
- the encoder starts with a 4x4 conv (padding 1: one pixel smaller), then per level a stride-2
  3x3 conv (symmetric padding 1) and ResNet blocks; no bottleneck attention;
- the decoder starts with a 3x3 conv from the code vectors (FeMaSR's "after-quant" conv), then
  per level: nearest x2, a 3x3 conv to the level's width, ResNet blocks;
- the codebook is a plain learned embedding (no EMA) and codes are found by squared distance.

Widths are one tuple ``channels`` from full resolution to the code grid, e.g. FeMaSR's
``(64, 128, 256, 256)`` (its widths at 256, 128, 64 and 32 px of a 256-px crop); the token
factor is ``2 ** (len(channels) - 1)``. The ResNet blocks are tokensr's pre-activation
:class:`tokensr.nn.blocks.ResnetBlock` (GN32 + swish), the same maths as FeMaSR's.

The decoder offers the stage vocabulary of :class:`tokensr.nn.vqgan.Decoder` (``conv_in``,
``mid``, ``up[i]``, :meth:`PriorDecoder.run_stage`) plus :meth:`PriorDecoder.head`, so UGTSR walks
either decoder the same way. A prior converted from an SR checkpoint alone has no encoder
(``encoder=False``): it decodes codes but cannot tokenize images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.nn.blocks import ResnetBlock
from tokensr.nn.quantizer import VectorQuantizer
from tokensr.nn.vqgan import TokenizerMixin
from tokensr.pretrained import PretrainedMixin


@dataclass
class PriorConfig:
    """Sizes of a FeMaSR-layout prior (defaults = the released FeMaSR HRP model)."""

    in_channels: int = 3
    channels: tuple[int, ...] = (64, 128, 256, 256)  # widths from full resolution to the code grid
    res_blocks: int = 2  # ResNet blocks per level, encoder and decoder
    code_dim: int = 512
    codebook_size: int = 1024
    beta: float = 0.25
    encoder: bool = True  # False: decoder and codebook only (converted from an SR checkpoint)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


class DownLevel(nn.Module):
    """Halve the resolution (stride-2 3x3 conv, padding 1) to ``c_out``, then ResNet blocks."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*(ResnetBlock(c_out, c_out) for _ in range(n_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv(x))


class UpLevel(nn.Module):
    """Double the resolution (nearest), a 3x3 conv to ``c_out``, then ResNet blocks."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.blocks = nn.Sequential(*(ResnetBlock(c_out, c_out) for _ in range(n_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))


class PriorEncoder(nn.Module):
    """Image in [0, 1] (sides multiples of the factor) -> code-grid features ``channels[-1]`` wide."""

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        chs = cfg.channels
        self.in_conv = nn.Conv2d(cfg.in_channels, chs[0], 4, padding=1)  # 4x4, padding 1: one pixel smaller
        self.down = nn.ModuleList(DownLevel(chs[j], chs[j + 1], cfg.res_blocks) for j in range(len(chs) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.in_conv(x)
        for level in self.down:
            h = level(h)
        return h


class PriorDecoder(nn.Module):
    """Code vectors -> image in [0, 1]; ``up[0]`` works on the code grid, ``up[-1]`` ends at full size."""

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        chs = cfg.channels
        self.conv_in = nn.Conv2d(cfg.code_dim, chs[-1], 3, padding=1)
        self.mid = nn.Identity()  # FeMaSR has no bottleneck blocks; kept for the shared vocabulary
        self.up = nn.ModuleList(UpLevel(chs[i], chs[i - 1], cfg.res_blocks) for i in reversed(range(1, len(chs))))
        self.conv_out = nn.Conv2d(chs[0], cfg.in_channels, 3, padding=1)

    @property
    def stage_channels(self) -> list[int]:
        """Input width of every stage ``up[i]``."""
        return [int(cast(UpLevel, stage).conv.in_channels) for stage in self.up]

    @property
    def out_channels(self) -> int:
        """Width of the last stage's output (what :meth:`head` reads)."""
        return int(self.conv_out.in_channels)

    def run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self.up[i](h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final features -> image: one 3x3 conv (no norm or activation before it)."""
        return self.conv_out(h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in range(len(self.up)):
            h = self.run_stage(i, h)
        return self.head(h)


class FeMaSRPrior(TokenizerMixin, nn.Module, PretrainedMixin):
    """The HQ prior: encoder -> 1x1 conv -> codebook -> decoder, all in [0, 1] pixels.

    Offers the tokenizer vocabulary of :class:`tokensr.nn.vqgan.VQGAN` (``encode``,
    ``decode_indices``, ``tokenize``, ``reconstruct`` and ``forward`` come from
    :class:`~tokensr.nn.vqgan.TokenizerMixin`), with images in [0, 1] throughout.
    """

    config_class: ClassVar[type] = PriorConfig
    model_type: ClassVar[str] = "femasr-prior"

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        if len(config.channels) < 2:
            raise ValueError(f"channels needs at least two widths (full resolution, code grid), got {config.channels}")
        self.encoder = PriorEncoder(config) if config.encoder else None
        self.quant_conv = nn.Conv2d(config.channels[-1], config.code_dim, 1) if config.encoder else None
        self.quantizer = VectorQuantizer(config.codebook_size, config.code_dim, beta=config.beta, ema=False)
        self.post_quant_conv = nn.Identity()  # FeMaSR's after-quant conv is decoder.conv_in
        self.decoder = PriorDecoder(config)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    def _need_encoder(self) -> tuple[PriorEncoder, nn.Conv2d]:
        if self.encoder is None or self.quant_conv is None:
            raise ValueError(
                "this FeMaSR prior has no encoder (it was converted from an SR checkpoint alone); "
                "convert it together with FeMaSR_HRP_model_g.pth to tokenize images"
            )
        return self.encoder, self.quant_conv

    def encode_continuous(self, x01: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latents ``[B, code_dim, H/f, W/f]`` of an image in [0, 1]."""
        encoder, quant_conv = self._need_encoder()
        return quant_conv(encoder(x01))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Code vectors -> image on the [0, 1] scale (not clamped)."""
        return self.decoder(self.post_quant_conv(z_q))


__all__ = ["DownLevel", "FeMaSRPrior", "PriorConfig", "PriorDecoder", "PriorEncoder", "UpLevel"]
