"""Tiled inference: same result as one pass for local methods, no seams, padding, batching."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from tokensr.errors import OptionError
from tokensr.inference.tiling import (
    _axis_window,
    blend_ramp,
    tile_count,
    tile_starts,
    upscale_tiled,
    upscale_tiled_rows,
)
from tokensr.methods.bicubic import Bicubic, build


class Recording:
    """Nearest-neighbour x``scale`` that records the shape of every batch it is called with."""

    name = "recording"

    def __init__(self, scale: int = 2, pad_multiple: int | None = None, bias: bool = False) -> None:
        self.scale = scale
        self.calls: list[tuple[int, ...]] = []
        if pad_multiple is not None:
            self.pad_multiple = pad_multiple
        self.bias = bias

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(lr.shape))
        m = getattr(self, "pad_multiple", 1)
        assert lr.shape[-1] % m == 0 and lr.shape[-2] % m == 0, "input not padded to pad_multiple"
        out = F.interpolate(lr, scale_factor=self.scale, mode="nearest")
        if self.bias:  # offsets 0, 0.2, 0, 0.2, ... per tile: a worst case for seams
            out = out + 0.2 * (len(self.calls) % 2)
        return out


def test_bicubic_factory_and_shape() -> None:
    method = build(scale=3, weights=None, device="cpu", steps=8, alpha=0.5)  # unknown options ignored
    out = method(torch.rand(2, 3, 5, 7))
    assert out.shape == (2, 3, 15, 21) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(OptionError):
        build(scale=0, weights=None, device="cpu")
    with pytest.raises(OptionError):
        build(scale=4, weights="some/folder", device="cpu")


@pytest.mark.parametrize(("tile", "overlap", "batch"), [(16, 7, 1), (24, 12, 3), (20, 9, 2)])
def test_tiled_bicubic_equals_one_pass(tile: int, overlap: int, batch: int) -> None:
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 37, 53)  # noise: the hardest content for seams
    method = Bicubic(scale=4)
    full = upscale_tiled(method, lr, tile=None)
    tiled = upscale_tiled(method, lr, tile=tile, overlap=overlap, batch=batch, quiet=True)
    assert tiled.shape == full.shape == (1, 3, 148, 212)
    # The blend window gives no weight to pixels within overlap/4 (here >= 1.75 LR px) of a cut
    # edge, which covers bicubic's reach (under 2 px), so the results agree everywhere.
    assert torch.allclose(tiled, full, atol=1e-5)


def test_tiled_bicubic_small_overlap_close_to_one_pass() -> None:
    torch.manual_seed(1)
    lr = F.interpolate(torch.rand(1, 3, 12, 14), size=(40, 44), mode="bilinear")  # smooth-ish content
    method = Bicubic(scale=4)
    full = upscale_tiled(method, lr, tile=None)
    tiled = upscale_tiled(method, lr, tile=16, overlap=4, quiet=True)  # margin of only 1 LR px
    diff = (tiled - full).abs()
    assert diff.mean() < 1e-4 and diff.max() < 5e-3  # without overlap: max ~0.09


def test_blending_has_no_seams() -> None:
    lr = torch.full((1, 3, 40, 40), 0.5)
    smooth = Recording(scale=2, bias=True)
    out = upscale_tiled(smooth, lr, tile=16, overlap=8, batch=1, quiet=True)
    assert len(smooth.calls) > 4
    dx = (out[..., 1:] - out[..., :-1]).abs().max().item()
    dy = (out[..., 1:, :] - out[..., :-1, :]).abs().max().item()
    step = max(dx, dy)
    # A 0.2 offset between neighbouring tiles is spread over the cosine part of the overlap
    # (8 LR px at x2 = 16 HR px, half of it ramping): slope <= 0.2 * pi / 2 / 8 ~ 0.04.
    assert step < 0.06
    # Without overlap the same offsets show as hard steps: the check above can fail.
    hard = upscale_tiled(Recording(scale=2, bias=True), lr, tile=16, overlap=0, quiet=True)
    hard_step = (hard[..., 1:] - hard[..., :-1]).abs().max().item()
    assert hard_step > 0.19


def test_constant_image_stays_constant() -> None:
    lr = torch.full((1, 3, 29, 31), 0.25)
    out = upscale_tiled(Recording(scale=3), lr, tile=12, overlap=8, quiet=True)
    assert torch.allclose(out, torch.full_like(out, 0.25), atol=1e-6)


def test_single_pass_when_no_tile_or_small_image() -> None:
    lr = torch.rand(1, 3, 10, 12)
    for tile in (None, 12, 64):
        m = Recording()
        out = upscale_tiled(m, lr, tile=tile)
        assert m.calls == [(1, 3, 10, 12)] and out.shape == (1, 3, 20, 24)


def test_batches_bound_the_work_per_call() -> None:
    lr = torch.rand(1, 3, 50, 50)
    m = Recording()
    upscale_tiled(m, lr, tile=16, overlap=4, batch=3, quiet=True)
    n_tiles = len(tile_starts(50, 16, 4)) ** 2
    assert len(m.calls) == math.ceil(n_tiles / 3)
    assert all(c[0] <= 3 and c[2:] == (16, 16) for c in m.calls)


@pytest.mark.parametrize("size", [(1, 1), (2, 5), (5, 3), (13, 21)])
def test_pad_multiple_for_tiny_and_odd_images(size: tuple[int, int]) -> None:
    h, w = size
    lr = torch.rand(1, 3, h, w)
    m = Recording(scale=2, pad_multiple=8)
    out = upscale_tiled(m, lr, tile=None)
    assert out.shape == (1, 3, 2 * h, 2 * w)
    # nearest upsampling of the (padded) input, cropped: the original pixels come back
    assert torch.allclose(out[..., ::2, ::2], lr)
    tiled = upscale_tiled(Recording(scale=2, pad_multiple=8), lr, tile=10, overlap=2, quiet=True)
    assert torch.allclose(tiled, out, atol=1e-6)


def test_tile_starts_cover_with_overlap() -> None:
    for size in range(1, 80):
        for tile, overlap in ((8, 2), (16, 4), (20, 5)):
            starts = tile_starts(size, tile, overlap)
            t = min(tile, size)
            assert starts[0] == 0 and starts[-1] + t == size
            for a, b in zip(starts, starts[1:], strict=False):
                assert a < b and a + t - b >= overlap


def test_blend_ramp_shape() -> None:
    ramp = blend_ramp(32)
    assert ramp[:8].eq(0).all() and ramp[-8:].gt(0.99).all()
    assert (ramp[1:] >= ramp[:-1]).all()
    assert blend_ramp(0).numel() == 0


def test_wrong_output_shape_and_bad_options() -> None:
    class Broken:
        name, scale = "broken", 2

        def __call__(self, lr: torch.Tensor) -> torch.Tensor:
            return lr

    with pytest.raises(RuntimeError, match="broken"):
        upscale_tiled(Broken(), torch.rand(1, 3, 8, 8))
    with pytest.raises(OptionError):
        upscale_tiled(Bicubic(2), torch.rand(1, 3, 8, 8), tile=4)
    with pytest.raises(OptionError):
        upscale_tiled(Bicubic(2), torch.rand(1, 3, 8, 8), tile=16, batch=0)


class PerTileOffset:
    """Nearest x3 plus an offset that depends on each tile's content: seams show if rows are cut early."""

    name, scale = "offset", 3

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        offset = 0.3 * lr.mean(dim=(1, 2, 3))[:, None, None, None]
        return F.interpolate(lr, scale_factor=3, mode="nearest") * 0.7 + offset


