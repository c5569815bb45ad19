"""UGTSR's own losses: the uncertainty losses of the two stages and the codebook loss.

- :func:`esu_loss` (stage I, "estimating sparse uncertainty", paper eq. 2)::

      L_ESU = mean_i( exp(-s_i) * |x_i - f(y_i)|_1 + 2 * s_i )

  ``s = ln(theta)`` is the log of the per-pixel uncertainty (scale of a Laplace
  distribution) predicted by the uncertainty head. Minimising over ``s_i`` alone gives
  ``s_i = ln(|x_i - f(y_i)| / 2)``: the head learns where the SR error is large.
- :func:`udl_loss` (stage II, "uncertainty-driven loss", eq. 3, after Ning et al. 2021)::

      L_UDL = mean_i( (s_i - min_j s_j) * |x_i - f(y_i)|_1 )

  with the stage-I ``s`` frozen (detached here), so high-uncertainty (texture, edge) pixels
  get *more* weight. The minimum is taken per image by default (``reduce_min="sample"``).
- :func:`codebook_loss` (eq. 13): ``beta * ||z - z_gt||^2 + alpha * ||G(z) - G(z_gt)||^2``
  with ``G`` the Gram matrix of the feature map (:func:`gram_matrix`), pulling the LQ
  features towards the ground-truth codes and matching their second-order statistics.
- :func:`candidate_cross_entropy` (not in the paper; ``fusion_mode: select``): cross-entropy
  of the fusion's k selection logits against the slot of the ground-truth code among the k
  candidates, on the pixels where it is among them (the others are ignored).

Per-pixel error: ``|x_i - f(y_i)|_1`` is taken elementwise when ``s`` has one channel per
image channel, else averaged over the image channels (a 1-channel ``s``). Because UDL
subtracts the minimum, a constant factor in the error (sum vs. mean over channels, [0, 1] vs.
[-1, 1] images) only shifts ``s`` by a constant and leaves stage II unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from tokensr.nn.vqgan import VQGAN, Encoder

REDUCE_MIN = ("sample", "batch")


def pixel_error(x: torch.Tensor, y: torch.Tensor, channels: int) -> torch.Tensor:
    """``|x - y|`` per pixel with ``channels`` channels (1: mean over the image channels)."""
    err = (x.float() - y.float()).abs()
    if channels == err.shape[1]:
        return err
    if channels == 1:
        return err.mean(dim=1, keepdim=True)
    raise ValueError(f"an uncertainty map needs 1 or {err.shape[1]} channels, got {channels}")


def esu_loss(sr: torch.Tensor, hr: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Stage-I loss ``mean(exp(-s) * |hr - sr| + 2 s)``; ``s`` is ``[B, 1 | C, H, W]`` log-uncertainty."""
    s = s.float()
    err = pixel_error(sr, hr, s.shape[1])
    return (torch.exp(-s) * err + 2.0 * s).mean()


def udl_weight(s: torch.Tensor, reduce_min: str = "sample") -> torch.Tensor:
    """``s - min(s)`` (detached, non-negative): per image (``sample``) or over the batch."""
    if reduce_min not in REDUCE_MIN:
        raise ValueError(f"reduce_min must be one of {REDUCE_MIN}, got '{reduce_min}'")
    s = s.detach().float()
    if reduce_min == "sample":
        low = s.flatten(1).min(dim=1).values.view(-1, *([1] * (s.dim() - 1)))
    else:
        low = s.min()
    return s - low


def udl_loss(sr: torch.Tensor, hr: torch.Tensor, s: torch.Tensor, reduce_min: str = "sample") -> torch.Tensor:
    """Stage-II loss ``mean((s - min s) * |hr - sr|)`` with the uncertainty ``s`` frozen."""
    w = udl_weight(s, reduce_min)
    return (w * pixel_error(sr, hr, s.shape[1])).mean()


