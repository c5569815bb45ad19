"""A figure like ITER's Fig. 1: the image after each refinement step and the keep masks.

Layout (Pillow only)::

    | LR input | S_l      | after step T_s | ... | after step 1 |   <- images
    | (blank)  | m_s      | m_{T_s - 1}    | ... | m_0          |   <- white = kept token

Cells are resized so their longest side is ``cell`` pixels; a caption strip names each column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from tokensr.pretrained import atomic_write_bytes

CAPTION = 16
GAP = 4


def _to_pil(img: torch.Tensor) -> Image.Image:
    x = img.detach().float().clamp(0, 1).cpu()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8), mode="RGB")


def _fit(im: Image.Image, cell: int, nearest: bool = False) -> Image.Image:
    w, h = im.size
    s = cell / max(w, h)
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), mode)


def save_step_figure(
    path: str | Path,
    lr: torch.Tensor,
    images: list[torch.Tensor],
    masks: list[torch.Tensor],
    captions: list[str],
    cell: int = 192,
) -> Path:
    """Write the figure: ``lr`` ``[3, h, w]``; ``images`` and ``masks`` (``[1, h', w']`` in
    {0, 1}) one per column after the LR column, with ``captions`` for those columns."""
    path = Path(path)
    cols = [_fit(_to_pil(lr), cell)] + [_fit(_to_pil(im), cell) for im in images]
    mask_cols = [None] + [_fit(_to_pil(m.float()), cell, nearest=True) for m in masks]
    names = ["LR"] + captions
    cw = max(c.size[0] for c in cols)
    ch = max(c.size[1] for c in cols)
    width = len(cols) * (cw + GAP) + GAP
    height = 2 * (ch + CAPTION + GAP) + GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (im, mk, name) in enumerate(zip(cols, mask_cols, names, strict=False)):
        x = GAP + i * (cw + GAP)
        draw.text((x + 2, GAP + 2), name, fill=(0, 0, 0))
        canvas.paste(im, (x, GAP + CAPTION))
        if mk is not None:
            y = GAP + CAPTION + ch + GAP + CAPTION
            canvas.paste(mk, (x, y))
            draw.rectangle((x - 1, y - 1, x + mk.size[0], y + mk.size[1]), outline=(128, 128, 128))
    draw.text((GAP + 2, GAP + CAPTION + ch + GAP + 2), "masks: white = kept", fill=(0, 0, 0))

    def write(tmp: str) -> None:
        canvas.save(tmp, format="PNG")

    atomic_write_bytes(path, write)
    return path


__all__ = ["save_step_figure"]
