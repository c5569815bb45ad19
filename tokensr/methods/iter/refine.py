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

The ``paper`` preset follows the authors' released networks layer for layer through options
whose defaults keep the earlier layout: the code embedding is stored as their bias-free 1x1 conv
over one-hot maps (``onehot_conv``; ``phi_e``'s has no ``[MASK]`` row, ``mask_token=False``), the
mixing conv has no bias (``combine_bias=False``), ``phi_r`` puts the ``S_l`` stream first
(``cond_first``) and marks the ``S_l`` tokens judged bad by adding the ``[MASK]`` embedding to
them (``lq_flag="mask_row"``: their one-hot map's mask channel), and the Swin groups sit inside
3x3 convs with a residual, with a squeeze-and-excitation gate in every MLP (``swin_convs``,
``mlp_se``: SwinIR-style ``SwinLayers``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.nn.blocks import group_norm
from tokensr.nn.swin import SwinGroup, SwinStack

LQ_FLAGS = ("learned", "mask_row")


@dataclass
class TokenNetConfig:
    codebook_size: int = 1024  # K; the mask id is K (set from the tokenizer)
    dim: int = 128
    groups: int = 2  # residual Swin groups
    depth: int = 4  # Swin blocks per group
    heads: int = 4
    window: int = 8
    mlp_ratio: float = 2.0
    mlp_se: bool = False  # squeeze-and-excitation gate in the Swin MLPs (the released networks)
    swin_convs: bool = False  # 3x3 convs into and out of the Swin groups, with a residual (SwinStack)
    # the code embedding as a bias-free 1x1 conv over one-hot maps, weight [dim, rows, 1, 1] (the
    # released layout); it is still looked up as a table, with the same result
    onehot_conv: bool = False
    mask_token: bool = True  # a [MASK] row in the embedding (the released phi_e has none: it never sees one)
    combine_bias: bool = True  # bias in the 1x1 conv that mixes the two streams
    cond_first: bool = False  # phi_r: the S_l stream first in the concatenation (the released phi_r)
    # phi_r: how the S_l stream marks tokens judged bad: "learned" (a 2-row table, 0 = bad) or
    # "mask_row" (the [MASK] embedding added to them, the released phi_r)
    lq_flag: str = "learned"


class _TokenNet(nn.Module):
    """Shared body: two token maps ``[B, h, w]`` -> features ``[B, dim, h, w]`` -> head."""

    out_channels: int = 1

    def __init__(self, config: TokenNetConfig) -> None:
        super().__init__()
        self.config = c = config
        self.mask_id = c.codebook_size
        rows = c.codebook_size + (1 if c.mask_token else 0)
        if c.onehot_conv:
            self.code_emb = nn.Conv2d(rows, c.dim, 1, bias=False)
        else:
            self.embed = nn.Embedding(rows, c.dim)
        self.combine = nn.Conv2d(2 * c.dim, c.dim, 1, bias=c.combine_bias)
        self.body: nn.Module
        if c.swin_convs:
            self.body = SwinStack(c.dim, c.dim, c.groups, c.depth, c.heads, c.window, c.mlp_ratio, c.mlp_se)
        else:
            self.body = nn.Sequential(
                *[SwinGroup(c.dim, c.depth, c.heads, c.window, c.mlp_ratio, c.mlp_se) for _ in range(c.groups)]
            )
        self.norm_out = group_norm(c.dim)
        self.head = nn.Conv2d(c.dim, self._outputs(), 1)

    def _outputs(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def table(self) -> torch.Tensor:
        """The code embedding, ``[rows, dim]`` (row ``K`` is ``[MASK]`` when there is one)."""
        if self.config.onehot_conv:
            return self.code_emb.weight[:, :, 0, 0].t()
        return self.embed.weight

    def _map(self, ids: torch.Tensor) -> torch.Tensor:
        if self.config.onehot_conv:
            return F.embedding(ids, self.table()).permute(0, 3, 1, 2)
        return self.embed(ids).permute(0, 3, 1, 2)

    def _run(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.combine(torch.cat([x, cond], dim=1))
        h = self.body(h)
        return self.head(F.silu(self.norm_out(h)))


class RefinementNet(_TokenNet):
    """``phi_r``: ``(S_t, S_l, lq_good) -> logits [B, K, h, w]`` of the clean tokens."""

    def __init__(self, config: TokenNetConfig) -> None:
        if config.lq_flag not in LQ_FLAGS:
            raise ValueError(f"lq_flag must be one of {LQ_FLAGS}, got '{config.lq_flag}'")
        if not config.mask_token:
            raise ValueError("the refinement network needs the [MASK] token (mask_token=True)")
        super().__init__(config)
        self.lq_flag: nn.Embedding | None = None
        if config.lq_flag == "learned":
            self.lq_flag = nn.Embedding(2, config.dim)  # 0: S_l token judged bad, 1: good
            nn.init.zeros_(self.lq_flag.weight)

    def _outputs(self) -> int:
        return self.config.codebook_size

    def forward(
        self, tokens: torch.Tensor, lq_tokens: torch.Tensor, lq_good: torch.Tensor | None = None
    ) -> torch.Tensor:
        cond = self._map(lq_tokens)
        if lq_good is not None:
            if self.lq_flag is not None:
                cond = cond + self.lq_flag(lq_good.long()).permute(0, 3, 1, 2)
            else:  # the [MASK] row on the tokens judged bad
                bad = (~lq_good.bool()).to(cond.dtype)[:, None]
                cond = cond + bad * self.table()[self.mask_id][None, :, None, None]
        x = self._map(tokens)
        return self._run(cond, x) if self.config.cond_first else self._run(x, cond)


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
