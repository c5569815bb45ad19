"""Reading and writing training images (private to the data package).

Images are decoded by content (not extension) with Pillow, returned as uint8 HxWx3 RGB:
gray is repeated to three channels, alpha is dropped, 16-bit images are scaled to 8 bits.
PNG outputs are written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from tokensr.errors import ImageReadError
from tokensr.pretrained import atomic_write_bytes

#: file extensions picked up when listing a folder
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` sorted by relative path (hidden files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise ImageReadError(f"not a folder: {root}")
    it = root.rglob("*") if recursive else root.iterdir()
    files = [p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode ``path`` into a uint8 HxWx3 RGB array; raise ImageReadError if it is not an image.

    OpenCV decodes first (about twice as fast as Pillow on PNG); Pillow is the fallback for
    formats OpenCV lacks.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is not None and bgr.ndim == 3 and bgr.shape[2] == 3:
        return np.ascontiguousarray(bgr[:, :, ::-1])
    try:
        # Pillow's own decompression-bomb limit stays as the user has it (tokensr changes no
        # Pillow global); its warning between the two limits is not an error for a photo.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(path)  # becomes a plain Image when converted below
        with im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if a.max() > 255 else 255.0
                a = np.clip(np.rint(a / peak * 255.0), 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
            if im.mode != "RGB":
                im = im.convert("RGBA").convert("RGB") if "A" in im.getbands() or im.mode == "P" else im.convert("RGB")
            return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e


def write_png(path: str | os.PathLike[str], img: np.ndarray) -> None:
    """Write uint8 HxWx3 RGB as PNG atomically."""
    arr = np.ascontiguousarray(img)
    if arr.dtype != np.uint8:
        raise ValueError("write_png expects uint8")
    atomic_write_bytes(Path(path), lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))
