"""Tiles with a margin over a token grid (tokensr.inference.grid_tiles)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tokensr.inference.grid_tiles import grid_tile_count, map_in_tiles


def _encoder(f: int) -> nn.Module:
    """A local 'encoder': a 3x3 conv (receptive field 1 px each side), then f x f average pooling."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.AvgPool2d(f))


def test_one_tile_is_one_call() -> None:
    calls: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x * 2

    x = torch.rand(1, 3, 20, 12)
    assert grid_tile_count(20, 12, tile=16, margin=2) == 1  # 20 <= 16 + 2 * 2
    assert torch.equal(map_in_tiles(fn, x, (20, 12), tile=16, margin=2), x * 2)
    assert calls == [(1, 3, 20, 12)]


def test_encoder_in_tiles_equals_one_pass_when_the_margin_covers_its_reach() -> None:
    f = 4
    enc = _encoder(f)
    x = torch.rand(2, 3, 37 * f, 23 * f)
    with torch.no_grad():
        whole = enc(x)
        seen: list[int] = []
        tiled = map_in_tiles(enc, x, (37, 23), tile=8, margin=1, unit_in=f, after_each=lambda: seen.append(1))
    assert tiled.shape == whole.shape == (2, 5, 37, 23)
    assert len(seen) == grid_tile_count(37, 23, 8, 1) == 5 * 3
    torch.testing.assert_close(tiled, whole)


def test_without_a_margin_the_tile_borders_differ() -> None:
    # the 3x3 conv reads across tile borders, so margin 0 changes the border cells: the margin matters
    f = 4
    enc = _encoder(f)
    x = torch.rand(1, 3, 24 * f, 24 * f)
    with torch.no_grad():
        whole, tiled = enc(x), map_in_tiles(enc, x, (24, 24), tile=8, margin=0, unit_in=f)
    diff = (tiled - whole).abs().amax(dim=(0, 1))
    assert diff[:, 7].max() > 1e-4 and diff[:, 8].max() > 1e-4  # both sides of a border
    assert diff[3:5, 3:5].max() < 1e-6  # inside a tile: as one pass


def test_decoder_direction_puts_each_tile_in_place() -> None:
    f = 4
    ids = torch.arange(30 * 17, dtype=torch.float32).view(1, 1, 30, 17)

    def dec(z: torch.Tensor) -> torch.Tensor:  # blur then upsample: each pixel depends on its neighbours
        return F.interpolate(F.avg_pool2d(z, 3, 1, 1, count_include_pad=False), scale_factor=f, mode="nearest")

    out = map_in_tiles(dec, ids, (30, 17), tile=7, margin=1, unit_out=f)
    assert out.shape == (1, 1, 120, 68)
    torch.testing.assert_close(out, dec(ids))


def test_shape_and_option_errors() -> None:
    with pytest.raises(ValueError, match="grid"):
        map_in_tiles(lambda t: t, torch.zeros(1, 3, 10, 10), (3, 3), tile=2, margin=0, unit_in=4)
    with pytest.raises(ValueError, match="tile"):
        map_in_tiles(lambda t: t, torch.zeros(1, 3, 12, 12), (3, 3), tile=0, margin=0, unit_in=4)
