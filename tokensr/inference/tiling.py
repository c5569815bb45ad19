"""Tiled inference for any SR method: bounded memory, no seams.

The LR image is cut into equal overlapping tiles (the last tile in each direction is moved
back so it ends at the image edge, so every tile has the same size and tiles can be batched).
The requested tile side is an upper bound: along each axis the tiles are only as long as
their count needs (`balanced_tile`), so the last one does not redo most of its neighbour.
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

Memory: `upscale_tiled_rows` never holds the whole float output. Tiles run in row-major
order, ``batch`` at a time, and are summed into a float *band* only as tall as the tile rows
in flight; the blend weights are separable (a row profile times a column profile), so no
weight map is kept at all. As soon as no tile still to come can touch a row, the row is
finished and handed to a ``sink(y0, rows)`` callback (top to bottom, each row exactly once),
which can turn it into uint8 or write it out. Peak float memory is then about
``tile * scale`` output rows (times ``batch`` rows of tiles) instead of the whole image.
`upscale_tiled` is the same with a sink that fills one float tensor, for callers that want it.

Progress: ``progress(done, total)`` is called after every batch of tiles (``total`` tiles).
A method that reports its own steps (a ``progress_hook`` attribute, e.g. RealSRT's token
windows) is given a hook for each call, and the callback then counts steps of the whole image
instead of tiles, also within a tile and in one pass (`tokensr.inference.progress.StepProgress`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from tokensr.errors import OptionError
from tokensr.inference.progress import Progress, StepProgress, method_hook
from tokensr.methods.base import SRMethod

MIN_TILE = 8
SINK_ROWS = 128  # finished rows are handed to the sink at most this many at a time

# sink(y0, rows): finished output rows ``[1, 3, n, W*scale]`` (float32 in [0, 1]) starting at y0.
RowSink = Callable[[int, torch.Tensor], None]


def pad_to_multiple(lr: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom/right of ``[B, C, H, W]`` so H and W are multiples of ``multiple``."""
    h, w = lr.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return lr
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(lr, (0, pw, 0, ph), mode=mode)


