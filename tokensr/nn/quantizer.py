"""Vector quantizer: nearest-code lookup with a straight-through gradient.

Two ways to learn the codebook:
- ``ema=True`` (default, as RealSRT/RQ-VAE): codes are exponential moving averages of the
  encoder outputs assigned to them (decay 0.99), and codes that fall out of use are
  restarted from random encoder outputs of the current batch (a code is dead when its EMA
  assignment count per step falls below ``dead_threshold``, 1.0 as in Jukebox). Only the
  commitment loss
  ``beta * ||z - sg(z_q)||^2`` reaches the encoder.
- ``ema=False`` (taming "legacy" style, as ITER/FeMaSR): the codebook is a learned
  parameter trained by the codebook loss ``||sg(z) - z_q||^2`` plus the commitment loss.

:func:`knn_codes` is the k-nearest-codes search of the same distance (chunked, float32), for
methods that match features to several codes (UGTSR's Top-k matching).

Under DDP the EMA statistics are all-reduced, and the first-batch initialisation and dead-code
restarts are broadcast from rank 0 so every rank keeps an identical codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# rows of the nearest-code search per fused product (an 1024 x K distance block fits in cache)
NEAREST_ROWS = 1024


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # [B, C, H, W], straight-through (gradients flow to z)
    indices: torch.Tensor  # [B, H, W] long
    loss: torch.Tensor  # scalar: commitment (+ codebook loss when not EMA)
    perplexity: torch.Tensor  # scalar: exp(entropy) of the batch's code histogram
    usage: torch.Tensor  # scalar: share of codes used at least once in the batch


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def knn_codes(z: torch.Tensor, codebook: torch.Tensor, k: int, chunk: int = 16384) -> torch.Tensor:
    """Indices ``[B, k, H, W]`` of the ``k`` codes nearest (Euclidean) to each vector of
    ``z [B, C, H, W]``, nearest first. Distances are computed in float32, ``chunk`` rows at a
    time so large images do not build an N x K matrix at once."""
    b, c, h, w = z.shape
    if not 1 <= k <= codebook.shape[0]:
        raise ValueError(f"k = {k} must be between 1 and the codebook size {codebook.shape[0]}")
    flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, c)
    codes = codebook.detach().float()
    c2 = codes.pow(2).sum(1)[None, :]
    out = []
    for start in range(0, flat.shape[0], chunk):
        rows = flat[start : start + chunk]
        d = rows.pow(2).sum(1, keepdim=True) - 2.0 * rows @ codes.t() + c2
        out.append(torch.topk(d, k, dim=1, largest=False, sorted=True).indices)
    idx = torch.cat(out) if out else flat.new_zeros((0, k), dtype=torch.long)
    return idx.view(b, h, w, k).permute(0, 3, 1, 2).contiguous()


class VectorQuantizer(nn.Module):
    # buffers, registered in __init__
    cluster_size: torch.Tensor  # [K] EMA code counts
    embed_sum: torch.Tensor  # [K, dim] EMA sums of the assigned vectors
    initialized: torch.Tensor  # bool scalar: codebook initialised from data

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.ema = ema
        self.decay = decay
        self.eps = eps
        self.dead_threshold = dead_threshold
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if ema:
            self.embedding.weight.requires_grad_(False)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_sum", self.embedding.weight.detach().clone())
        self.register_buffer("initialized", torch.tensor(not ema))

    @property
    def codebook(self) -> torch.Tensor:
        """The code vectors, ``[K, dim]``."""
        return self.embedding.weight

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance) for each row of ``flat``,
        always in float32: under a bf16 autocast the distance product would be rounded to 8
        bits and pick other codes."""
        with torch.autocast(flat.device.type, enabled=False):
            flat, codes = flat.float(), self.codebook.float()
            # |z - c|^2 = |z|^2 + |c|^2 - 2 z.c; |z|^2 is the same for every code of a row, so
            # the argmin needs only |c|^2 - 2 z.c: one fused product per block of rows, small
            # enough to stay in cache (3x faster on a CPU than the whole distance matrix)
            sq = codes.pow(2).sum(1)
            out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
            for start in range(0, flat.shape[0], NEAREST_ROWS):
                rows = flat[start : start + NEAREST_ROWS]
                out[start : start + NEAREST_ROWS] = torch.addmm(sq, rows, codes.t(), alpha=-2.0).argmin(dim=1)
            return out

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for ``indices [B, H, W]`` as a feature map ``[B, dim, H, W]``."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        # Distances and codebook sums must be exact: never run them under bf16/fp16 autocast.
        with torch.autocast(z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> QuantizerOutput:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        if self.training and self.ema and not bool(self.initialized):
            self._init_from(flat.detach())
        indices = self.nearest(flat.detach())
        z_q_flat = self.codebook[indices]
        if self.training and self.ema:
            self._ema_update(flat.detach().float(), indices)
        z_q = z_q_flat.view(b, h, w, c).permute(0, 3, 1, 2)

        loss = self.beta * F.mse_loss(z, z_q.detach())
        if not self.ema:
            loss = loss + F.mse_loss(z_q, z.detach())
        z_q = z + (z_q - z).detach()

        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        usage = (counts > 0).float().mean()
        return QuantizerOutput(z_q, indices.view(b, h, w), loss, perplexity, usage)

    # --- EMA codebook -------------------------------------------------------------------
    @torch.no_grad()
    def _random_rows(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` rows of ``flat`` drawn with replacement (identical on every DDP rank)."""
        pick = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        rows = flat[pick].float().clone()
        if _distributed():
            dist.broadcast(rows, src=0)
        return rows

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        rows = self._random_rows(flat, self.codebook_size)
        self.embedding.weight.copy_(rows)
        self.embed_sum.copy_(rows)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        one_hot = F.one_hot(indices, self.codebook_size).type(flat.dtype)
        counts = one_hot.sum(0)
        sums = one_hot.t() @ flat
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.weight.copy_(self.embed_sum / smoothed[:, None])

        dead = self.cluster_size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            rows = self._random_rows(flat, n_dead)
            self.embedding.weight[dead] = rows
            self.embed_sum[dead] = rows
            self.cluster_size[dead] = 1.0


__all__ = ["QuantizerOutput", "VectorQuantizer", "knn_codes"]
