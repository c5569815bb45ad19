"""Reading image files into `LoadedImage`.

Files are recognised by their content (Pillow's identification), never by their extension.
Pillow decodes everything except colour images with 16 bits per channel: Pillow has no 16-bit
RGB mode and would silently cut them to 8 bits, so those pixels are decoded by OpenCV while
Pillow still supplies the metadata (format, EXIF orientation, ICC profile).

Every failure (missing file, not an image, corrupt or truncated data, too many pixels) raises
`ImageReadError` with one line that names the file. An animated GIF or WebP is read as its
first frame, with a warning.

`probe_image` reads only the header: size (after EXIF rotation), channels and bit depth of
the output, for cost estimates before any pixel is decoded.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tokensr.errors import ImageReadError
from tokensr.io.loaded import LoadedImage, uint_to_float

log = logging.getLogger(__name__)

# Input images with more pixels than this are refused (a decompression-bomb guard and a
# sanity limit: the x4 result has 16 times as many). Override per call with ``max_pixels`` or
# for a whole process with the TOKENSR_MAX_PIXELS environment variable. Pillow's own hard
# limit (2 x PIL.Image.MAX_IMAGE_PIXELS) still applies on top and is reported the same way.
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "TOKENSR_MAX_PIXELS"

# Pillow format names tokensr reads (MPO is how Pillow names many phone-camera JPEGs).
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "DIB", "GIF"})

# File-name extensions that count as images when a folder is scanned. A file named explicitly
# is decoded whatever its extension.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".dib", ".gif"}
)

EXIF_ORIENTATION_TAG = 0x0112


def is_image_name(path: str | os.PathLike[str]) -> bool:
    """True when the file name has an image extension and is not hidden (e.g. a temp file)."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def default_max_pixels() -> int:
    """The pixel cap: TOKENSR_MAX_PIXELS if set to a positive integer, else DEFAULT_MAX_PIXELS."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if value:
        try:
            cap = int(value)
        except ValueError:
            cap = 0
        if cap > 0:
            return cap
        log.warning("ignoring %s=%r (not a positive integer)", MAX_PIXELS_ENV, value)
    return DEFAULT_MAX_PIXELS


def icc_colour_space(icc: bytes | None) -> str | None:
    """The data colour space an ICC profile describes ('RGB', 'GRAY', 'CMYK', ...), from its header."""
    if not icc or len(icc) < 20:
        return None
    return icc[16:20].decode("latin-1").strip() or None


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> LoadedImage:
    """Read one image file (JPEG, PNG, WebP, TIFF, BMP, GIF first frame) into a `LoadedImage`.

    EXIF orientation is applied; gray stays gray; alpha is kept; 16-bit PNG/TIFF keep their
    full precision; palette and CMYK images become RGB; the ICC profile is kept when it
    matches the decoded colour space.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a folder, not an image file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file ({e.strerror or e})") from e
    return decode_image(data, name=str(p), max_pixels=max_pixels, source=p)


def decode_image(
    data: bytes,
    *,
    name: str = "<image>",
    max_pixels: int | None = None,
    source: Path | None = None,
) -> LoadedImage:
    """Decode the bytes of an image file; ``name`` is used in error messages."""
    if not data:
        raise ImageReadError(f"{name}: empty file, not an image")
    limit = max_pixels if max_pixels is not None else default_max_pixels()
    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS; our own cap below decides instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageReadError(f"{name}: refused, too many pixels (possible decompression bomb): {e}") from e
        except UnidentifiedImageError as e:
            kind = _sniff(data)
            if kind:
                raise ImageReadError(f"{name}: corrupt {kind} file (its header cannot be decoded)") from e
            raise ImageReadError(f"{name}: not an image file (or a format tokensr cannot read)") from e
        except Exception as e:  # malformed headers make Pillow raise many kinds of errors
            raise ImageReadError(f"{name}: corrupt image file ({_short(e)})") from e
        with im:
            return _decode_opened(im, data, name, limit, source)


def from_pil(im: Image.Image, *, name: str = "<PIL image>", max_pixels: int | None = None) -> LoadedImage:
    """Convert an in-memory PIL image (same mode rules as for files; EXIF orientation applied)."""
    limit = max_pixels if max_pixels is not None else default_max_pixels()
    _check_size(im.size, limit, name)
    orientation = _orientation(im)
    icc = im.info.get("icc_profile") or None
    try:
        im.load()
    except Exception as e:
        raise ImageReadError(f"{name}: cannot decode image ({_short(e)})") from e
    planes, grayscale, bits, icc = _pil_planes(im, icc, name)
    return _finish(planes, grayscale, bits, icc, orientation, None, im.format)


