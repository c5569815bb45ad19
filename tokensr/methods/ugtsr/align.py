"""UGTSR's Align-Attention (eq. 9): windowed cross-attention from LQ features (query) to HQ
features (key and value), written into the frozen decoder through a zero-initialised projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.nn.blocks import zero_module
from tokensr.nn.swin import window_merge, window_partition


class AlignAttention(nn.Module):
    """Cross-attention with LQ features as the query and HQ features as key and value (eq. 9)::

        F_align = softmax((F_LQ W_Q)(F_HQ W_K)^T / sqrt(d_k)) (F_HQ W_V)

    computed with ``heads`` heads inside non-overlapping ``window x window`` windows (any map
    size: padded positions are masked out of the keys and cropped from the output), after a
    LayerNorm of each input. The output projection is zero-initialised.
    """

    def __init__(self, q_dim: int, kv_dim: int, out_dim: int, dim: int, heads: int, window: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"align_dim {dim} is not divisible by align_heads {heads}")
        self.heads, self.window = heads, window
        self.norm_q = nn.LayerNorm(q_dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.to_q = nn.Linear(q_dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.proj = zero_module(nn.Linear(dim, out_dim))

    def forward(self, lq: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        """``lq [B, Cq, H, W]`` (query), ``hq [B, Ckv, H, W]`` (key/value) -> ``[B, out_dim, H, W]``."""
        b, _, h, w = lq.shape
        if hq.shape[0] != b or hq.shape[-2:] != (h, w):
            raise ValueError(f"query {tuple(lq.shape)} and key/value {tuple(hq.shape)} maps differ in size")
        ws = self.window
        ph, pw = (-h) % ws, (-w) % ws
        q_in = F.pad(lq, (0, pw, 0, ph)).permute(0, 2, 3, 1)
        kv_in = F.pad(hq, (0, pw, 0, ph)).permute(0, 2, 3, 1)
        H, W = h + ph, w + pw
        q_win = window_partition(q_in, ws)  # [B*nW, n, Cq]
        kv_win = window_partition(kv_in, ws)
        q = self.to_q(self.norm_q(q_win))
        kv = self.norm_kv(kv_win)
        k, v = self.to_k(kv), self.to_v(kv)
        bw, n, d = q.shape
        q, k, v = (t.view(bw, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        mask = None
        if ph or pw:
            valid = F.pad(torch.ones(1, h, w, 1, device=lq.device), (0, 0, 0, pw, 0, ph))
            keep = window_partition(valid, ws)[..., 0] > 0.5  # [nW, n]
            mask = keep.repeat(b, 1)[:, None, None, :]  # [B*nW, 1, 1, n]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(bw, n, d))
        out = window_merge(out, ws, b, H, W)[:, :h, :w]
        return out.permute(0, 3, 1, 2).contiguous()


__all__ = ["AlignAttention"]
