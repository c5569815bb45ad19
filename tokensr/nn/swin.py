"""Swin Transformer blocks on feature maps ``[B, C, H, W]`` (window attention, shifted windows).

Used by ITER's VQGAN/LQ encoder/refinement networks and UGTSR's LQ encoder. Inputs of any
size work: the map is padded to a multiple of the window and cropped back.

Options for the SwinIR-style layers of ITER's released code, off by default so existing models
are unchanged: ``mlp_se`` (a squeeze-and-excitation gate on the MLP's hidden features, pooled
over the whole map) and :class:`SwinStack` (3x3 convs into and out of a run of groups, with a
residual around it: ITER's ``SwinLayers``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``[B, H, W, C] -> [B * nW, ws * ws, C]``."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_merge(x: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    c = x.shape[-1]
    x = x.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a learned relative position bias."""

    rel_index: torch.Tensor  # buffer, registered in __init__

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.rel_bias[self.rel_index.view(-1)].view(n, n, self.heads).permute(2, 0, 1)
        attn_bias = bias.unsqueeze(0)  # [1, heads, n, n]
        if mask is not None:  # [nW, n, n] of 0 / -inf, repeated over the batch
            nw = mask.shape[0]
            attn_bias = attn_bias.view(1, 1, self.heads, n, n) + mask.view(1, nw, 1, n, n)
            attn_bias = attn_bias.expand(bw // nw, -1, -1, -1, -1).reshape(bw, self.heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SEMlp(nn.Module):
    """Linear-GELU-Linear MLP whose hidden features are scaled by a squeeze-and-excitation gate.

    The gate (``hidden -> hidden // 16 -> hidden``, SiLU then sigmoid) reads the mean of the
    hidden features over every position of the map, so each image gets one channel weighting
    (ITER's released Swin layers). Input and output ``[B, H, W, C]``.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.se = nn.Sequential(
            nn.Linear(hidden, hidden // 16), nn.SiLU(), nn.Linear(hidden // 16, hidden), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        return self.fc2(h * self.se(h.mean(dim=(1, 2), keepdim=True)))


class SwinBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float = 2.0, mlp_se: bool = False
    ) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp: nn.Module = (
            SEMlp(dim, hidden) if mlp_se else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        )

    def _shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        ws, s = self.window, self.shift
        region = torch.zeros(1, h, w, 1, device=device)
        label = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                region[:, hs, wsl, :] = label
                label += 1
        win = window_partition(region, ws).squeeze(-1)  # [nW, n]
        diff = win[:, None, :] - win[:, :, None]
        return torch.zeros_like(diff).masked_fill(diff != 0, float("-inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, H, W, C]`` with H, W multiples of the window."""
        b, h, w, c = x.shape
        ws, s = self.window, self.shift
        y = self.norm1(x)
        mask = None
        if s:
            y = torch.roll(y, (-s, -s), dims=(1, 2))
            mask = self._shift_mask(h, w, x.device)
        y = window_merge(self.attn(window_partition(y, ws), mask), ws, b, h, w)
        if s:
            y = torch.roll(y, (s, s), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class SwinGroup(nn.Module):
    """``depth`` Swin blocks (alternating shift) + 3x3 conv, with a residual, on ``[B, C, H, W]``."""

    def __init__(
        self,
        dim: int,
        depth: int = 6,
        heads: int = 8,
        window: int = 8,
        mlp_ratio: float = 2.0,
        mlp_se: bool = False,
    ) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, mlp_se) for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window
        ph, pw = (-h) % ws, (-w) % ws
        y = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        y = y.permute(0, 2, 3, 1)
        for blk in self.blocks:
            y = blk(y)
        y = y.permute(0, 3, 1, 2)[:, :, :h, :w]
        return x + self.conv(y)


class SwinStack(nn.Module):
    """A SwinIR-style residual Swin stage on ``[B, channels, H, W]`` (ITER's ``SwinLayers``).

    A 3x3 conv to ``dim`` channels, ``groups`` residual Swin groups, a 3x3 conv back to
    ``channels``, and the input added: ``x + conv_out(groups(conv_in(x)))``.
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        groups: int = 1,
        depth: int = 6,
        heads: int = 8,
        window: int = 8,
        mlp_ratio: float = 4.0,
        mlp_se: bool = True,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, dim, 3, padding=1)
        self.groups = nn.ModuleList(SwinGroup(dim, depth, heads, window, mlp_ratio, mlp_se) for _ in range(groups))
        self.conv_out = nn.Conv2d(dim, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for group in self.groups:
            h = group(h)
        return x + self.conv_out(h)
