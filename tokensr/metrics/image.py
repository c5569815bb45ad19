"""Turning whatever the caller has (a file, a PIL image, an array, a tensor) into the one
layout the metrics work on: float64 ``H x W x C`` (or ``H x W``) on the 0..255 scale.

Conventions, so that numbers match the SR literature (BasicSR, MATLAB):

- numpy arrays are on the 0..255 scale whatever their dtype (uint8, uint16 is not accepted);
- torch tensors are on the 0..1 scale (``[C, H, W]`` or ``[1, C, H, W]``), the layout SR
  methods produce; they are scaled by 255 but not rounded (round them yourself, or use
  :func:`quantize`, to score what a saved 8-bit file would score);
- PIL images are converted to RGB (alpha dropped) unless they are single-channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tokensr.errors import ImageReadError, OptionError

ImageLike = np.ndarray | torch.Tensor | Image.Image | str | Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 ``H x W x 3`` RGB.

    The decoder is chosen from the file content, not its extension (some data sets ship PNGs
    named ``.jpeg``); alpha is dropped and grayscale is repeated in three channels.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr16 = np.asarray(im, dtype=np.float64)
                scale = 255.0 / 65535.0 if arr16.max() > 255 else 1.0
                gray = np.clip(np.round(arr16 * scale), 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            rgb = im.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise ImageReadError(f"{path}: no such file") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from e


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OptionError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def quantize(t: torch.Tensor) -> np.ndarray:
    """An SR output tensor in [0, 1] (``[C,H,W]`` or ``[1,C,H,W]``) as the uint8 ``H x W x C``
    array an 8-bit file would hold (clamp, x255, round half to even like ``torch.round``)."""
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise OptionError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    arr = (t.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


def to_array255(img: ImageLike) -> np.ndarray:
    """``img`` as float64 ``H x W x C`` or ``H x W`` on the 0..255 scale (see module doc)."""
    if isinstance(img, (str, Path)):
        return read_rgb(img).astype(np.float64)
    if isinstance(img, Image.Image):
        if img.mode in ("L", "I;16", "I", "F"):
            return np.asarray(img.convert("F"), dtype=np.float64)
        return np.asarray(img.convert("RGB"), dtype=np.float64)
    if isinstance(img, torch.Tensor):
        t = img.detach()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise OptionError(f"expected one image, got a batch of {t.shape[0]}")
            t = t[0]
        if t.dim() == 3:
            t = t.permute(1, 2, 0)
        elif t.dim() != 2:
            raise OptionError(f"expected an image tensor [C,H,W], got shape {tuple(img.shape)}")
        arr = t.to(torch.float64).cpu().numpy()
        if img.dtype == torch.uint8:
            return arr
        return arr * 255.0
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise OptionError(f"expected an H x W or H x W x C array, got shape {img.shape}")
        if img.dtype == np.uint16:
            raise OptionError("16-bit arrays are not supported: scale them to 0..255 first")
        return img.astype(np.float64)
    raise OptionError(f"cannot use an object of type {type(img).__name__} as an image")