def whole_canvas_blend(method: PerTileOffset, lr: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Reference: every tile weighted by its window into one full canvas, divided by the summed weights."""
    s, (h, w) = method.scale, lr.shape[-2:]
    ramp = blend_ramp(overlap * s)
    out, weight = torch.zeros(1, 3, h * s, w * s), torch.zeros(1, 1, h * s, w * s)
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            wy = _axis_window(tile * s, ramp, y > 0, y + tile < h)
            wx = _axis_window(tile * s, ramp, x > 0, x + tile < w)
            win = wy[:, None] * wx[None, :]
            hr = (..., slice(y * s, (y + tile) * s), slice(x * s, (x + tile) * s))
            out[hr] += method(lr[..., y : y + tile, x : x + tile]) * win
            weight[hr] += win
    return (out / weight.clamp_min(1e-8)).clamp(0, 1)


def test_rows_stream_top_to_bottom_once_and_match_the_tensor() -> None:
    """The sink gets every output row exactly once, in order, equal to blending on one canvas."""
    torch.manual_seed(1)
    lr = torch.rand(1, 3, 45, 31)
    method = PerTileOffset()
    expected = whole_canvas_blend(method, lr, tile=12, overlap=5)
    pieces: list[tuple[int, torch.Tensor]] = []
    size = upscale_tiled_rows(method, lr, lambda y0, rows: pieces.append((y0, rows.clone())), 12, 5, 2)
    assert size == (135, 93)
    starts = [y0 for y0, _ in pieces]
    assert starts[0] == 0 and starts == sorted(starts) and len(pieces) > 2  # several strips, in order
    assert all(y0 + rows.shape[2] == nxt for (y0, rows), nxt in zip(pieces, starts[1:] + [135], strict=True))
    assert torch.allclose(torch.cat([rows for _, rows in pieces], dim=2), expected, atol=1e-6)


def test_band_of_tiles_stays_smaller_than_the_image() -> None:
    """No strip handed on (and so no float band) is taller than one row of tiles."""
    lr = torch.rand(1, 3, 64, 20)
    heights: list[int] = []
    upscale_tiled_rows(Bicubic(4), lr, lambda y0, rows: heights.append(rows.shape[2]), tile=16, overlap=4)
    assert sum(heights) == 256 and max(heights) <= 16 * 4 and len(heights) >= 4


def test_progress_is_called_after_every_batch_of_tiles() -> None:
    lr = torch.rand(1, 3, 40, 40)
    calls: list[tuple[int, int]] = []
    upscale_tiled(Recording(), lr, tile=16, overlap=4, batch=2, progress=lambda d, t: calls.append((d, t)))
    n = tile_count(Recording(), 40, 40, tile=16, overlap=4)
    assert n == 9
    assert calls == [(2, 9), (4, 9), (6, 9), (8, 9), (9, 9)]
    calls.clear()
    upscale_tiled(Recording(), lr, tile=None, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]


class Windowed(Recording):
    """`Recording` that reports 3 steps per image of each call through its ``progress_hook``."""

    def __init__(self) -> None:
        super().__init__()
        self.progress_hook: Callable[[int, int], None] | None = None
        self.hooked: list[bool] = []

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        self.hooked.append(self.progress_hook is not None)
        total = 3 * lr.shape[0]
        for done in range(lr.shape[0], total + 1, lr.shape[0]):
            if self.progress_hook is not None:
                self.progress_hook(done, total)
        return super().__call__(lr)


def test_progress_counts_the_steps_a_method_reports() -> None:
    lr = torch.rand(1, 3, 40, 40)
    calls: list[tuple[int, int]] = []
    method = Windowed()
    out = upscale_tiled(method, lr, tile=16, overlap=4, batch=2, progress=lambda d, t: calls.append((d, t)))
    assert torch.equal(out, upscale_tiled(Recording(), lr, tile=16, overlap=4, batch=2, quiet=True))
    # 9 tiles of 3 steps; a call of 2 tiles reports steps 1..3 of its 2 tiles (2 each); no repeats
    assert calls == [(2 * k, 27) for k in range(1, 13)] + [(25, 27), (26, 27), (27, 27)]
    assert method.hooked == [True] * 5 and method.progress_hook is None  # set for each call, then removed
    calls.clear()
    upscale_tiled(method, lr, tile=None, progress=lambda d, t: calls.append((d, t)))  # one pass: steps only
    assert calls == [(1, 3), (2, 3), (3, 3)]
    method.hooked.clear()
    upscale_tiled(method, lr, tile=16, overlap=4, quiet=True)  # nobody listens: no hook
    assert method.hooked == [False] * 9


def test_progress_bar_switches_to_windows_when_a_method_reports_steps() -> None:
    from tokensr.inference.progress import STEP_UNIT, ProgressBar, StepProgress

    bar = ProgressBar(enabled=False)
    steps = StepProgress(bar, tiles=4)
    steps.start(0, 1)
    assert bar.unit == "tile"
    steps.hook(1, 10)
    assert bar.unit == STEP_UNIT == "window" and steps.per_tile == 10


@pytest.mark.parametrize("size", [100, 513, 575, 625, 866, 1024, 1155, 3000, 4000, 6000])
def test_balanced_tiles_keep_the_count_and_cut_the_redone_work(size: int) -> None:
    """Along an axis the tiles are as many as the requested side needs, each no longer than it,
    overlapping by at least the overlap, and covering the axis with at most ~4 % redone work
    (a 625-px side in 512-px tiles, multiples of 8: 2 x 328 instead of 2 x 512)."""
    from tokensr.inference.tiling import balanced_tile

    tile, overlap = 512, 16
    side = balanced_tile(size, tile, overlap, multiple=8)
    if size <= tile:
        assert side == size
        return
    starts = tile_starts(size, side, overlap)
    assert len(starts) == len(tile_starts(size, tile, overlap)) and side <= tile and side % 8 == 0
    assert starts[0] == 0 and starts[-1] + side == size  # covers the axis, ends at the edge
    assert all(b - a <= side - overlap for a, b in zip(starts, starts[1:], strict=False))  # overlap >= 16
    assert len(starts) * side <= 1.05 * size + 8 * len(starts)
    if size == 625:
        assert side == 328 and len(tile_starts(625, 512, overlap)) * 512 / 625 > 1.6
