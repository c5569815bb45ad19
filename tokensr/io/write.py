"""Writing `LoadedImage` to a file: format by extension, atomic, never clobbering by accident.

- PNG (the default): L / LA / RGB / RGBA, 16-bit when the source was 16-bit.
- TIFF: same kinds and bit depths as PNG (16-bit gray+alpha is stored as 16-bit RGBA, because
  few readers handle 2-sample 16-bit TIFF).
- JPEG, WebP, BMP: 8-bit only. JPEG and BMP have no alpha: transparent areas are flattened
  onto white. WebP has no grayscale mode: gray is stored as RGB.
- The ICC profile is embedded wherever the format allows (all but BMP).

A write goes to a temporary file in the destination folder which is then renamed into place,
so a crash never leaves a half-written image under the final name. An existing file is only
replaced with ``overwrite=True``; a file the image was read from (or any path in ``protect``)
is never replaced, not even then.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tokensr.errors import OptionError, TokensrError
from tokensr.io.encoders import encode_png16, encode_tiff16
from tokensr.io.loaded import LoadedImage
from tokensr.io.permissions import NEW_FILE_MODE
from tokensr.io.read import icc_colour_space

log = logging.getLogger(__name__)

OUTPUT_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
DEFAULT_QUALITY = 95
_EXISTS = "{path}: already exists (use --overwrite / overwrite=True to replace it)"


class ImageWriteError(TokensrError):
    """An output file cannot be written (exists, is an input, or the disk refused)."""


def output_format(path: str | os.PathLike[str]) -> str:
    """The Pillow format name for an output path's extension; OptionError if unknown."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        known = ", ".join(sorted(OUTPUT_FORMATS))
        raise OptionError(f"{path}: unknown output image extension '{suffix}' (use one of {known})")
    return OUTPUT_FORMATS[suffix]


def same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when two paths name the same file (same inode if both exist, else same resolved path)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return os.path.normcase(pa.resolve()) == os.path.normcase(pb.resolve())


def encode_image(image: LoadedImage, fmt: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode to the bytes of a ``fmt`` file (PNG, JPEG, WEBP, TIFF, BMP)."""
    fmt = fmt.upper()
    if fmt not in set(OUTPUT_FORMATS.values()):
        raise OptionError(f"cannot write format {fmt}")
    icc = image.icc_profile
    if fmt in ("PNG", "TIFF") and image.bit_depth == 16:
        pixels = image.to_uint(16)
        if fmt == "TIFF" and pixels.shape[2] == 2:
            pixels = pixels[..., [0, 0, 0, 1]]
            icc = _fitting_icc(icc, grayscale=False)
        encoder = encode_png16 if fmt == "PNG" else encode_tiff16
        return encoder(np.ascontiguousarray(pixels), icc)

    if image.bit_depth == 16:
        log.debug("%s holds 8 bits per channel; the 16-bit result is rounded", fmt)
    if image.alpha is not None and fmt in ("JPEG", "BMP"):
        image = flatten_alpha(image)
    if image.grayscale and fmt == "WEBP":
        image = replace(image, rgb=image.gray()[..., None].repeat(3, axis=2), grayscale=False)
        icc = _fitting_icc(icc, grayscale=False)
    pil = to_pil(image, bits=8)
    params: dict[str, Any] = {}
    if fmt == "PNG":
        params["compress_level"] = 6
    elif fmt == "JPEG":
        params.update(quality=quality, subsampling=0)  # 4:4:4: keep the restored colour detail
    elif fmt == "WEBP":
        params.update(quality=quality, method=4)
    elif fmt == "TIFF":
        params["compression"] = "tiff_adobe_deflate"
    if icc and fmt != "BMP":
        params["icc_profile"] = icc
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **params)
    return buf.getvalue()


def to_pil(image: LoadedImage, bits: int | None = None) -> Image.Image:
    """A PIL image in the image's own layout: L, LA, RGB or RGBA, or I;16 for 16-bit gray.

    Pillow has no 16-bit colour modes, so 16-bit colour (or gray+alpha) becomes 8-bit here;
    ``bits=8`` forces 8 bits. The ICC profile goes into ``info["icc_profile"]``.
    """
    if bits is None:
        bits = 16 if image.bit_depth == 16 and image.grayscale and image.alpha is None else 8
    if bits == 16 and not (image.grayscale and image.alpha is None):
        raise ValueError("Pillow holds 16 bits only for gray images without alpha (mode I;16)")
    pixels = image.to_uint(bits)
    pil = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    if image.icc_profile:
        pil.info["icc_profile"] = image.icc_profile
    return pil


def flatten_alpha(image: LoadedImage, background: float = 1.0) -> LoadedImage:
    """Composite onto a flat background (white by default) and drop the alpha channel."""
    if image.alpha is None:
        return image
    a = image.alpha[..., None]
    rgb = image.rgb * a + np.float32(background) * (1.0 - a)
    return image.with_pixels(rgb.astype(np.float32), None)


def write_image(
    image: LoadedImage,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike[str]] = (),
    quality: int = DEFAULT_QUALITY,
) -> Path:
    """Write ``image`` to ``path`` (format from the extension) atomically; return the path.

    Raises ImageWriteError if ``path`` exists and ``overwrite`` is False, or if ``path`` is the
    image's own source file or one of ``protect`` (whatever ``overwrite`` says).
    """
    out = Path(path)
    fmt = output_format(out)
    check_output_path(out, overwrite=overwrite, protect=[p for p in [image.source, *protect] if p is not None])
    if image.alpha is not None and fmt in ("JPEG", "BMP"):
        log.warning("%s: %s has no alpha channel; transparent areas are flattened onto white", out, fmt)
    data = encode_image(image, fmt, quality=quality)
    atomic_write(out, data, overwrite=overwrite)
    return out


def check_output_path(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Raise ImageWriteError if writing ``path`` would replace an input or (without
    ``overwrite``) an existing file."""
    out = Path(path)
    for p in protect:
        if same_path(out, p):
            raise ImageWriteError(f"{out}: refusing to overwrite an input file (choose another output)")
    if out.is_dir():
        raise ImageWriteError(f"{out}: is a folder")
    if out.exists() and not overwrite:
        raise ImageWriteError(_EXISTS.format(path=out))


def atomic_write(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to a temp file next to ``path``, then move it into place.

    Without ``overwrite`` the final step is a hard link, which fails if ``path`` appeared in
    the meantime, so even a racing writer is never clobbered.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ImageWriteError(f"{path}: cannot write ({e.strerror or e})") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, NEW_FILE_MODE)
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError as e:
            raise ImageWriteError(_EXISTS.format(path=path)) from e
        except OSError:  # file system without hard links
            if path.exists():
                raise ImageWriteError(_EXISTS.format(path=path)) from None
            os.replace(tmp, path)
    except ImageWriteError:
        raise
    except OSError as e:
        raise ImageWriteError(f"{path}: cannot write ({e.strerror or e})") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def _fitting_icc(icc: bytes | None, grayscale: bool) -> bytes | None:
    """The profile if it describes the colour space being written, else None."""
    space = icc_colour_space(icc)
    return icc if space == ("GRAY" if grayscale else "RGB") else None