@dataclass(frozen=True)
class ImageHeader:
    """What `probe_image` learns without decoding pixels.

    width, height: after EXIF orientation (as `read_image` would return them).
    channels: of the output layout, 1..4 (L, LA, RGB, RGBA).
    bit_depth: 8 or 16.
    """

    width: int
    height: int
    channels: int
    bit_depth: int
    format: str


def probe_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> ImageHeader:
    """Size and layout of an image file from its header; ImageReadError as `read_image` would."""
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: {'is a folder, not an image file' if p.is_dir() else 'no such file'}")
    limit = max_pixels if max_pixels is not None else default_max_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(p)
        except Image.DecompressionBombError as e:
            raise ImageReadError(f"{p}: refused, too many pixels (possible decompression bomb): {e}") from e
        except UnidentifiedImageError as e:
            raise ImageReadError(f"{p}: not an image file (or a format tokensr cannot read)") from e
        except OSError as e:
            raise ImageReadError(f"{p}: cannot read file ({_short(e)})") from e
        except Exception as e:
            raise ImageReadError(f"{p}: corrupt image file ({_short(e)})") from e
        with im:
            fmt = im.format or "?"
            if fmt not in SUPPORTED_FORMATS:
                raise ImageReadError(f"{p}: unsupported image format {fmt}")
            _check_size(im.size, limit, str(p))
            w, h = im.size
            raw = _tile_rawmodes(im)
            # PNG's getexif() decodes all pixels when no eXIf chunk came before them: skip it then
            # (an eXIf chunk after the pixel data is rare, and only turns the size round).
            has_exif = im.format != "PNG" or "exif" in im.info
            if has_exif and _orientation(im) in (5, 6, 7, 8):
                w, h = h, w
            alpha = im.mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in im.info
            gray = im.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L") or any(
                r.startswith("LA") for r in raw
            )
            deep = im.mode.startswith("I") or any(";16" in r for r in raw)
    return ImageHeader(w, h, (1 if gray else 3) + int(alpha), 16 if deep else 8, fmt)


def _decode_opened(im: Image.Image, data: bytes, name: str, limit: int, source: Path | None) -> LoadedImage:
    fmt = im.format or "?"
    if fmt not in SUPPORTED_FORMATS:
        supported = ", ".join(sorted(SUPPORTED_FORMATS - {"MPO", "DIB"}))
        raise ImageReadError(f"{name}: unsupported image format {fmt} (tokensr reads {supported})")
    _check_size(im.size, limit, name)
    if getattr(im, "is_animated", False):
        log.warning("%s: animated %s; only its first frame is used", name, fmt)
    # Look at the raw layout before anything loads the pixels (PNG's getexif() does).
    deep_colour = _is_16bit_colour(im)
    gray_source = im.mode == "LA" or any(r.startswith("LA") for r in _tile_rawmodes(im))
    orientation = _orientation(im)
    icc = im.info.get("icc_profile") or None
    if deep_colour:
        planes, grayscale = _decode_16bit_colour(data, gray_source, name)
        bits = 16
    else:
        try:
            im.load()
        except Exception as e:
            raise ImageReadError(f"{name}: corrupt or truncated image ({_short(e)})") from e
        planes, grayscale, bits, icc = _pil_planes(im, icc, name)
    return _finish(planes, grayscale, bits, icc, orientation, source, fmt)


def _finish(
    planes: np.ndarray,
    grayscale: bool,
    bits: int,
    icc: bytes | None,
    orientation: int,
    source: Path | None,
    fmt: str | None,
) -> LoadedImage:
    """Orient, check the ICC profile fits, and pack into a LoadedImage."""
    planes = apply_orientation(planes, orientation)
    space = icc_colour_space(icc)
    if icc is not None and space not in (("GRAY",) if grayscale else ("RGB",)):
        log.debug("dropping an ICC profile for colour space %s", space)
        icc = None
    channels = planes.shape[2]
    if grayscale:
        rgb = np.repeat(planes[..., :1], 3, axis=2)
        alpha = planes[..., 1] if channels == 2 else None
    else:
        rgb = planes[..., :3]
        alpha = planes[..., 3] if channels == 4 else None
    return LoadedImage(
        rgb=np.ascontiguousarray(rgb),
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        grayscale=grayscale,
        bit_depth=bits,
        icc_profile=icc,
        source=source,
        format=fmt,
    )


