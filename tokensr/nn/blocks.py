"""Convolutional building blocks of the VQGAN (taming-transformers style).

GroupNorm + swish pre-activation ResNet blocks, a single-head spatial self-attention block,
strided down/up-sampling convolutions, and :func:`zero_module` for layers that must start as
a no-op (a new branch added to a trained network).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, max_groups: int = 32, min_group_channels: int = 1) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides ``channels`` and
    leaves at least ``min_group_channels`` channels in each group.

    With one channel per group GroupNorm is InstanceNorm: it removes every channel's mean and
    scale over the image, so a narrow network (32 channels under GN32) cannot carry a patch's
    absolute colour or brightness through its normalised branches. Small models therefore
    ask for a few channels per group; taming's GN32 is the default.
    """
    groups = max(1, min(max_groups, channels // max(1, min_group_channels)))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


def zero_module(m: nn.Module) -> nn.Module:
    """Zero every parameter of ``m`` (its output starts at 0; gradients still flow)."""
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResnetBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0, min_group_channels: int = 1
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = group_norm(in_channels, min_group_channels=min_group_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, min_group_channels=min_group_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # without autograd the activations and the sum run in place (no new full-size tensors):
        # the same arithmetic in about 10 % less time for a decoder on a CPU
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        return h.add_(self.skip(x)) if inplace else self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, min_group_channels: int = 1) -> None:
        super().__init__()
        self.norm = group_norm(channels, min_group_channels=min_group_channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv (asymmetric zero pad, as in taming)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# Rows (or columns) of a 3x3 kernel that land on the same input pixel after nearest 2x
# upsampling, summed: output row 2i reads input rows i-1, i, i (kernel rows 0 | 1+2), output
# row 2i+1 reads rows i, i, i+1 (kernel rows 0+1 | 2). One [2, 3] matrix per output phase.
_PHASE_FOLD = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling then a 3x3 conv.

    Without autograd it computes the same thing as four 2x2 convolutions of the input, one per
    output phase, interleaved (the 3x3 kernel folded as :data:`_PHASE_FOLD` says): 4 instead of
    9 multiply-adds per output and input channel, and no upsampled copy of the input. The
    result agrees with the plain form to float rounding.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.phase_forward(x)

    def phase_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.conv.weight
        out_ch, in_ch = weight.shape[:2]
        fold = _PHASE_FOLD.to(weight)
        kernels = torch.einsum("aik,oxkl,bjl->aboxij", fold, weight, fold)  # [2, 2, out, in, 2, 2]
        # one convolution gives every phase on a grid one larger; phase (a, b) is its
        # [a : a + height, b : b + width] window
        # the bias goes into the convolution (one per phase): a separate add on the output is
        # slow under bf16 autocast (bf16 output, float32 bias)
        bias = None if self.conv.bias is None else self.conv.bias.repeat(4)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernels.reshape(4 * out_ch, in_ch, 2, 2), bias)
        batch, _, height, width = x.shape
        y = y.view(batch, 2, 2, out_ch, height + 1, width + 1)
        last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        out = torch.empty(
            batch,
            out_ch,
            2 * height,
            2 * width,
            dtype=y.dtype,
            device=y.device,
            memory_format=torch.channels_last if last else torch.contiguous_format,
        )
        for a in range(2):
            for b in range(2):
                out[:, :, a::2, b::2] = y[:, a, b, :, a : a + height, b : b + width]
        return out


__all__ = ["AttnBlock", "Downsample", "ResnetBlock", "Upsample", "group_norm", "zero_module"]
