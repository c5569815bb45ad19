"""Gaussian-weighted aggregation of overlapping patches (RealSRT sec. 3.4).

A model that only works on fixed-size inputs (a transformer with a fixed token grid) upscales
an image of any size like this:

1. pad the LR image (reflection) so that patches of side ``patch`` with step ``stride`` tile
   it exactly; the default stride is half the patch (half overlap, as in the paper);
2. run the model on the patches, ``batch_size`` at a time (memory is bounded by the batch, not
   the image: only the output canvas and its weight map grow with the image);
3. add every output patch into the canvas weighted by a centred Gaussian (variance ``var``
   relative to the patch side, 0.05 in the paper) and divide by the summed weights::

       I = sum_j W_j * I_j / sum_j W_j

   so seams disappear and a pixel covered by identical patch outputs gets exactly that value;
4. crop the padding away.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tokensr.errors import OptionError

PatchFn = Callable[[torch.Tensor], torch.Tensor]


def gaussian_weights(
    height: int,
    width: int,
    var: float = 0.05,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Centred Gaussian weight map ``[height, width]``; ``var`` is relative to the side (x/side)."""

    def axis(n: int) -> torch.Tensor:
        x = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / n
        return torch.exp(-(x**2) / (2 * var))

    return (axis(height)[:, None] * axis(width)[None, :]).to(device=device, dtype=dtype)


def padded_length(length: int, patch: int, stride: int) -> int:
    """Smallest length >= ``length`` (and >= ``patch``) tiled exactly by patches with this stride."""
    if length <= patch:
        return patch
    return math.ceil((length - patch) / stride) * stride + patch


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets of the patches along an already padded axis."""
    return list(range(0, length - patch + 1, stride))


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflection padding of any amount (repeated when it exceeds the image; replicate for 1-px sides)."""
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        cap_w, cap_h = max(w - 1, 0), max(h - 1, 0)
        step = (min(left, cap_w), min(right, cap_w), min(top, cap_h), min(bottom, cap_h))
        if not any(step):  # a side of 1 pixel cannot reflect
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


def aggregate_patches(
    lr: torch.Tensor,
    fn: PatchFn,
    scale: int,
    patch: int,
    stride: int | None = None,
    batch_size: int = 8,
    var: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run ``fn`` on overlapping LR patches and blend the outputs into one image.

    ``lr``: ``[B, C, H, W]``. ``fn``: ``[n, C, patch, patch] -> [n, C_out, patch*scale,
    patch*scale]`` (``C_out`` is free, e.g. several images stacked on channels). Returns
    ``[B, C_out, H*scale, W*scale]`` in float32 on ``lr``'s device. ``progress(done, total)``
    is called after each batch.
    """
    stride = patch // 2 if stride is None else stride
    if patch < 1 or not 1 <= stride <= patch:
        raise OptionError(f"patch stride must be in 1..{patch} (the patch size), got {stride}")
    if batch_size < 1:
        raise OptionError(f"patch batch size must be positive, got {batch_size}")
    b, _, h, w = lr.shape
    hp, wp = padded_length(h, patch, stride), padded_length(w, patch, stride)
    top, left = (hp - h) // 2, (wp - w) // 2
    padded = reflect_pad(lr, left, wp - w - left, top, hp - h - top)
    boxes = [
        (k, i, j) for k in range(b) for i in patch_starts(hp, patch, stride) for j in patch_starts(wp, patch, stride)
    ]
    ps = patch * scale
    weight = gaussian_weights(ps, ps, var, device=lr.device)
    canvas: torch.Tensor | None = None
    wsum = torch.zeros(1, 1, hp * scale, wp * scale, device=lr.device)
    for n in range(0, len(boxes), batch_size):
        chunk = boxes[n : n + batch_size]
        x = torch.stack([padded[k, :, i : i + patch, j : j + patch] for k, i, j in chunk])
        y = fn(x).float().to(lr.device)
        if y.shape[0] != len(chunk) or y.shape[-2:] != (ps, ps):
            raise ValueError(f"patch function returned {tuple(y.shape)}, expected [{len(chunk)}, C, {ps}, {ps}]")
        if canvas is None:
            canvas = torch.zeros(b, y.shape[1], hp * scale, wp * scale, device=lr.device)
        for (k, i, j), yk in zip(chunk, y, strict=False):
            canvas[k, :, i * scale : i * scale + ps, j * scale : j * scale + ps] += yk * weight
            if k == 0:
                wsum[0, 0, i * scale : i * scale + ps, j * scale : j * scale + ps] += weight
        if progress is not None:
            progress(min(n + batch_size, len(boxes)), len(boxes))
    assert canvas is not None
    out = canvas / wsum
    return out[:, :, top * scale : (top + h) * scale, left * scale : (left + w) * scale]