def gram_matrix(z: torch.Tensor) -> torch.Tensor:
    """``[B, C, C]`` Gram matrix of a feature map ``[B, C, H, W]``, normalised by ``H * W``."""
    b, c, h, w = z.shape
    flat = z.float().reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def gram_loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the Gram matrices (target detached)."""
    return (gram_matrix(z) - gram_matrix(target.detach())).pow(2).mean()


def codebook_loss(
    z: torch.Tensor, z_gt: torch.Tensor, beta: float = 0.25, alpha: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """``beta * mse(z, z_gt) + alpha * gram_loss(z, z_gt)`` (``z_gt`` = codes of the HR image)."""
    l2 = (z.float() - z_gt.detach().float()).pow(2).mean()
    total = beta * l2
    logs = {"cb_l2": float(l2.detach())}
    if alpha:
        g = gram_loss(z, z_gt)
        total = total + alpha * g
        logs["cb_gram"] = float(g.detach())
    return total, logs


def candidate_targets(candidates: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Slot (0..k-1) of the ground-truth code ``gt [B, h, w]`` among ``candidates [B, k, h, w]``,
    or -1 where it is not among them."""
    hit = candidates == gt[:, None]
    return torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.full_like(gt, -1))


def candidate_cross_entropy(
    logits: torch.Tensor, candidates: torch.Tensor, gt: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the selection ``logits [B, k, h, w]`` against the slot of the
    ground-truth code ``gt [B, h, w]`` among ``candidates [B, k, h, w]``, averaged over the
    pixels where it is among them (zero when it is nowhere). Logs ``select_ce``,
    ``select_hit`` (share of pixels with the GT among the k) and ``select_acc`` (share of
    those where the largest logit is the GT's slot)."""
    target = candidate_targets(candidates, gt)
    valid = target >= 0
    ce = F.cross_entropy(logits.float(), target.clamp_min(0), reduction="none")
    count = int(valid.sum())
    loss = (ce * valid).sum() / max(count, 1)
    right = (logits.detach().argmax(dim=1) == target) & valid
    logs = {
        "select_ce": float(loss.detach()),
        "select_hit": count / max(gt.numel(), 1),
        "select_acc": int(right.sum()) / max(count, 1),
    }
    return loss, logs


# --- substitute perceptual loss ----------------------------------------------------------------
class TokenizerFeatureLoss(torch.nn.Module):
    """Perceptual-loss substitute when no VGG19 weights are available: the distance between
    the frozen VQGAN encoder's feature maps of the SR and HR images, per sample ``[B]``.

    Features are taken after ``conv_in``, after every ResNet block of every resolution level
    and after the bottleneck; each map contributes the mean absolute (``l1``) or squared
    (``l2``) difference, and the maps are averaged with equal weight. Images in [-1, 1]. The
    encoder is referenced, not owned (it is not part of this module's state).
    """

    def __init__(self, tokenizer: VQGAN, criterion: str = "l1") -> None:
        super().__init__()
        if criterion not in ("l1", "l2"):
            raise ValueError(f"criterion must be 'l1' or 'l2', got '{criterion}'")
        self._encoder: list[Encoder] = [tokenizer.encoder]  # a list: not registered as a submodule
        self.criterion = criterion

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        enc = self._encoder[0]
        h = enc.conv_in(x)
        feats = [h]
        for stage in enc.down:
            blocks, attns = cast(torch.nn.ModuleList, stage.blocks), cast(torch.nn.ModuleList, stage.attn)
            for block, attn in zip(blocks, attns, strict=False):
                h = attn(block(h))
                feats.append(h)
            h = cast(torch.nn.Module, stage.downsample)(h)
        feats.append(enc.mid(h))
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.features(x)
        with torch.no_grad():
            fy = self.features(y)
        total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        for a, b in zip(fx, fy, strict=False):
            d = a.float() - b.float()
            d = d.abs() if self.criterion == "l1" else d.pow(2)
            total = total + d.flatten(1).mean(1)
        return total / len(fx)


__all__ = [
    "REDUCE_MIN",
    "TokenizerFeatureLoss",
    "candidate_cross_entropy",
    "candidate_targets",
    "codebook_loss",
    "esu_loss",
    "gram_loss",
    "gram_matrix",
    "pixel_error",
    "udl_loss",
    "udl_weight",
]
