"""UGTSR's LQ side: the encoder from the LR image to token-grid features (with the warm-start
bridge that lets an x2 encoder start as a trained x4 one), and the pyramid that carries those
features up to the decoder stages they are fused into.

Two layouts: :class:`LQEncoder` + :class:`LQPyramid` (tokensr's, around a taming VQGAN) and
:class:`FeMaSRLQEncoder` + :class:`FeMaSRPyramid` (FeMaSR's LQ network, around a
:class:`tokensr.methods.ugtsr.prior.FeMaSRPrior`; its weights convert one to one).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.methods.ugtsr.prior import DownLevel, UpLevel
from tokensr.nn.blocks import Downsample, ResnetBlock, Upsample, group_norm
from tokensr.nn.swin import SwinGroup

if TYPE_CHECKING:
    from tokensr.methods.ugtsr.model import UGTSRConfig
    from tokensr.methods.ugtsr.prior import PriorConfig


def _log2_ratio(a: int, b: int) -> int:
    """``log2(a / b)`` for ``a >= b`` powers-of-two apart; ValueError otherwise."""
    if a % b or (a // b) & (a // b - 1):
        raise ValueError(f"{a} / {b} is not a power of two")
    return int(math.log2(a // b))


class LQEncoder(nn.Module):
    """LR image ([-1, 1]) -> token-grid features ``feat`` and code-space features ``z`` (z^l)."""

    def __init__(self, c: UGTSRConfig, code_dim: int, factor: int, scale: int) -> None:
        super().__init__()
        ch = c.enc_ch
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        layers: list[nn.Module] = [ResnetBlock(ch, ch) for _ in range(c.enc_res_blocks)]
        if factor >= scale:
            self.n_down, self.n_up = _log2_ratio(factor, scale), 0
            for _ in range(self.n_down):
                out = min(ch * 2, c.enc_ch_max)
                layers += [Downsample(ch), ResnetBlock(ch, out)]
                layers += [ResnetBlock(out, out) for _ in range(c.enc_res_blocks - 1)]
                ch = out
        else:
            self.n_down, self.n_up = 0, _log2_ratio(scale, factor)
            for _ in range(self.n_up):
                layers += [Upsample(ch), ResnetBlock(ch, ch)]
        self.body = nn.Sequential(*layers)
        self.to_swin = nn.Conv2d(ch, c.swin_dim, 3, padding=1)
        self.swin = nn.Sequential(
            *(SwinGroup(c.swin_dim, c.swin_depth, c.swin_heads, c.swin_window) for _ in range(c.swin_groups))
        )
        self.norm_out = group_norm(c.swin_dim)
        self.to_code = nn.Conv2d(c.swin_dim, code_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.swin(self.to_swin(self.body(self.conv_in(x))))
        return feat, self.to_code(F.silu(self.norm_out(feat)))

    @torch.no_grad()
    def bridge(self, copied: set[str], source: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
        """Function-preserving start for body layers that a warm start left fresh after the copied
        ones (an x2 encoder started from an x4 one has one more downsampling).

        Each fresh :class:`Downsample` becomes a 2x2 average pool; each fresh ResNet block becomes
        the identity, its residual branch zeroed and a widening skip set to ``[I; 0]``; a fresh
        ``to_swin`` that is wider than the source's takes the source's weights on its first input
        channels. The x2 encoder then computes the x4 encoder with an average pool after its
        LR-resolution blocks. The remaining ``to_swin`` weights keep their random start (they
        read channels that are zero at first, so the function is unchanged, and they let those
        channels receive gradients). Returns the names of the parameters set here.
        """
        set_here: list[str] = []
        layers = list(self.body)
        body = f"{prefix}body."
        copied_layers = {int(k[len(body) :].split(".")[0]) for k in copied if k.startswith(body)}
        first_fresh = next((i for i in range(len(layers)) if i not in copied_layers), len(layers))
        if first_fresh == 0 or any(i > first_fresh for i in copied_layers):
            return set_here  # nothing copied before the fresh layers, or copied ones after them
        for i in range(first_fresh, len(layers)):
            layer, name = layers[i], f"{prefix}body.{i}."
            if isinstance(layer, Downsample):
                w = layer.conv.weight
                w.zero_()
                eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
                w[:, :, :2, :2] = 0.25 * eye[:, :, None, None]
                assert layer.conv.bias is not None
                layer.conv.bias.zero_()
                set_here += [name + "conv.weight", name + "conv.bias"]
            elif isinstance(layer, ResnetBlock):
                layer.conv2.weight.zero_()
                assert layer.conv2.bias is not None
                layer.conv2.bias.zero_()
                set_here += [name + "conv2.weight", name + "conv2.bias"]
                if isinstance(layer.skip, nn.Conv2d):
                    out_ch, in_ch = layer.skip.weight.shape[:2]
                    layer.skip.weight.zero_()
                    layer.skip.weight[:in_ch, :, 0, 0] = torch.eye(
                        in_ch, dtype=layer.skip.weight.dtype, device=layer.skip.weight.device
                    )
                    assert layer.skip.bias is not None and out_ch >= in_ch
                    layer.skip.bias.zero_()
                    set_here += [name + "skip.weight", name + "skip.bias"]
            else:  # an upsampling or other layer: no identity start known; leave the bridge here
                return set_here
        key = f"{prefix}to_swin.weight"
        src = source.get(key)
        w = self.to_swin.weight
        if (
            key not in copied
            and src is not None
            and src.shape[0] == w.shape[0]
            and src.shape[2:] == w.shape[2:]
            and src.shape[1] < w.shape[1]
        ):
            w[:, : src.shape[1]] = src.to(w)
            set_here.append(key)  # (its bias has the same shape, so the warm start copied it)
        return set_here


class LQPyramid(nn.Module):
    """Upsample the token-level LQ features to the input resolution of decoder stages
    ``1 .. max_stage`` (nearest x2 + conv, then a ResNet block to that stage's width)."""

    def __init__(self, in_dim: int, stage_channels: list[int], max_stage: int) -> None:
        super().__init__()
        self.steps = nn.ModuleList()
        ch = in_dim
        for j in range(1, max_stage + 1):
            out = stage_channels[j]
            self.steps.append(nn.Sequential(Upsample(ch), ResnetBlock(ch, out)))
            ch = out

    def forward(self, feat: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps for stages 1, 2, ... (index ``j - 1``)."""
        outs = []
        for step in self.steps:
            feat = step(feat)
            outs.append(feat)
        return outs


class FeMaSRLQEncoder(nn.Module):
    """FeMaSR's LQ encoder: LR image in [0, 1] -> token-grid features ``feat`` and ``z`` (z^l).

    The LR pixel sits at level ``log2(scale)`` of the prior's width table (``channels``, full
    resolution first): a 4x4 conv (padding 1) to that level's width, ``log2(f / scale)``
    :class:`~tokensr.methods.ugtsr.prior.DownLevel` steps to the code grid, ``swin_groups``
    Swin groups (SwinIR's RSTB: blocks + 3x3 conv + residual, MLP ratio ``swin_mlp_ratio``),
    and a 1x1 conv to the code space (FeMaSR's "before-quant" conv, no norm before it).
    LR sides must be multiples of ``2 ** n_down``.
    """

    def __init__(self, c: UGTSRConfig, prior: PriorConfig, scale: int) -> None:
        super().__init__()
        chs = prior.channels
        first = _log2_ratio(scale, 1)
        self.n_down, self.n_up = _log2_ratio(prior.factor, scale), 0
        if c.swin_dim != chs[-1]:
            raise ValueError(f"swin_dim {c.swin_dim} must equal the prior's code-grid width {chs[-1]}")
        self.in_conv = nn.Conv2d(prior.in_channels, chs[first], 4, padding=1)
        self.down = nn.ModuleList(
            DownLevel(chs[j], chs[j + 1], c.enc_res_blocks) for j in range(first, first + self.n_down)
        )
        self.swin = nn.Sequential(
            *(
                SwinGroup(c.swin_dim, c.swin_depth, c.swin_heads, c.swin_window, c.swin_mlp_ratio)
                for _ in range(c.swin_groups)
            )
        )
        self.to_code = nn.Conv2d(c.swin_dim, prior.code_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.in_conv(x)
        for level in self.down:
            h = level(h)
        feat = self.swin(h)
        return feat, self.to_code(feat)

    def bridge(self, copied: set[str], source: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
        """No function-preserving start is defined for this layout: nothing is set."""
        return []


class FeMaSRPyramid(nn.Module):
    """FeMaSR's LQ up path: token-level features -> inputs of decoder stages ``1 .. max_stage``
    (:class:`~tokensr.methods.ugtsr.prior.UpLevel` steps with the prior decoder's widths);
    they are added to the decoder features as they are (no projection)."""

    def __init__(self, stage_channels: list[int], res_blocks: int, max_stage: int) -> None:
        super().__init__()
        self.steps = nn.ModuleList(
            UpLevel(stage_channels[j - 1], stage_channels[j], res_blocks) for j in range(1, max_stage + 1)
        )

    def forward(self, feat: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps for stages 1, 2, ... (index ``j - 1``)."""
        outs = []
        for step in self.steps:
            feat = step(feat)
            outs.append(feat)
        return outs


__all__ = ["FeMaSRLQEncoder", "FeMaSRPyramid", "LQEncoder", "LQPyramid"]
