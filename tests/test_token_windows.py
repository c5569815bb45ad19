"""Windows over a token grid, and which window owns each token (RealSRT's aggregate=tokens)."""

from __future__ import annotations

import pytest
import torch

from tokensr.errors import OptionError
from tokensr.inference.token_windows import WindowGrid, owners, window_starts


def test_window_starts_cover_the_axis_with_whole_windows() -> None:
    assert window_starts(16, 16, 12) == [0]
    assert window_starts(40, 16, 12) == [0, 12, 24]
    assert window_starts(41, 16, 12) == [0, 12, 24, 25]  # the last one ends at the edge
    assert window_starts(32, 16, 16) == [0, 16]
    with pytest.raises(OptionError, match="stride"):
        window_starts(40, 16, 17)
    with pytest.raises(OptionError, match="stride"):
        window_starts(40, 16, 0)
    with pytest.raises(ValueError, match="smaller than the window"):
        window_starts(10, 16, 8)


@pytest.mark.parametrize("length,window,stride", [(16, 16, 8), (41, 16, 12), (70, 16, 14), (33, 8, 3)])
def test_each_position_goes_to_the_window_with_the_nearest_centre(length: int, window: int, stride: int) -> None:
    starts = window_starts(length, window, stride)
    own = owners(length, window, starts)
    for p in range(length):
        s = int(own[p])
        assert s <= p < s + window  # inside its window
        best = min(abs(p + 0.5 - (t + window / 2)) for t in starts if t <= p < t + window)
        assert abs(p + 0.5 - (s + window / 2)) == best


def test_owned_parts_tile_the_grid_exactly_once() -> None:
    grid = WindowGrid(23, 37, 8, 5)
    count = torch.zeros(23, 37, dtype=torch.long)
    for top, left in grid.boxes:
        gr, gc, wr, wc = grid.owned(top, left)
        count[gr, gc] += 1
        # window coordinates are the same tokens, shifted by the window's origin
        assert gr.start - top == wr.start and gc.start - left == wc.start
        assert 0 <= wr.start and wr.stop <= 8 and 0 <= wc.start and wc.stop <= 8
    assert torch.equal(count, torch.ones_like(count))


def test_a_window_far_from_every_token_owns_nothing() -> None:
    # with stride 1 and window 8, the windows near the middle own a single row each, and
    # the end window may own none: owned() then returns empty slices
    grid = WindowGrid(8, 8, 8, 1)
    assert grid.boxes == [(0, 0)]
    dense = WindowGrid(10, 8, 8, 1)
    sizes = [dense.owned(t, 0)[0].stop - dense.owned(t, 0)[0].start for t, _ in dense.boxes]
    assert sum(sizes) == 10 and min(sizes) >= 0


def test_parts_are_the_windows_that_own_tokens() -> None:
    grid = WindowGrid(10, 8, 8, 1)
    kept = [(top, left) for top, left in grid.boxes if grid.owned(top, left)[0].stop > 0]
    assert [(top, left) for top, left, _ in grid.parts] == kept
    assert all(part == grid.owned(top, left) for top, left, part in grid.parts)
