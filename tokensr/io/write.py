"""Writing `LoadedImage` to a file: format by extension, atomic, never clobbering by accident.

- PNG (the default): L / LA / RGB / RGBA, 16-bit when the source was 16-bit.
- TIFF: same kinds and bit depths as PNG (16-bit gray+alpha is stored as 16-bit RGBA, because
  few readers handle 2-sample 16-bit TIFF).
- JPEG, WebP, BMP: 8-bit only. JPEG and BMP have no alpha: transparent areas are flattened
  onto white. WebP has no grayscale mode: gray is stored as RGB.
- The ICC profile is embedded wherever the format allows (all but BMP).

Every format is encoded from a `PixelImage` (uint8/uint16 in the output layout); a float
`LoadedImage` is quantised first. PNG, the default, is written straight to the file a block
of rows at a time (`tokensr.io.encoders.write_png`), so a huge result needs no second copy.

`png_rows` streams a PNG whose rows are still being computed: each piece of rows is
filtered, compressed and written as it comes, so a huge upscale never holds its whole result.

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from tokensr.errors import OptionError, TokensrError
from tokensr.io.encoders import PngStream, encode_tiff16, write_png
from tokensr.io.loaded import LoadedImage, PixelImage
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
# Largest side each format can store (libjpeg's JPEG_MAX_DIMENSION; WebP's 14-bit sizes).
MAX_SIDE: dict[str, int] = {"JPEG": 65_500, "WEBP": 16_383, "PNG": 2**31 - 1, "TIFF": 2**32 - 1, "BMP": 2**31 - 1}
_STRIP_ROWS = 256  # rows converted at a time when an 8-bit copy or a flattened copy is needed
# write(rows): the next ``n x W x C`` uint8 / uint16 rows of an image being streamed (`png_rows`)
RowWriter = Callable[[np.ndarray], None]
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


def check_output_size(path: str | os.PathLike[str], width: int, height: int) -> None:
    """ImageWriteError if a ``width x height`` image is too large for ``path``'s format."""
    fmt = output_format(path)
    side = MAX_SIDE[fmt]
    if width > side or height > side:
        raise ImageWriteError(
            f"{path}: a {width}x{height} image is too large for {fmt} (at most {side:,} px a side); "
            "write .png or .tif instead"
        )


def encode_image(image: LoadedImage | PixelImage, fmt: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode to the bytes of a ``fmt`` file (PNG, JPEG, WEBP, TIFF, BMP)."""
    buf = io.BytesIO()
    write_encoded(buf, image, fmt, quality)
    return buf.getvalue()


def write_encoded(f: BinaryIO, image: LoadedImage | PixelImage, fmt: str, quality: int = DEFAULT_QUALITY) -> None:
    """Encode ``image`` as ``fmt`` into the open binary file ``f``."""
    fmt = fmt.upper()
    if fmt not in set(OUTPUT_FORMATS.values()):
        raise OptionError(f"cannot write format {fmt}")
    px = image.to_pixels() if isinstance(image, LoadedImage) else image
    icc = px.icc_profile
    if fmt == "PNG":
        write_png(f, px.pixels, icc)
        return
    if fmt == "TIFF" and px.bit_depth == 16:
        pixels = px.pixels
        if px.channels == 2:
            pixels = pixels[..., [0, 0, 0, 1]]
            icc = _fitting_icc(icc, grayscale=False)
        f.write(encode_tiff16(np.ascontiguousarray(pixels), icc))
        return

    if px.bit_depth == 16:
        log.debug("%s holds 8 bits per channel; the 16-bit result is rounded", fmt)
    pixels = to_8bit(px.pixels)
    if px.has_alpha and fmt in ("JPEG", "BMP"):
        pixels = flatten_alpha_uint8(pixels)
    if px.grayscale and fmt == "WEBP":
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1:]], axis=2)
        icc = _fitting_icc(icc, grayscale=False)
    pil = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    params: dict[str, Any] = {}
    if fmt == "JPEG":
        params.update(quality=quality, subsampling=0)  # 4:4:4: keep the restored colour detail
    elif fmt == "WEBP":
        params.update(quality=quality, method=4)
    elif fmt == "TIFF":
        params["compression"] = "tiff_adobe_deflate"
    if icc and fmt != "BMP":
        params["icc_profile"] = icc
    pil.save(f, format=fmt, **params)


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 rounded to nearest (``round(v / 257)``), in strips; uint8 as it is."""
    if pixels.dtype == np.uint8:
        return pixels
    out = np.empty(pixels.shape, dtype=np.uint8)
    for y in range(0, pixels.shape[0], _STRIP_ROWS):
        strip = pixels[y : y + _STRIP_ROWS].astype(np.uint32)
        out[y : y + _STRIP_ROWS] = (strip + 128) // 257
    return out


def flatten_alpha_uint8(pixels: np.ndarray, background: int = 255) -> np.ndarray:
    """Composite uint8 L+A / RGB+A onto a flat background (white) and drop the alpha channel."""
    colour = pixels.shape[2] - 1
    out = np.empty((*pixels.shape[:2], colour), dtype=np.uint8)
    for y in range(0, pixels.shape[0], _STRIP_ROWS):
        strip = pixels[y : y + _STRIP_ROWS].astype(np.uint32)
        a = strip[..., colour:]
        out[y : y + _STRIP_ROWS] = (strip[..., :colour] * a + background * (255 - a) + 127) // 255
    return out


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
    image: LoadedImage | PixelImage,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike[str]] = (),
    quality: int = DEFAULT_QUALITY,
) -> Path:
    """Write ``image`` to ``path`` (format from the extension) atomically; return the path.

    Raises ImageWriteError if ``path`` exists and ``overwrite`` is False, or if ``path`` is the
    image's own source file or one of ``protect`` (whatever ``overwrite`` says), or if the
    image is too large for the format.
    """
    out = Path(path)
    fmt = output_format(out)
    check_output_path(out, overwrite=overwrite, protect=[p for p in [image.source, *protect] if p is not None])
    check_output_size(out, image.width, image.height)
    if image.has_alpha and fmt in ("JPEG", "BMP"):
        log.warning("%s: %s has no alpha channel; transparent areas are flattened onto white", out, fmt)
    atomic_write(out, lambda f: write_encoded(f, image, fmt, quality), overwrite=overwrite)
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


