"""Feature-matching accuracy (the paper's Fig. 7): how often the LR features find the HR codes.

For a pair (LR, HR): the ground-truth codes are the tokenizer's own codes of the HR image
(``tokenizer.tokenize(HR)``, the nearest code of each HR encoder feature); the model's LQ
features ``z^l`` sit on the same token grid. Reported, as shares of all tokens:

- ``top{k}`` (k = 1, 3, 5): the ground-truth code is among the k codes nearest to ``z^l``
  (``top1`` is plain nearest-neighbour matching accuracy, FeMaSR's; the paper quotes about
  21 % / 42 % / 54 % for FeMaSR at k = 1 / 3 / 5);
- ``final``: the code the model actually decodes equals the ground truth (after its Top-k
  fusion: re-quantisation of the fused feature for ``fusion_mode: residual``, the chosen
  candidate for ``select``; equal to ``top1`` for k = 1);
- ``changed``: the final code differs from the nearest code (``top1``'s code): how often the
  fusion chooses another code at all; ``gained`` / ``lost``: it differs and the final code is
  right where the nearest was wrong / wrong where the nearest was right, so
  ``final = top1 + gained - lost``.

Images are cropped at the bottom/right to sizes the model accepts (LR sides a multiple of
the encoder's downsampling; HR = LR x scale), optionally centre-cropped to ``max_lr`` pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from tokensr.methods.ugtsr.model import UGTSR
from tokensr.nn.quantizer import knn_codes

DEFAULT_KS = (1, 3, 5)


@dataclass
class MatchingAccuracy:
    """Running hit counts over tokens; shares via :meth:`share` / :meth:`row`."""

    ks: tuple[int, ...] = DEFAULT_KS
    tokens: int = 0
    hits: dict[int, int] = field(default_factory=dict)
    final_hits: int = 0
    changed: int = 0
    gained: int = 0
    lost: int = 0
    images: int = 0

    def add(self, gt: torch.Tensor, candidates: torch.Tensor, final: torch.Tensor) -> None:
        """``gt [B, h, w]``, ``candidates [B, >= max(ks), h, w]`` nearest first, ``final [B, h, w]``."""
        for k in self.ks:
            hit = (candidates[:, :k] == gt[:, None]).any(dim=1)
            self.hits[k] = self.hits.get(k, 0) + int(hit.sum())
        final_right, top1 = final == gt, candidates[:, 0]
        top1_right = top1 == gt
        self.final_hits += int(final_right.sum())
        self.changed += int((final != top1).sum())
        self.gained += int((final_right & ~top1_right).sum())
        self.lost += int((~final_right & top1_right).sum())
        self.tokens += gt.numel()
        self.images += gt.shape[0]

    def share(self, k: int | None = None) -> float:
        """Share of tokens whose GT code is among the ``k`` nearest (``None``: the final code)."""
        if not self.tokens:
            return float("nan")
        return (self.final_hits if k is None else self.hits.get(k, 0)) / self.tokens

    def share_of(self, count: int) -> float:
        """``count`` as a share of the tokens (NaN when none were added)."""
        return count / self.tokens if self.tokens else float("nan")

    def row(self) -> dict[str, float]:
        out = {f"top{k}": self.share(k) for k in self.ks}
        out["final"] = self.share(None)
        out.update(
            changed=self.share_of(self.changed), gained=self.share_of(self.gained), lost=self.share_of(self.lost)
        )
        return out


def crop_pair(
    lr: torch.Tensor, hr: torch.Tensor, model: UGTSR, max_lr: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``lr [B, 3, h, w]`` / ``hr [B, 3, h*s, w*s]`` to sizes the model accepts
    (centre crop to at most ``max_lr`` LR pixels per side first)."""
    s, m = model.scale, model.pad_multiple
    h, w = lr.shape[-2:]
    if hr.shape[-2] < h * s or hr.shape[-1] < w * s:
        raise ValueError(f"HR {tuple(hr.shape[-2:])} is smaller than LR {tuple(lr.shape[-2:])} x{s}")
    top = left = 0
    if max_lr is not None:
        th, tw = min(h, max_lr), min(w, max_lr)
        top, left, h, w = (h - th) // 2, (w - tw) // 2, th, tw
    h, w = h - h % m, w - w % m
    if h < m or w < m:
        raise ValueError(f"LR {tuple(lr.shape[-2:])} is too small for this model")
    lr = lr[..., top : top + h, left : left + w]
    hr = hr[..., top * s : (top + h) * s, left * s : (left + w) * s]
    return lr, hr


@torch.no_grad()
def add_pair(
    acc: MatchingAccuracy,
    model: UGTSR,
    lr: torch.Tensor,
    hr: torch.Tensor,
    top_k: int | None = None,
    max_lr: int | None = None,
) -> None:
    """Measure one batch of pairs (in [0, 1]) and add it to ``acc``."""
    lr, hr = crop_pair(lr.to(model.device, torch.float32), hr.to(model.device, torch.float32), model, max_lr)
    gt = model.gt_indices(hr)
    _, z = model.encoder(lr if model.pixels01 else lr * 2 - 1)
    if gt.shape[-2:] != z.shape[-2:]:
        raise ValueError(f"HR token grid {tuple(gt.shape[-2:])} differs from the LQ feature grid {tuple(z.shape[-2:])}")
    kmax = min(max(acc.ks), model.codebook.shape[0])
    candidates = knn_codes(z, model.codebook, kmax)
    final = model.match(z, top_k)[2]
    acc.add(gt, candidates, final)


@torch.no_grad()
def measure(
    model: UGTSR,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    ks: Sequence[int] = DEFAULT_KS,
    top_k: int | None = None,
    max_lr: int | None = None,
) -> MatchingAccuracy:
    """Matching accuracy of ``model`` over ``(lr, hr)`` pairs (``[3, h, w]`` or ``[B, 3, h, w]``)."""
    was = model.training
    model.eval()
    acc = MatchingAccuracy(tuple(ks))
    try:
        for lr, hr in pairs:
            if lr.dim() == 3:
                lr, hr = lr[None], hr[None]
            add_pair(acc, model, lr, hr, top_k, max_lr)
    finally:
        model.train(was)
    return acc


def markdown_table(rows: Sequence[tuple[str, MatchingAccuracy]], ks: Sequence[int] = DEFAULT_KS) -> str:
    """A Markdown table, one row per ``(label, accuracy)``, shares in percent."""
    head = ["model", "images", "tokens"] + [f"top-{k} (%)" for k in ks] + ["final code (%)", "final != top-1 (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, acc in rows:
        cells = [label, str(acc.images), str(acc.tokens)]
        cells += [f"{100 * acc.share(k):.2f}" for k in ks] + [f"{100 * acc.share(None):.2f}"]
        cells.append(f"{100 * acc.share_of(acc.changed):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_KS", "MatchingAccuracy", "add_pair", "crop_pair", "markdown_table", "measure"]
