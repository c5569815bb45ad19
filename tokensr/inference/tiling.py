"""Tiled inference for any SR method: bounded memory, no seams.

The LR image is cut into equal overlapping tiles (the last tile in each direction is moved
back so it ends at the image edge, so every tile has the same size and tiles can be batched).
Each tile's output is weighted by a blending window that is 1 in the middle and falls to 0
towards every edge the tile shares with a neighbour, then all are summed and divided by the
summed weights.

The window is zero on the outer quarter of the overlap, a raised-cosine ramp over the middle
half, and one beyond. Pixels a method computes near a tile's cut edge (where it lacks
context) therefore get no weight at all: a method whose receptive field is within a quarter
of the overlap gives exactly the untiled result, and any other method still blends smoothly.

A method may set ``pad_multiple`` (int): the LR is padded (reflect, or replicate when the
image is too small to reflect) up to a multiple of it before inference and the output is
cropped back, so methods that need sizes divisible by e.g. 8 or 16 work on any image.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from tokensr.errors import OptionError
from tokensr.methods.base import SRMethod

MIN_TILE = 8


def pad_to_multiple(lr: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom/right of ``[B, C, H, W]`` so H and W are multiples of ``multiple``."""
    h, w = lr.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return lr
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(lr, (0, pw, 0, ph), mode=mode)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size``, overlapping by >= ``overlap``."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def blend_ramp(overlap_hr: int, device: torch.device | None = None) -> torch.Tensor:
    """Weights for the ``overlap_hr`` pixels next to a shared tile edge, edge first.

    Zero on the first quarter, raised cosine over the middle half, one on the last quarter.
    """
    d = torch.arange(overlap_hr, dtype=torch.float32, device=device)
    margin = overlap_hr // 4
    span = max(overlap_hr - 2 * margin, 1)
    t = ((d - margin + 0.5) / span).clamp(0.0, 1.0)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * t)
    ramp[d < margin] = 0.0
    return ramp


def _axis_window(length: int, ramp: torch.Tensor, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    w = torch.ones(length, dtype=torch.float32, device=ramp.device)
    n = min(ramp.numel(), length)
    if ramp_start:
        w[:n] = torch.minimum(w[:n], ramp[:n])
    if ramp_end:
        w[length - n :] = torch.minimum(w[length - n :], ramp[:n].flip(0))
    return w


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _run(method: SRMethod, lr: torch.Tensor, device: torch.device) -> torch.Tensor:
    scale = int(method.scale)
    out = method(lr.to(device))
    expected = (lr.shape[0], 3, lr.shape[2] * scale, lr.shape[3] * scale)
    if tuple(out.shape) != expected:
        raise RuntimeError(
            f"method '{getattr(method, 'name', method)}' returned shape {tuple(out.shape)}, expected {expected}"
        )
    return out


@torch.inference_mode()
def upscale_tiled(
    method: SRMethod,
    lr: torch.Tensor,
    tile: int | None = None,
    overlap: int = 16,
    batch: int = 1,
    *,
    device: str | torch.device | None = None,
    quiet: bool = False,
) -> torch.Tensor:
    """Upscale ``lr`` ``[1, 3, H, W]`` (float, [0, 1]) with ``method``, tile by tile.

    tile: LR tile side in pixels; None (or an image no larger than one tile) means one pass.
        Rounded up to the method's ``pad_multiple``.
    overlap: LR pixels shared by neighbouring tiles (capped just under half the tile).
    batch: tiles per method call; peak memory grows with ``tile * tile * batch``.
    device: where the method runs (default: ``lr``'s device). The output is accumulated on
        ``lr``'s device, so a GPU only ever holds one batch of tiles.
    quiet: no progress bar (there is none for a single tile either).

    Returns ``[1, 3, H*scale, W*scale]`` on ``lr``'s device, clamped to [0, 1].
    """
    if lr.ndim != 4 or lr.shape[0] != 1 or lr.shape[1] != 3:
        raise ValueError(f"expected a [1, 3, H, W] tensor, got shape {tuple(lr.shape)}")
    if batch < 1:
        raise OptionError(f"tile batch must be >= 1, got {batch}")
    if overlap < 0:
        raise OptionError(f"tile overlap must be >= 0, got {overlap}")
    run_device = torch.device(device) if device is not None else lr.device
    scale = int(method.scale)
    multiple = max(int(getattr(method, "pad_multiple", 1) or 1), 1)
    h, w = lr.shape[-2:]
    padded = pad_to_multiple(lr.float(), multiple)
    ph, pw = padded.shape[-2:]

    if tile is not None and tile < MIN_TILE:
        raise OptionError(f"tile must be at least {MIN_TILE} px, got {tile}")
    if tile is None or (ph <= tile and pw <= tile):
        out = _run(method, padded, run_device).to(lr.device)
        return out[..., : h * scale, : w * scale].clamp(0.0, 1.0)

    tile = math.ceil(tile / multiple) * multiple
    th, tw = min(tile, ph), min(tile, pw)
    overlap = min(overlap, (tile - 1) // 2)  # keeps the stride positive
    ys, xs = tile_starts(ph, th, overlap), tile_starts(pw, tw, overlap)
    positions = [(y, x) for y in ys for x in xs]

    out = torch.zeros(1, 3, ph * scale, pw * scale, dtype=torch.float32, device=lr.device)
    weight = torch.zeros(1, 1, ph * scale, pw * scale, dtype=torch.float32, device=lr.device)
    ramp = blend_ramp(overlap * scale, device=lr.device)
    from tqdm import tqdm

    bar = tqdm(
        total=len(positions),
        desc="tiles",
        unit="tile",
        file=sys.stderr,
        disable=quiet or len(positions) <= 1,
        leave=False,
    )
    try:
        for group in _batches(positions, batch):
            crops = torch.cat([padded[..., y : y + th, x : x + tw] for y, x in group], dim=0)
            result = _run(method, crops, run_device).to(device=lr.device, dtype=torch.float32)
            for i, (y, x) in enumerate(group):
                wy = _axis_window(th * scale, ramp, y > 0, y + th < ph)
                wx = _axis_window(tw * scale, ramp, x > 0, x + tw < pw)
                win = wy[:, None] * wx[None, :]
                ys_hr, xs_hr = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
                out[..., ys_hr, xs_hr] += result[i : i + 1] * win
                weight[..., ys_hr, xs_hr] += win
            bar.update(len(group))
    finally:
        bar.close()
    out = out / weight.clamp_min(1e-8)
    return out[..., : h * scale, : w * scale].clamp(0.0, 1.0)
