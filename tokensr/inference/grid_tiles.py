"""Run a convolutional network over a large image or token map in tiles with a margin.

A VQGAN encoder turns an image into a token grid (``f`` pixels per token); its decoder turns a
token grid back into pixels. On a whole 2048 x 2048 image either one holds several float
tensors of 2048 x 2048 x channels at once (a 32-channel tensor alone is 0.5 GB), so RealSRT
runs both in tiles of the *token grid*: each tile is extended by ``margin`` tokens on every
side that has more grid, the network runs on it, and only the tile's own part of the result is
kept. With a margin that covers most of the receptive field the tiles join without seams.

The result is not bit-identical to one pass: GroupNorm statistics are taken per tile, and
the receptive field reaches a little beyond the margin. Large tiles keep both effects small,
and a grid no larger than one tile plus its margins runs in one pass, exactly as before.

``unit_in`` and ``unit_out`` are the input's and the output's pixels per grid cell: an
encoder takes ``f`` pixels per token and gives one value per token (``f, 1``); a decoder takes
tokens and gives ``f`` pixels per token (``1, f``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def grid_tile_count(rows: int, cols: int, tile: int, margin: int = 0) -> int:
    """How many calls `map_in_tiles` makes for a ``rows x cols`` grid."""
    if rows <= tile + 2 * margin and cols <= tile + 2 * margin:
        return 1
    return -(-rows // tile) * -(-cols // tile)


def map_in_tiles(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    grid: tuple[int, int],
    tile: int,
    margin: int,
    unit_in: int = 1,
    unit_out: int = 1,
    after_each: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``fn(x)`` computed tile by tile over a ``grid = (rows, cols)`` of cells.

    x: ``[..., rows * unit_in, cols * unit_in]``; ``fn`` maps any such crop to
    ``[..., r * unit_out, c * unit_out]`` for its ``r x c`` cells. tile, margin: in cells.
    after_each: called after every call of ``fn`` (progress).
    """
    rows, cols = grid
    if x.shape[-2] != rows * unit_in or x.shape[-1] != cols * unit_in:
        raise ValueError(f"input {tuple(x.shape[-2:])} is not a {rows}x{cols} grid of {unit_in}-px cells")
    if tile < 1 or margin < 0:
        raise ValueError(f"tile must be >= 1 and margin >= 0, got {tile} and {margin}")
    if grid_tile_count(rows, cols, tile, margin) == 1:
        out = fn(x)
        if after_each is not None:
            after_each()
        return out
    result: torch.Tensor | None = None
    for r in range(0, rows, tile):
        for c in range(0, cols, tile):
            r0, c0 = max(0, r - margin), max(0, c - margin)
            r1, c1 = min(rows, r + tile + margin), min(cols, c + tile + margin)
            part = fn(x[..., r0 * unit_in : r1 * unit_in, c0 * unit_in : c1 * unit_in])
            if result is None:
                result = part.new_empty(*part.shape[:-2], rows * unit_out, cols * unit_out)
            rr, cc = min(rows, r + tile), min(cols, c + tile)
            result[..., r * unit_out : rr * unit_out, c * unit_out : cc * unit_out] = part[
                ..., (r - r0) * unit_out : (rr - r0) * unit_out, (c - c0) * unit_out : (cc - c0) * unit_out
            ]
            if after_each is not None:
                after_each()
    assert result is not None
    return result


__all__ = ["map_in_tiles", "grid_tile_count"]
