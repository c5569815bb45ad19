"""Progress inside one image: a ``progress(done, total)`` callback and a terminal bar for it.

Tiling (`tokensr.inference.tiling`) reports ``progress(done, total)`` after every batch of
tiles; the pipeline passes the callback down. Any callable with that signature works (a web
app can forward it to its own progress display); `ProgressBar` is the one the CLI uses: a
tqdm bar with rate and ETA, drawn only when its stream is a terminal.

Steps inside a tile: a method with a ``progress_hook`` attribute (`HasProgressHook`; RealSRT
has one) gets a ``hook(done, total)`` callable there for each call, and calls it as it
finishes parts of its work (RealSRT: token windows and decoder tiles). `StepProgress` turns
those into the same ``progress(done, total)`` callback, counting *steps* of the whole image
(the method's steps per tile times the tiles) instead of tiles, so one long tile, or an image
run in one pass, still shows its progress. For a method without the hook nothing changes:
the steps are the tiles. A `ProgressBar` then says "window" instead of "tile" (`STEP_UNIT`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import IO, Any, Protocol, runtime_checkable

# progress(done, total): called after every batch of tiles (or steps; see the module docstring).
Progress = Callable[[int, int], None]
STEP_UNIT = "window"  # what a bar calls a method's steps (RealSRT's are mostly token windows)


@runtime_checkable
class HasProgressHook(Protocol):
    """A method that reports its own steps: the caller sets ``progress_hook`` before a call."""

    progress_hook: Progress | None


@contextmanager
def method_hook(method: object, hook: Progress | None) -> Iterator[None]:
    """Set ``method.progress_hook`` to ``hook`` for the block (if the method has one), then
    restore it; a method without the attribute is left alone."""
    if hook is None or not isinstance(method, HasProgressHook):
        yield
        return
    before = method.progress_hook
    method.progress_hook = hook
    try:
        yield
    finally:
        method.progress_hook = before


class StepProgress:
    """Tile progress refined by the method's own steps, reported as ``progress(done, total)``.

    tiles: how many tiles (method calls of one tile each) the image takes. Before each call,
    `start` names the tiles already done and the tiles in the call; the method's hook
    (`hook`) reports ``(done, total)`` steps of that call; `finished` reports the tiles done
    after it. Steps per tile are learnt from the first call the method reports (its total
    over its tiles); until then, and for methods that report nothing, a tile is one step.
    Calls that would repeat the last report are dropped, and reports never go back.
    """

    def __init__(self, progress: Progress, tiles: int) -> None:
        self.progress = progress
        self.tiles = max(tiles, 1)
        self.per_tile = 0  # steps per tile, once the method has reported
        self._before = 0
        self._group = 1
        self._last = (-1, -1)

    def start(self, tiles_before: int, group: int) -> None:
        self._before, self._group = tiles_before, max(group, 1)

    def hook(self, done: int, total: int) -> None:
        """The method's ``progress_hook`` for the current call."""
        if total < 1:
            return
        if self.per_tile == 0:
            self.per_tile = max(1, round(total / self._group))
            set_unit = getattr(self.progress, "set_unit", None)
            if callable(set_unit):  # a ProgressBar: say what it now counts
                set_unit(STEP_UNIT)
        call_steps = self._group * self.per_tile
        steps = min(call_steps, round(min(done, total) * call_steps / total))
        self._report(self._before * self.per_tile + steps)

    def finished(self, tiles_done: int) -> None:
        """All tiles up to ``tiles_done`` are finished."""
        self._report(tiles_done * max(self.per_tile, 1))

    def _report(self, done: int) -> None:
        total = self.tiles * max(self.per_tile, 1)
        done = min(done, total)
        if done <= self._last[0] and total == self._last[1]:
            return
        self._last = (done, total)
        self.progress(done, total)


class ProgressBar:
    """A ``progress(done, total)`` callable that draws a tqdm bar on ``file`` (default stderr).

    enabled: False draws nothing. The bar is also off when ``file`` is not a terminal
        (tqdm's ``disable=None``), and when ``total`` is below ``min_total`` (one step: there is
        nothing to show between start and end).
    unit: what is counted; `StepProgress` switches it (`set_unit`) to "window" when a method
        reports its own steps.
    The bar is created on the first call (when the total is known) and removed by `close`
    (or at the end of a ``with`` block), so the per-image summary line stays readable.
    """

    def __init__(
        self,
        desc: str = "tiles",
        unit: str = "tile",
        *,
        file: IO[str] | None = None,
        enabled: bool = True,
        min_total: int = 2,
    ) -> None:
        self.desc = desc
        self.unit = unit
        self.file = file
        self.enabled = enabled
        self.min_total = min_total
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < self.min_total:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=self.desc,
                unit=self.unit,
                file=self.file or sys.stderr,
                disable=None,
                leave=False,
                dynamic_ncols=True,
            )
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def set_unit(self, unit: str) -> None:
        """Count ``unit`` from now on (e.g. "window" instead of "tile")."""
        self.unit = unit
        if self._bar is not None:
            self._bar.unit = unit

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


__all__ = ["STEP_UNIT", "HasProgressHook", "Progress", "ProgressBar", "StepProgress", "method_hook"]
