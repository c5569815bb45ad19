"""UGTSR's Top-k fusion (eq. 7): the k codes nearest to each LQ feature, fused into one refined
feature by Restormer blocks (transposed channel attention and a gated depthwise feed-forward).
The nearest-codes search itself is :func:`tokensr.nn.quantizer.knn_codes`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.nn.blocks import zero_module


def gather_codes(codebook: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Code vectors for ``idx [B, k, H, W]`` as ``[B, k, C, H, W]``."""
    return codebook[idx].permute(0, 1, 4, 2, 3).contiguous()


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of ``[B, C, H, W]`` at every pixel (with bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TransposedAttention(nn.Module):
    """Restormer's multi-Dconv head transposed attention: 1x1 + depthwise 3x3 convs make
    Q, K, V; attention is across *channels* (a ``C/heads`` square map per head, with
    L2-normalised Q/K and a learned temperature), so its cost is linear in the pixel count."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion_dim {dim} is not divisible by fusion_heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class GatedDconvFFN(nn.Module):
    """Restormer's gated feed-forward: 1x1 up, depthwise 3x3, GELU gate, 1x1 down."""

    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        hidden = max(1, int(dim * expansion))
        self.up = nn.Conv2d(dim, hidden * 2, 1)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.down = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dw(self.up(x)).chunk(2, dim=1)
        return self.down(F.gelu(a) * b)


class RestormerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.norm1 = ChannelNorm(dim)
        self.attn = TransposedAttention(dim, heads)
        self.norm2 = ChannelNorm(dim)
        self.ffn = GatedDconvFFN(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TopKFusion(nn.Module):
    """Fuse the k nearest codes of every LQ feature into one refined feature (eq. 7).

    The k candidate vectors (nearest first) are stacked on the channel axis (optionally with
    the LQ feature itself), projected to ``dim``, passed through Restormer blocks and
    projected back to ``code_dim``. The result is the nearest candidate plus a learned,
    zero-initialised correction, so an untrained fusion reproduces nearest-neighbour matching.
    """

    def __init__(
        self, code_dim: int, k: int, dim: int, heads: int, blocks: int, expansion: float, with_lq: bool = False
    ) -> None:
        super().__init__()
        self.k = k
        self.with_lq = with_lq
        self.inp = nn.Conv2d(code_dim * (k + int(with_lq)), dim, 1)
        self.blocks = nn.Sequential(*(RestormerBlock(dim, heads, expansion) for _ in range(blocks)))
        self.out = zero_module(nn.Conv2d(dim, code_dim, 1))

    def forward(self, candidates: torch.Tensor, z_lq: torch.Tensor | None = None) -> torch.Tensor:
        """``candidates [B, k, C, H, W]`` (nearest first) -> fused ``[B, C, H, W]``."""
        if candidates.shape[1] != self.k:
            raise ValueError(f"the fusion was built for k = {self.k}, got {candidates.shape[1]} candidates")
        x = candidates.flatten(1, 2)
        if self.with_lq:
            if z_lq is None:
                raise ValueError("this fusion also needs the LQ feature")
            x = torch.cat([x, z_lq], dim=1)
        return candidates[:, 0] + self.out(self.blocks(self.inp(x)))


__all__ = ["ChannelNorm", "GatedDconvFFN", "RestormerBlock", "TopKFusion", "TransposedAttention", "gather_codes"]
