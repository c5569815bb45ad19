"""Progress inside one image: a ``progress(done, total)`` callback and a terminal bar for it.

Tiling (`tokensr.inference.tiling`) reports ``progress(done, total)`` after every batch of
tiles; the pipeline passes the callback down. Any callable with that signature works (a web
app can forward it to its own progress display); `ProgressBar` is the one the CLI uses: a
tqdm bar with rate and ETA, drawn only when its stream is a terminal.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import IO, Any


class ProgressBar:
    """A ``progress(done, total)`` callable that draws a tqdm bar on ``file`` (default stderr).

    enabled: False draws nothing. The bar is also off when ``file`` is not a terminal
        (tqdm's ``disable=None``), and when ``total`` is below ``min_total`` (one tile: there is
        nothing to show between start and end).
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

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


__all__ = ["ProgressBar"]
