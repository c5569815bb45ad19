"""Small encoders for PNG (8 and 16 bits) and 16-bit TIFF files.

Pillow cannot hold 16-bit colour pixels and OpenCV cannot write ICC profiles, so 16-bit
outputs (gray, gray+alpha, RGB, RGBA) are encoded here, straight from the format
specifications (PNG: ISO/IEC 15948; TIFF 6.0), with the ICC profile embedded.

PNG is written *streaming*: `write_png` filters, compresses and writes a few megabytes of
rows at a time to an open file, so encoding a 400-megapixel result needs no second copy of
it (Pillow would first copy an RGB image into 4 bytes per pixel, then hold the whole file).
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import BinaryIO

import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray+alpha, RGB, RGBA
_PNG_BLOCK_BYTES = 4 << 20  # raw bytes filtered and compressed per step (bounds the temporaries)


def _check(pixels: np.ndarray, dtypes: tuple[type, ...] = (np.uint16,)) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype not in dtypes or pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        kinds = " or ".join(np.dtype(d).name for d in dtypes)
        raise ValueError(f"expected {kinds} H x W x 1..4 pixels, got {pixels.dtype} {pixels.shape}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError("image has no pixels")
    return pixels


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _paeth_filter(raw: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """PNG filter type 4 (Paeth) for a block of rows; ``prev`` is the row above the block."""
    up = np.concatenate([prev[None], raw[:-1]], axis=0).astype(np.int16)
    cur = raw.astype(np.int16)
    left = np.zeros_like(cur)
    left[:, bpp:] = cur[:, :-bpp]
    upleft = np.zeros_like(up)
    upleft[:, bpp:] = up[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    return ((cur - pred) & 0xFF).astype(np.uint8)


def write_png(f: BinaryIO, pixels: np.ndarray, icc_profile: bytes | None = None, level: int = 6) -> None:
    """Write uint8 or uint16 ``H x W x C`` (C = 1..4) to ``f`` as a PNG of that bit depth.

    Rows are Paeth-filtered and compressed a block at a time and written as separate IDAT
    chunks, so memory stays a few megabytes whatever the image size. An iCCP chunk holds
    ``icc_profile`` if given.
    """
    pixels = _check(pixels, (np.uint8, np.uint16))
    h, w, c = pixels.shape
    depth = 8 * pixels.dtype.itemsize
    bpp = c * pixels.dtype.itemsize
    f.write(_PNG_SIGNATURE)
    f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, _PNG_COLOUR_TYPE[c], 0, 0, 0)))
    if icc_profile:
        f.write(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile, 9)))
    comp = zlib.compressobj(level)
    prev = np.zeros(w * bpp, dtype=np.uint8)
    rows_per_block = max(1, _PNG_BLOCK_BYTES // (w * bpp))
    for start in range(0, h, rows_per_block):
        block = pixels[start : start + rows_per_block]
        if depth == 16:
            block = block.astype(">u2")  # PNG samples are big-endian
        raw = np.ascontiguousarray(block).reshape(block.shape[0], w * c).view(np.uint8)
        filtered = _paeth_filter(raw, prev, bpp)
        rows = np.concatenate([np.full((raw.shape[0], 1), 4, dtype=np.uint8), filtered], axis=1)
        data = comp.compress(rows.tobytes())
        if data:
            f.write(_png_chunk(b"IDAT", data))
        prev = raw[-1].copy()
    f.write(_png_chunk(b"IDAT", comp.flush()))
    f.write(_png_chunk(b"IEND", b""))


def encode_png(pixels: np.ndarray, icc_profile: bytes | None = None, level: int = 6) -> bytes:
    """`write_png` into bytes."""
    buf = io.BytesIO()
    write_png(buf, pixels, icc_profile, level)
    return buf.getvalue()


def encode_png16(pixels: np.ndarray, icc_profile: bytes | None = None, level: int = 6) -> bytes:
    """Encode uint16 ``H x W x C`` (C = 1..4) as a 16-bit PNG, with an iCCP chunk if given."""
    return encode_png(_check(pixels), icc_profile, level)


# TIFF field types
_SHORT, _LONG, _UNDEFINED = 3, 4, 7
_TYPE_SIZE = {_SHORT: 2, _LONG: 4, _UNDEFINED: 1}
_TYPE_CODE = {_SHORT: "H", _LONG: "I", _UNDEFINED: "B"}


def encode_tiff16(pixels: np.ndarray, icc_profile: bytes | None = None, level: int = 6) -> bytes:
    """Encode uint16 ``H x W x C`` (C = 1..4) as a little-endian 16-bit TIFF.

    Deflate compression with horizontal differencing (predictor 2), chunky samples, alpha as
    an unassociated extra sample, ICC profile in tag 34675.
    """
    pixels = _check(pixels)
    h, w, c = pixels.shape
    diff = pixels.copy()
    diff[:, 1:] = pixels[:, 1:] - pixels[:, :-1]  # uint16 arithmetic wraps, as predictor 2 expects
    row_bytes = w * c * 2
    rows_per_strip = max(1, min(h, (1 << 20) // row_bytes))
    strips = [
        zlib.compress(diff[s : s + rows_per_strip].astype("<u2").tobytes(), level) for s in range(0, h, rows_per_strip)
    ]

    # Layout: header | strips | out-of-line values | IFD.
    offset = 8
    strip_offsets = []
    for s in strips:
        strip_offsets.append(offset)
        offset += len(s)
    gray = c in (1, 2)
    entries: list[tuple[int, int, list[int] | bytes]] = [
        (256, _LONG, [w]),
        (257, _LONG, [h]),
        (258, _SHORT, [16] * c),
        (259, _SHORT, [8]),  # Adobe deflate
        (262, _SHORT, [1 if gray else 2]),  # BlackIsZero / RGB
        (273, _LONG, strip_offsets),
        (277, _SHORT, [c]),
        (278, _LONG, [rows_per_strip]),
        (279, _LONG, [len(s) for s in strips]),
        (284, _SHORT, [1]),  # chunky
        (317, _SHORT, [2]),  # horizontal differencing
    ]
    if c in (2, 4):
        entries.append((338, _SHORT, [2]))  # unassociated alpha
    entries.append((339, _SHORT, [1] * c))  # unsigned integers
    if icc_profile:
        entries.append((34675, _UNDEFINED, icc_profile))

    extra = bytearray()
    ifd_fields = []
    ifd_offset_guess = offset  # out-of-line data starts right after the strips
    for tag, typ, values in entries:
        if isinstance(values, bytes):
            payload = values
        else:
            payload = struct.pack(f"<{len(values)}{_TYPE_CODE[typ]}", *values)
        count = len(values)
        if len(payload) <= 4:
            ifd_fields.append(struct.pack("<HHI", tag, typ, count) + payload.ljust(4, b"\x00"))
        else:
            if (ifd_offset_guess + len(extra)) % 2:
                extra += b"\x00"  # values start on a word boundary
            ifd_fields.append(struct.pack("<HHII", tag, typ, count, ifd_offset_guess + len(extra)))
            extra += payload
    ifd_start = ifd_offset_guess + len(extra)
    if ifd_start % 2:
        extra += b"\x00"
        ifd_start += 1
    ifd = struct.pack("<H", len(ifd_fields)) + b"".join(ifd_fields) + struct.pack("<I", 0)
    total = ifd_start + len(ifd)
    if total >= 1 << 32:
        raise ValueError("image too large for a classic TIFF file (over 4 GiB); write PNG instead")
    header = b"II" + struct.pack("<HI", 42, ifd_start)
    return header + b"".join(strips) + bytes(extra) + ifd