def _check_size(size: tuple[int, int], limit: int, name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageReadError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > limit:
        raise ImageReadError(
            f"{name}: refused, {w}x{h} = {w * h:,} pixels is over the limit of {limit:,} "
            f"(possible decompression bomb; raise it with {MAX_PIXELS_ENV})"
        )


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # broken EXIF must not make a readable image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(planes: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an ``H x W x C`` array, as a viewer would."""
    if orientation == 2:
        out = planes[:, ::-1]
    elif orientation == 3:
        out = planes[::-1, ::-1]
    elif orientation == 4:
        out = planes[::-1, :]
    elif orientation == 5:
        out = planes.transpose(1, 0, 2)
    elif orientation == 6:
        out = np.rot90(planes, k=-1)
    elif orientation == 7:
        out = np.rot90(planes, k=2).transpose(1, 0, 2)
    elif orientation == 8:
        out = np.rot90(planes, k=1)
    else:
        return planes
    return np.ascontiguousarray(out)


def _tile_rawmodes(im: Image.Image) -> list[str]:
    modes = []
    for tile in getattr(im, "tile", None) or []:
        args: Any = tile.args if hasattr(tile, "args") else tile[3]
        if isinstance(args, str):
            modes.append(args)
        elif isinstance(args, tuple) and args and isinstance(args[0], str):
            modes.append(args[0])
    return modes


def _is_16bit_colour(im: Image.Image) -> bool:
    """A 16-bit RGB/RGBA/gray+alpha file, which Pillow can only decode at 8 bits.

    (Pillow opens a 16-bit gray+alpha PNG as mode RGBA with raw mode 'LA;16B'.)
    """
    if im.mode not in ("RGB", "RGBA", "LA"):
        return False
    return any(";16" in raw for raw in _tile_rawmodes(im))


def _decode_16bit_colour(data: bytes, gray_source: bool, name: str) -> tuple[np.ndarray, bool]:
    import cv2

    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageReadError(f"{name}: corrupt or truncated image ({_short(e)})") from e
    if arr is None:
        raise ImageReadError(f"{name}: corrupt or truncated image (16-bit data could not be decoded)")
    if arr.dtype != np.uint16:
        raise ImageReadError(f"{name}: unexpected {arr.dtype} data in a 16-bit image")
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    grayscale = gray_source or channels in (1, 2)
    if channels == 3:
        arr = arr[..., ::-1]  # BGR -> RGB
    elif channels == 4:
        arr = arr[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    planes = uint_to_float(np.ascontiguousarray(arr))
    if grayscale and channels >= 3:
        # gray + alpha decoded as (equal) colour channels: keep one gray plane and the alpha
        planes = np.stack([planes[..., 0], planes[..., -1]], axis=2) if channels == 4 else planes[..., :1]
    return planes, grayscale


def _pil_planes(im: Image.Image, icc: bytes | None, name: str) -> tuple[np.ndarray, bool, int, bytes | None]:
    """Pillow image -> (float planes H x W x C, grayscale, bit depth, icc)."""
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "CMYK":
        im = _cmyk_to_rgb(im, icc)
        icc = None  # the pixels are now sRGB; a CMYK profile no longer applies
    elif mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert(mode + "A")  # a PNG tRNS colour key is a real (binary) alpha
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    mode = im.mode

    if mode.startswith("I;16"):
        arr = np.asarray(im)
        return uint_to_float(arr.astype(np.uint16))[..., None], True, 16, icc
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageReadError(f"{name}: 32-bit integer pixel values are not supported")
        return uint_to_float(arr.astype(np.uint16))[..., None], True, 16, icc
    if mode in ("L", "LA", "RGB", "RGBA"):
        arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[..., None]
        return uint_to_float(arr), mode in ("L", "LA"), 8, icc
    raise ImageReadError(f"{name}: unsupported pixel mode {mode}")


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK -> RGB, through the embedded CMYK profile when there is one (colour-managed)."""
    if icc_colour_space(icc) == "CMYK":
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))  # type: ignore[arg-type]
            dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out
        except Exception as e:  # a broken profile: fall back to the plain formula
            log.debug("CMYK profile not usable (%s); converting without it", e)
    return im.convert("RGB")


_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)


def _sniff(data: bytes) -> str | None:
    """The format a file claims by its first bytes, to tell corrupt images from non-images."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return kind
    return None


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."
