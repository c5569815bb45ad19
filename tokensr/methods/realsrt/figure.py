"""A figure like RealSRT's Fig. 1: the image after each generation step and its confidence map.

Layout (Pillow only)::

    | LR input | step 1 | step 2 | ... | step T |     <- images
    | legend   | conf 1 | conf 2 | ... | conf T |     <- confidence, darker = more confident

Every cell is resized to fit ``cell`` pixels (longest side) so figures of large images stay
small; a caption strip names each column.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from tokensr.pretrained import atomic_write_bytes

CAPTION = 16  # pixels of caption strip above each row
GAP = 4


def _to_pil(img: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` or ``[1, H, W]`` in [0, 1] -> RGB PIL image."""
    x = img.detach().float().clamp(0, 1).cpu()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    arr = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def _fit(im: Image.Image, cell: int, resample: Image.Resampling) -> Image.Image:
    w, h = im.size
    s = cell / max(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), resample)


def step_figure(
    lr: torch.Tensor,
    images: list[torch.Tensor],
    confidences: list[torch.Tensor],
    cell: int = 256,
) -> Image.Image:
    """Build the figure. ``lr`` ``[3, h, w]``; ``images[t]`` ``[3, H, W]``; ``confidences[t]``
    ``[1, H, W]`` (or ``[H, W]``) in [0, 1], 1 = confident (drawn dark, as in the paper)."""
    if len(images) != len(confidences) or not images:
        raise ValueError("step_figure needs one confidence map per step image (and at least one step)")
    top = [_fit(_to_pil(lr), cell, Image.Resampling.NEAREST)]
    top += [_fit(_to_pil(im), cell, Image.Resampling.LANCZOS) for im in images]
    bottom = [Image.new("RGB", top[0].size, (255, 255, 255))]
    for c in confidences:
        c = c if c.dim() == 3 else c.unsqueeze(0)
        bottom.append(_fit(_to_pil(1.0 - c.float()), cell, Image.Resampling.NEAREST))
    cw = max(im.size[0] for im in top + bottom)
    ch = max(im.size[1] for im in top + bottom)
    cols = len(top)
    fig = Image.new("RGB", (cols * (cw + GAP) + GAP, 2 * (ch + CAPTION + GAP) + GAP), (255, 255, 255))
    draw = ImageDraw.Draw(fig)
    for row, cells in enumerate((top, bottom)):
        y0 = GAP + row * (ch + CAPTION + GAP)
        for col, im in enumerate(cells):
            x0 = GAP + col * (cw + GAP)
            if row == 0:
                label = "LR input" if col == 0 else f"step {col}"
            else:
                label = "confidence: dark = high" if col == 0 else f"confidence {col}"
            draw.text((x0 + 2, y0 + 2), label, fill=(0, 0, 0))
            fig.paste(im, (x0, y0 + CAPTION))
    return fig


def save_step_figure(
    path: str | os.PathLike[str],
    lr: torch.Tensor,
    images: list[torch.Tensor],
    confidences: list[torch.Tensor],
    cell: int = 256,
) -> Path:
    """Write :func:`step_figure` as a PNG (atomically) and return its path."""
    out = Path(path)
    fig = step_figure(lr, images, confidences, cell)
    atomic_write_bytes(out, lambda p: fig.save(p, format="PNG"))
    return out