def balanced_tile(size: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The tile side to use along an axis of ``size``: as many tiles as ``tile`` needs, but each
    only as long as that count needs (a multiple of ``multiple``, never above ``tile``), so the
    tiles overlap by about ``overlap`` instead of the last one sliding back over its neighbour.
    A 625-px side in 512-px tiles gets two tiles of 321 px, not 512 + 512 (1.6x the work)."""
    if tile >= size:
        return size
    count = len(tile_starts(size, tile, overlap))
    side = math.ceil((size + (count - 1) * overlap) / count)
    side = math.ceil(side / multiple) * multiple
    return min(tile, max(side, 2 * overlap + 1))


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


def tile_count(method: SRMethod, height: int, width: int, tile: int | None, overlap: int = 16) -> int:
    """How many method calls of one tile an ``height x width`` LR image takes (1 = one pass)."""
    multiple = max(int(getattr(method, "pad_multiple", 1) or 1), 1)
    ph, pw = math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple
    if tile is None or (ph <= tile and pw <= tile):
        return 1
    _, _, _, ys, xs = _tile_layout(ph, pw, tile, overlap, multiple)
    return len(ys) * len(xs)


def _tile_layout(
    ph: int, pw: int, tile: int, overlap: int, multiple: int
) -> tuple[int, int, int, list[int], list[int]]:
    """``(th, tw, overlap, ys, xs)`` for a padded ``ph x pw`` image cut into tiles of at most
    ``tile`` (rounded up to ``multiple``): the balanced tile sides, the overlap actually used
    (capped so the stride stays positive) and the tile starts along each axis."""
    tile = math.ceil(tile / multiple) * multiple
    overlap = min(overlap, (tile - 1) // 2)
    th, tw = balanced_tile(ph, tile, overlap, multiple), balanced_tile(pw, tile, overlap, multiple)
    return th, tw, overlap, tile_starts(ph, th, overlap), tile_starts(pw, tw, overlap)


def _axis_profile(
    size: int, tile: int, starts: list[int], ramp: torch.Tensor, scale: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-tile windows along one axis (output pixels) and their sum over the whole axis."""
    windows = [_axis_window(tile * scale, ramp, s > 0, s + tile < size) for s in starts]
    total = torch.zeros(size * scale, dtype=torch.float32, device=ramp.device)
    for s, win in zip(starts, windows, strict=True):
        total[s * scale : (s + tile) * scale] += win
    return windows, total.clamp_min(1e-8)


def _shift_up(band: torch.Tensor, n: int) -> None:
    """Move the rows of ``band`` [1, C, H, W] up by ``n`` in place and zero the ``n`` freed at the bottom."""
    height = band.shape[2]
    if n >= height:
        band.zero_()
        return
    for k in range(0, height - n, n):  # blocks of at most n rows: source and target never overlap
        m = min(n, height - n - k)
        band[..., k : k + m, :] = band[..., n + k : n + k + m, :]
    band[..., height - n :, :] = 0.0


@torch.inference_mode()
def upscale_tiled_rows(
    method: SRMethod,
    lr: torch.Tensor,
    sink: RowSink,
    tile: int | None = None,
    overlap: int = 16,
    batch: int = 1,
    *,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Upscale ``lr`` ``[1, 3, H, W]`` (float, [0, 1]) tile by tile, streaming finished rows.

    sink: called as ``sink(y0, rows)`` with ``rows`` ``[1, 3, n, W*scale]`` float32 in [0, 1]
        on ``lr``'s device, for consecutive ``y0`` from 0 until all ``H*scale`` rows are out.
        The tensor may be reused afterwards: copy what you keep.
    tile: LR tile side in pixels; None (or an image no larger than one tile) means one pass.
        Rounded up to the method's ``pad_multiple``.
    overlap: LR pixels shared by neighbouring tiles (capped just under half the tile).
    batch: tiles per method call; peak memory grows with ``tile * tile * batch``.
    device: where the method runs (default: ``lr``'s device). Blending happens on ``lr``'s
        device, so a GPU only ever holds one batch of tiles.
    progress: ``progress(done, total)`` after each batch of tiles (once, ``(1, 1)``, for one pass);
        in steps for a method with a ``progress_hook`` (see the module docstring).

    Returns the output size ``(H*scale, W*scale)``.
    """
    if lr.ndim != 4 or lr.shape[0] != 1 or lr.shape[1] != 3:
        raise ValueError(f"expected a [1, 3, H, W] tensor, got shape {tuple(lr.shape)}")
    if batch < 1:
        raise OptionError(f"tile batch must be >= 1, got {batch}")
    if overlap < 0:
        raise OptionError(f"tile overlap must be >= 0, got {overlap}")
    if tile is not None and tile < MIN_TILE:
        raise OptionError(f"tile must be at least {MIN_TILE} px, got {tile}")
    run_device = torch.device(device) if device is not None else lr.device
    scale = int(method.scale)
    multiple = max(int(getattr(method, "pad_multiple", 1) or 1), 1)
    h, w = lr.shape[-2:]
    out_h, out_w = h * scale, w * scale
    padded = pad_to_multiple(lr.float(), multiple)
    ph, pw = padded.shape[-2:]

    if tile is None or (ph <= tile and pw <= tile):
        steps = None if progress is None else StepProgress(progress, 1)
        with method_hook(method, None if steps is None else steps.hook):
            out = _run(method, padded, run_device).to(device=lr.device, dtype=torch.float32)
        if steps is not None:
            steps.finished(1)
        sink(0, out[..., :out_h, :out_w].clamp(0.0, 1.0))
        return out_h, out_w

    th, tw, overlap, ys, xs = _tile_layout(ph, pw, tile, overlap, multiple)
    positions = [(y, x) for y in ys for x in xs]  # row-major: rows finish top to bottom
    ramp = blend_ramp(overlap * scale, device=lr.device)
    wys, row_sum = _axis_profile(ph, th, ys, ramp, scale)
    wxs, col_sum = _axis_profile(pw, tw, xs, ramp, scale)
    window_y = dict(zip(ys, wys, strict=True))
    window_x = dict(zip(xs, wxs, strict=True))

    band = torch.zeros(1, 3, 0, pw * scale, dtype=torch.float32, device=lr.device)
    band_top = 0  # output row of band[:, :, 0]
    done = 0
    steps = None if progress is None else StepProgress(progress, len(positions))
    for group in _batches(positions, batch):
        crops = torch.cat([padded[..., y : y + th, x : x + tw] for y, x in group], dim=0)
        if steps is not None:
            steps.start(done, len(group))
        with method_hook(method, None if steps is None else steps.hook):
            result = _run(method, crops, run_device).to(device=lr.device, dtype=torch.float32)
        need = max(y + th for y, _ in group) * scale - band_top
        if need > band.shape[2]:  # only the first time (or a taller batch): the band is reused
            grown = torch.zeros(1, 3, need, pw * scale, dtype=torch.float32, device=lr.device)
            grown[..., : band.shape[2], :] = band
            band = grown
        for i, (y, x) in enumerate(group):
            win = window_y[y][:, None] * window_x[x][None, :]
            rows = slice(y * scale - band_top, (y + th) * scale - band_top)
            band[..., rows, x * scale : (x + tw) * scale].addcmul_(result[i : i + 1], win)
        del result
        done += len(group)
        # Rows above the next tile still to run can no longer change: normalise and hand them on.
        finished = (positions[done][0] if done < len(positions) else ph) * scale
        if finished > band_top:
            n = finished - band_top
            for k in range(0, min(n, out_h - band_top), SINK_ROWS):  # small pieces: small temporaries
                m = min(SINK_ROWS, n - k, out_h - band_top - k)
                weights = row_sum[band_top + k : band_top + k + m, None] * col_sum[:out_w]
                sink(band_top + k, (band[..., k : k + m, :out_w] / weights).clamp_(0.0, 1.0))
            _shift_up(band, n)
            band_top = finished
        if steps is not None:
            steps.finished(done)
    return out_h, out_w


def upscale_tiled(
    method: SRMethod,
    lr: torch.Tensor,
    tile: int | None = None,
    overlap: int = 16,
    batch: int = 1,
    *,
    device: str | torch.device | None = None,
    quiet: bool = False,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Upscale ``lr`` ``[1, 3, H, W]`` (float, [0, 1]) with ``method``, tile by tile.

    The same as `upscale_tiled_rows` (see it for ``tile``, ``overlap``, ``batch``, ``device``
    and ``progress``) collecting the rows into one tensor. ``quiet=False`` without a
    ``progress`` callback shows a tqdm bar on stderr when there is more than one tile.

    Returns ``[1, 3, H*scale, W*scale]`` on ``lr``'s device, clamped to [0, 1].
    """
    if lr.ndim != 4 or lr.shape[0] != 1 or lr.shape[1] != 3:
        raise ValueError(f"expected a [1, 3, H, W] tensor, got shape {tuple(lr.shape)}")
    scale = int(method.scale)
    out = torch.empty(1, 3, lr.shape[2] * scale, lr.shape[3] * scale, dtype=torch.float32, device=lr.device)

    def keep(y0: int, rows: torch.Tensor) -> None:
        out[..., y0 : y0 + rows.shape[2], :] = rows

    if progress is not None or quiet:
        upscale_tiled_rows(method, lr, keep, tile, overlap, batch, device=device, progress=progress)
        return out
    from tokensr.inference.progress import ProgressBar

    with ProgressBar() as bar:
        upscale_tiled_rows(method, lr, keep, tile, overlap, batch, device=device, progress=bar)
    return out


__all__ = [
    "MIN_TILE",
    "Progress",
    "RowSink",
    "balanced_tile",
    "blend_ramp",
    "pad_to_multiple",
    "tile_count",
    "tile_starts",
    "upscale_tiled",
    "upscale_tiled_rows",
]
