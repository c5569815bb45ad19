"""ITER's refinement network ``phi_r`` and evaluation network ``phi_e`` (paper Eqs. 4-5).

Both read two token maps on the same grid: the map being worked on and the initial
restoration ``S_l`` (the condition). Each map goes through a shared embedding table (one row
per code plus one for ``[MASK]``, i.e. a 1x1 conv on a one-hot map with a mask channel), the
two embeddings are concatenated and mixed by a 1x1 conv, then ``groups`` residual Swin groups
and a GroupNorm-SiLU-1x1 head.

- :class:`RefinementNet` ``phi_r(S_t, S_l, m_t)``: ``S_t`` carries ``[MASK]`` where ``m_t`` is
  0, so the mask needs no extra channel; the ``S_l`` stream also gets a learned flag saying
  which ``S_l`` tokens the evaluation network judged good (as the reference code). Output:
  ``K`` logits per token, the prediction of ``S_0``.
- :class:`EvaluationNet` ``phi_e(S, S_l)``: two logits per token (0 = bad, 1 = good: equal
  to the ground-truth token). It scores ``S_l`` itself (``S = S_l``) to pick the start step
  and each refined prediction to choose the tokens to keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.nn.blocks import group_norm
from tokensr.nn.swin import SwinGroup


@dataclass
class TokenNetConfig:
    codebook_size: int = 1024  # K; the mask id is K (set from the tokenizer)
    dim: int = 128
    groups: int = 2  # residual Swin groups
    depth: int = 4  # Swin blocks per group
    heads: int = 4
    window: int = 8
    mlp_ratio: float = 2.0


class _TokenNet(nn.Module):
    """Shared body: two token maps ``[B, h, w]`` -> features ``[B, dim, h, w]`` -> head."""

    out_channels: int = 1

    def __init__(self, config: TokenNetConfig) -> None:
        super().__init__()
        self.config = c = config
        self.mask_id = c.codebook_size
        self.embed = nn.Embedding(c.codebook_size + 1, c.dim)
        self.combine = nn.Conv2d(2 * c.dim, c.dim, 1)
        self.body = nn.Sequential(*[SwinGroup(c.dim, c.depth, c.heads, c.window, c.mlp_ratio) for _ in range(c.groups)])
        self.norm_out = group_norm(c.dim)
        self.head = nn.Conv2d(c.dim, self._outputs(), 1)

    def _outputs(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _map(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids).permute(0, 3, 1, 2)

    def _run(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.combine(torch.cat([x, cond], dim=1))
        h = self.body(h)
        return self.head(F.silu(self.norm_out(h)))


class RefinementNet(_TokenNet):
    """``phi_r``: ``(S_t, S_l, lq_good) -> logits [B, K, h, w]`` of the clean tokens."""

    def __init__(self, config: TokenNetConfig) -> None:
        super().__init__(config)
        self.lq_flag = nn.Embedding(2, config.dim)  # 0: S_l token judged bad, 1: good
        nn.init.zeros_(self.lq_flag.weight)

    def _outputs(self) -> int:
        return self.config.codebook_size

    def forward(
        self, tokens: torch.Tensor, lq_tokens: torch.Tensor, lq_good: torch.Tensor | None = None
    ) -> torch.Tensor:
        cond = self._map(lq_tokens)
        if lq_good is not None:
            cond = cond + self.lq_flag(lq_good.long()).permute(0, 3, 1, 2)
        return self._run(self._map(tokens), cond)


class EvaluationNet(_TokenNet):
    """``phi_e``: ``(S, S_l) -> logits [B, 2, h, w]`` (class 1 = good token)."""

    def _outputs(self) -> int:
        return 2

    def forward(self, tokens: torch.Tensor, lq_tokens: torch.Tensor) -> torch.Tensor:
        return self._run(self._map(tokens), self._map(lq_tokens))

    def good_prob(self, tokens: torch.Tensor, lq_tokens: torch.Tensor) -> torch.Tensor:
        """``p(good)`` per token, ``[B, h, w]`` in [0, 1]."""
        return self(tokens, lq_tokens).float().softmax(1)[:, 1]


def class_balanced_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float = 0.9999,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy with class-balanced weights (Cui et al. 2019), as ITER trains ``phi_e`` on ``S_l``.

    ``logits`` ``[M, C]``, ``labels`` ``[M]``. Class ``c`` with ``n_c`` samples in the batch
    gets ``(1 - beta) / (1 - beta ** n_c)``, normalised so the weights sum to ``C``; a class
    absent from the batch gets 0 weight. The result is the weighted mean
    ``sum_i w_{y_i} s_i CE_i / sum_i w_{y_i} s_i`` (``s_i``: optional per-sample weights).
    """
    c = logits.shape[-1]
    counts = torch.bincount(labels, minlength=c).to(logits.device, torch.float32)
    effective = 1.0 - torch.pow(torch.tensor(beta, device=logits.device, dtype=torch.float32), counts)
    w = torch.where(counts > 0, (1.0 - beta) / effective.clamp_min(1e-12), torch.zeros_like(counts))
    w = w / w.sum().clamp_min(1e-12) * c
    per = w[labels]
    if sample_weight is not None:
        per = per * sample_weight
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    return (per * ce).sum() / per.sum().clamp_min(1e-12)


__all__ = ["EvaluationNet", "RefinementNet", "TokenNetConfig", "class_balanced_cross_entropy"]
