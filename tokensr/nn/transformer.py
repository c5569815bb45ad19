"""Generic transformer pieces for token models (RealSRT's generator/critic, usable by others).

- :class:`Attention`: multi-head attention with L2-normalised queries and keys multiplied by
  learned per-dimension scales (a learned softmax temperature, "QK-norm"), an optional learned
  null key/value (every query can attend to "nothing", which keeps cross-attention stable when
  the context is uninformative), self- or cross-attention, and an optional key padding mask.
- :class:`FeedForward`: pre-norm GEGLU feed-forward (GELU-gated linear unit, inner width
  ``2/3 * mult * dim`` so it costs about as much as a plain ``mult``-wide MLP).
- :class:`TransformerBlock`: pre-norm residual self-attention, optional cross-attention and
  feed-forward.
- :func:`sincos_2d`: fixed 2D sine-cosine positional embeddings for an ``h x w`` grid.

Sequences are ``[B, N, dim]`` throughout; nothing here assumes a device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sine-cosine embedding ``[M, dim]`` of 1D positions ``[M]`` (``dim`` even).

    Frequencies follow the Transformer's geometric series ``1 / 10000 ** (i / (dim / 2))``;
    the first half of the channels holds the sines, the second half the cosines.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, height: int, width: int, cols_first: bool = False) -> torch.Tensor:
    """Fixed 2D positional embeddings ``[height * width, dim]`` in row-major order.

    Half of the channels encode the row, the other half the column (``dim`` must be a multiple
    of 4): the row half first, or the column half first with ``cols_first`` (the layout of
    the MAE-style table in RealSRT's released model). Any grid size works, so a model trained
    on one grid can run on another.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    rows = sincos_1d(dim // 2, torch.arange(height).repeat_interleave(width))
    cols = sincos_1d(dim // 2, torch.arange(width).repeat(height))
    return torch.cat([cols, rows] if cols_first else [rows, cols], dim=1)


class Attention(nn.Module):
    """Pre-norm multi-head attention with QK-norm, learned scales and a learned null key/value.

    ``forward(x)`` is self-attention; ``forward(x, context)`` attends from ``x`` to ``context``
    (``cross=True``; the context is used as given, so normalise it beforehand).
    ``context_mask`` ``[B, M]`` (True = attend) hides padded context positions; the null
    key/value is always visible, so a fully masked row still has a valid softmax.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        cross: bool = False,
        context_dim: int | None = None,
        null_kv: bool = True,
        scale: float = 8.0,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.cross = cross
        self.scale = scale
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim if cross and context_dim else dim, 2 * inner, bias=False)
        # q and k are unit vectors; these learned per-dimension gains (times the fixed `scale`)
        # set the softmax temperature.
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.null_kv = nn.Parameter(torch.randn(2, heads, 1, dim_head)) if null_kv else None
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)  # [B, heads, N, d]

    def keys_values(self, kv_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (normalised and scaled) and values ``[B, heads, 1 + M, d]`` of ``kv_in``, with the
        null key/value first. For cross-attention they depend on the context only, so a caller
        that attends to one context many times computes them once (`context_kv`)."""
        b = kv_in.shape[0]
        k, v = (self._split(t) for t in self.to_kv(kv_in).chunk(2, dim=-1))
        if self.null_kv is not None:
            nk, nv = (t.unsqueeze(0).expand(b, -1, -1, -1).to(k.dtype) for t in self.null_kv)
            k = torch.cat([nk, k], dim=2)
            v = torch.cat([nv, v], dim=2)
        return F.normalize(k, dim=-1) * self.k_scale.to(k.dtype), v

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``context_kv``: `keys_values` of the context, computed earlier, instead of ``context``."""
        if self.cross != (context is not None or context_kv is not None):
            raise ValueError("cross-attention needs a context; self-attention takes none")
        b = x.shape[0]
        x = self.norm(x)
        q = self._split(self.to_q(x))
        k, v = context_kv if context_kv is not None else self.keys_values(context if context is not None else x)
        q = F.normalize(q, dim=-1) * self.q_scale.to(q.dtype)
        mask = None
        if context_mask is not None:
            mask = context_mask.bool()
            if self.null_kv is not None:
                mask = F.pad(mask, (1, 0), value=True)
            mask = mask[:, None, None, :]  # [B, 1, 1, M]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, -1, self.heads * self.dim_head)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Pre-norm GEGLU MLP: ``LN -> Linear(dim, 2*inner) -> x * GELU(gate) -> LN -> Linear(inner, dim)``."""

    def __init__(self, dim: int, mult: float = 4.0) -> None:
        super().__init__()
        inner = max(1, int(dim * mult * 2 / 3))
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * inner, bias=False)
        self.norm_inner = nn.LayerNorm(inner)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(self.norm_inner(h * F.gelu(gate)))


class TransformerBlock(nn.Module):
    """``x + SelfAttn(x)``, then ``x + CrossAttn(x, context)`` (if ``cross``), then ``x + FF(x)``."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        cross: bool = False,
        context_dim: int | None = None,
        ff_mult: float = 4.0,
        null_kv: bool = True,
    ) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, dim_head, null_kv=null_kv)
        self.cross_attn = (
            Attention(dim, heads, dim_head, cross=True, context_dim=context_dim, null_kv=null_kv) if cross else None
        )
        self.ff = FeedForward(dim, ff_mult)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``context_kv``: ``self.cross_attn.keys_values(context)``, computed once for a context
        this block attends to many times (iterative decoding), instead of ``context``."""
        x = x + self.attn(x)
        if self.cross_attn is not None:
            if context is None and context_kv is None:
                raise ValueError("this block cross-attends and needs a context")
            x = x + self.cross_attn(x, context, context_mask, context_kv)
        return x + self.ff(x)
