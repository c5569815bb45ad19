"""Overlapping windows over a token grid, each token owned by the window where it is most central.

A transformer trained on ``P x P`` token windows (RealSRT's 16-px LR patches are 16 x 16 tokens
at x4 with an f=4 tokenizer) works on a token map of any size like this:

1. cover each axis of the grid with windows of ``P`` tokens every ``stride`` tokens; the last
   window is moved back to end at the grid's edge, so every window is whole;
2. run the transformer on each window (in batches);
3. keep each token from the window whose centre is nearest to it, so every token is predicted
   with as much context on every side as the grid allows, and windows never disagree about a
   token (no averaging of different textures);
4. decode the assembled token map once: the decoder's receptive field spans window borders,
   so no seams appear where the owning window changes.

The ownership is separable: ``owner_rows[i]`` is the start of the window that owns row ``i``,
``owner_cols[j]`` likewise, and token ``(i, j)`` comes from window ``(owner_rows[i],
owner_cols[j])``.
"""

from __future__ import annotations

import torch

from tokensr.errors import OptionError


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of whole windows of ``window`` tokens every ``stride`` covering ``length``
    (the last one ends at ``length``). ``length`` must be at least ``window``."""
    if window < 1 or not 1 <= stride <= window:
        raise OptionError(f"window stride must be in 1..{window} (the window size), got {stride}")
    if length < window:
        raise ValueError(f"a grid of {length} tokens is smaller than the window of {window}")
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def owners(length: int, window: int, starts: list[int]) -> torch.Tensor:
    """For each position ``0..length-1`` the start of the window whose centre is nearest
    (the earlier window on a tie), as a long tensor ``[length]``."""
    pos = torch.arange(length, dtype=torch.float64)[:, None] + 0.5
    centres = torch.tensor(starts, dtype=torch.float64)[None, :] + window / 2
    inside = (pos >= centres - window / 2) & (pos < centres + window / 2)
    dist = torch.where(inside, (pos - centres).abs(), torch.full_like(pos - centres, float("inf")))
    return torch.tensor(starts, dtype=torch.long)[dist.argmin(dim=1)]


class WindowGrid:
    """The windows over a ``rows x cols`` token grid and which tokens each one owns.

    ``boxes`` lists every window as ``(top, left)``; :meth:`owned` gives the part of a window
    that is kept, in grid and in window coordinates; ``parts`` lists ``(top, left, owned)`` for
    the windows that own at least one token (the ones worth running), computed once.
    """

    def __init__(self, rows: int, cols: int, window: int, stride: int) -> None:
        self.rows, self.cols, self.window = rows, cols, window
        self.row_starts = window_starts(rows, window, stride)
        self.col_starts = window_starts(cols, window, stride)
        self.row_owner = owners(rows, window, self.row_starts)
        self.col_owner = owners(cols, window, self.col_starts)
        self.boxes = [(r, c) for r in self.row_starts for c in self.col_starts]
        self.parts = [(r, c, part) for r, c in self.boxes if (part := self.owned(r, c))[0].stop > 0]

    def owned(self, top: int, left: int) -> tuple[slice, slice, slice, slice]:
        """``(grid_rows, grid_cols, window_rows, window_cols)`` slices of the tokens that the
        window at ``(top, left)`` owns (owned tokens are contiguous along each axis)."""
        rows = (self.row_owner == top).nonzero().flatten()
        cols = (self.col_owner == left).nonzero().flatten()
        if rows.numel() == 0 or cols.numel() == 0:
            return slice(0, 0), slice(0, 0), slice(0, 0), slice(0, 0)
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        return slice(r0, r1), slice(c0, c1), slice(r0 - top, r1 - top), slice(c0 - left, c1 - left)


__all__ = ["WindowGrid", "owners", "window_starts"]
