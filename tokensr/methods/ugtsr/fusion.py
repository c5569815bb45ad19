"""UGTSR's Top-k fusion (eq. 7): the k codes nearest to each LQ feature, fused by Restormer
blocks (transposed channel attention and a gated depthwise feed-forward). Two heads on the
same trunk (``fusion_mode`` of the model config):

- :class:`TopKFusion` (``residual``): nearest candidate + a zero-initialised correction,
  re-quantised to the nearest code (the original form; it can pick another code only if the
  correction moves the feature past a Voronoi border).
- :class:`TopKSelect` (``select``): ``k`` logits per pixel over the candidates; the fused
  feature is their softmax-weighted sum and the final code the candidate of largest weight,
  so the network chooses among the k codes directly.

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


class _FusionTrunk(nn.Module):
    """The k candidate vectors (nearest first) stacked on the channel axis (optionally with the
    LQ feature itself), projected to ``dim`` and passed through Restormer blocks."""

    def __init__(
        self, code_dim: int, k: int, dim: int, heads: int, blocks: int, expansion: float, with_lq: bool = False
    ) -> None:
        super().__init__()
        self.k = k
        self.with_lq = with_lq
        self.inp = nn.Conv2d(code_dim * (k + int(with_lq)), dim, 1)
        self.blocks = nn.Sequential(*(RestormerBlock(dim, heads, expansion) for _ in range(blocks)))

    def features(self, candidates: torch.Tensor, z_lq: torch.Tensor | None) -> torch.Tensor:
        """``candidates [B, k, C, H, W]`` -> trunk features ``[B, dim, H, W]``."""
        if candidates.shape[1] != self.k:
            raise ValueError(f"the fusion was built for k = {self.k}, got {candidates.shape[1]} candidates")
        x = candidates.flatten(1, 2)
        if self.with_lq:
            if z_lq is None:
                raise ValueError("this fusion also needs the LQ feature")
            x = torch.cat([x, z_lq], dim=1)
        return self.blocks(self.inp(x))  # type: ignore[no-any-return]


class TopKFusion(_FusionTrunk):
    """Fuse the k nearest codes of every LQ feature into one refined feature (eq. 7).

    The trunk's features are projected back to ``code_dim``; the result is the nearest
    candidate plus this learned, zero-initialised correction, so an untrained fusion
    reproduces nearest-neighbour matching (``fusion_mode: residual``).
    """

    def __init__(
        self, code_dim: int, k: int, dim: int, heads: int, blocks: int, expansion: float, with_lq: bool = False
    ) -> None:
        super().__init__(code_dim, k, dim, heads, blocks, expansion, with_lq)
        self.out = zero_module(nn.Conv2d(dim, code_dim, 1))

    def forward(self, candidates: torch.Tensor, z_lq: torch.Tensor | None = None) -> torch.Tensor:
        """``candidates [B, k, C, H, W]`` (nearest first) -> fused ``[B, C, H, W]``."""
        return candidates[:, 0] + self.out(self.features(candidates, z_lq))


SELECT_PRIOR = 2.0  # initial logit of the nearest candidate (softmax weight 0.79 at k = 3)


class TopKSelect(_FusionTrunk):
    """Choose one of the k nearest codes per pixel (``fusion_mode: select``).

    A 1x1 head on the trunk's features gives ``k`` selection logits. Its weights start at
    zero and its bias at ``(prior, 0, ..., 0)``, so an untrained head picks the nearest
    candidate everywhere: nearest-neighbour matching. :meth:`combine` turns logits into the
    fused feature (softmax-weighted sum of the candidates, which carries the straight-through
    gradient) and the chosen slot (argmax).
    """

    def __init__(
        self,
        code_dim: int,
        k: int,
        dim: int,
        heads: int,
        blocks: int,
        expansion: float,
        with_lq: bool = False,
        prior: float = SELECT_PRIOR,
    ) -> None:
        super().__init__(code_dim, k, dim, heads, blocks, expansion, with_lq)
        self.select = nn.Conv2d(dim, k, 1)
        nn.init.zeros_(self.select.weight)
        bias = torch.zeros(k)
        bias[0] = prior
        self.select.bias = nn.Parameter(bias)

    def forward(self, candidates: torch.Tensor, z_lq: torch.Tensor | None = None) -> torch.Tensor:
        """``candidates [B, k, C, H, W]`` (nearest first) -> selection logits ``[B, k, H, W]``."""
        return self.select(self.features(candidates, z_lq))  # type: ignore[no-any-return]

    @staticmethod
    def combine(candidates: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused [B, C, H, W], slot [B, H, W])``: the softmax-weighted sum of the candidate
        vectors ``[B, k, C, H, W]`` and the index (0..k-1) of the largest weight."""
        weights = logits.float().softmax(dim=1).to(candidates.dtype)
        fused = (weights.unsqueeze(2) * candidates).sum(dim=1)
        return fused, logits.argmax(dim=1)


__all__ = [
    "SELECT_PRIOR",
    "ChannelNorm",
    "GatedDconvFFN",
    "RestormerBlock",
    "TopKFusion",
    "TopKSelect",
    "TransposedAttention",
    "gather_codes",
]
