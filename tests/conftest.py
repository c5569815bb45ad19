"""Shared test fixtures: tiny generated images (no files from outside the repo)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def smooth_pattern(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Float64 ``H x W x C`` in [0, 1]: a smooth random image (sums of low-frequency waves)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.zeros((height, width, channels))
    for c in range(channels):
        for _ in range(3):
            fy, fx, phase = rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4), rng.uniform(0, 2 * np.pi)
            out[..., c] += np.sin(fy * y + fx * x + phase)
    out -= out.min()
    return out / max(out.max(), 1e-9)


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_image("a.png", mode="RGBA", size=(20, 14), **save_kwargs) -> Path``.

    Modes: 1, L, LA, RGB, RGBA, CMYK, P, I;16. The Pillow format comes from the extension
    unless ``format=`` is given. Files go to ``tmp_path`` (or ``folder=``).
    """

    def make(
        name: str,
        mode: str = "RGB",
        size: tuple[int, int] = (20, 14),
        *,
        seed: int = 0,
        folder: Path | None = None,
        **save: Any,
    ) -> Path:
        w, h = size
        pattern = smooth_pattern(h, w, 4, seed)
        if mode == "I;16":
            im = Image.fromarray(np.rint(pattern[..., 0] * 65535).astype(np.uint16))
        elif mode == "P":
            im = Image.fromarray(np.rint(pattern[..., :3] * 255).astype(np.uint8)).quantize(16)
        else:
            channels = {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
            arr = np.rint(pattern[..., :channels] * 255).astype(np.uint8)
            im = Image.fromarray(arr[..., 0] if channels == 1 else arr)
            if mode == "CMYK":
                im = Image.frombytes("CMYK", (w, h), np.ascontiguousarray(arr).tobytes())
            elif mode == "1":
                im = im.convert("1")
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, **save)
        return path

    return make