@contextmanager
def atomic_file(path: Path, *, overwrite: bool) -> Iterator[BinaryIO]:
    """An open temporary file next to ``path`` that becomes ``path`` when the block ends.

    The file is synced and moved into place only if the ``with`` block finishes; if it raises,
    the temporary file is removed and the exception passes on unchanged, so ``path`` is never
    left half-written. Without ``overwrite`` the final step is a hard link, which fails if
    ``path`` appeared in the meantime, so even a racing writer is never clobbered. Errors of
    creating, syncing and moving the file are ImageWriteError.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise _write_error(path, e) from e
        _move_into_place(tmp, path, overwrite=overwrite)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_error(path: Path, e: OSError) -> ImageWriteError:
    """The one-line error for an OS-level failure to write ``path``."""
    return ImageWriteError(f"{path}: cannot write ({e.strerror or e})")


def _move_into_place(tmp: Path, path: Path, *, overwrite: bool) -> None:
    try:
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
        raise _write_error(path, e) from e


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None], *, overwrite: bool) -> None:
    """Write ``data`` (bytes, or a function writing into a binary file) to a temp file next to
    ``path``, then move it into place (`atomic_file`)."""
    try:
        with atomic_file(path, overwrite=overwrite) as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
    except ImageWriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    except ValueError as e:  # an encoder refusing the image (Pillow raises ValueError for some limits)
        raise ImageWriteError(f"{path}: cannot encode ({e})") from e


@contextmanager
def png_rows(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    channels: int,
    bit_depth: int,
    *,
    icc_profile: bytes | None = None,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[RowWriter]:
    """Write a PNG row by row, atomically: ``with png_rows(...) as write: write(rows)...``.

    ``write(rows)`` takes the next ``n x width x channels`` uint8 (``bit_depth`` 8) or uint16
    (16) rows, top to bottom; they go to the file at once (`PngStream`), so the image is never
    held whole. The file appears under ``path`` only when all ``height`` rows came and the
    block ended without an exception (`atomic_file`). ``path`` is checked first, as
    `write_image` does (existing file, input files in ``protect``, size). A failing disk write
    is an ImageWriteError; any other exception in the block passes on unchanged.
    """
    out = Path(path)
    if output_format(out) != "PNG":
        raise OptionError(f"{out}: rows can only be streamed to a .png file")
    check_output_path(out, overwrite=overwrite, protect=protect)
    check_output_size(out, width, height)
    with atomic_file(out, overwrite=overwrite) as f:
        stream = PngStream(f, width, height, channels, bit_depth, icc_profile)

        def write(rows: np.ndarray) -> None:
            try:
                stream.write_rows(rows)
            except OSError as e:
                raise _write_error(out, e) from e

        yield write
        try:
            stream.close()
        except OSError as e:
            raise _write_error(out, e) from e


def _fitting_icc(icc: bytes | None, grayscale: bool) -> bytes | None:
    """The profile if it describes the colour space being written, else None."""
    space = icc_colour_space(icc)
    return icc if space == ("GRAY" if grayscale else "RGB") else None
