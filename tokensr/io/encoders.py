"""Small encoders for PNG (8 and 16 bits) and 16-bit TIFF files.

Pillow cannot hold 16-bit colour pixels and OpenCV cannot write ICC profiles, so 16-bit
outputs (gray, gray+alpha, RGB, RGBA) are encoded here, straight from the format
specifications (PNG: ISO/IEC 15948; TIFF 6.0), with the ICC profile embedded.

PNG is written *streaming*: `PngStream` filters, compresses and writes a few megabytes of
rows at a time to an open file, as the rows arrive, so a 400-megapixel result can be written
while it is computed, without ever holding it (`write_png` does the same for an image already
in memory; Pillow would first copy an RGB image into 4 bytes per pixel, then hold the whole
file).
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


class PngStream:
    """A PNG written row by row: header on creation, rows as they come, `close` ends the file.

    ``write_rows`` takes the next ``n x width x channels`` rows (uint8 or uint16, as ``depth``
    says) in order, any number at a time; each is Paeth-filtered against the row above,
    compressed and written at once (in blocks of a few megabytes, which bound the
    temporaries), so the whole image never has to exist. `close` checks that exactly
    ``height`` rows came and writes the last IDAT chunk and IEND; the file object stays open.
    """

    def __init__(
        self,
        f: BinaryIO,
        width: int,
        height: int,
        channels: int,
        depth: int,
        icc_profile: bytes | None = None,
        level: int = 6,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError("image has no pixels")
        if channels not in _PNG_COLOUR_TYPE or depth not in (8, 16):
            raise ValueError(f"PNG rows need 1..4 channels of 8 or 16 bits, got {channels} x {depth} bits")
        self.f = f
        self.width, self.height, self.channels, self.depth = width, height, channels, depth
        self.rows_written = 0
        self._dtype = np.uint8 if depth == 8 else np.uint16
        self._bpp = channels * depth // 8
        self._prev = np.zeros(width * self._bpp, dtype=np.uint8)
        self._comp = zlib.compressobj(level)
        self.block_rows = max(1, _PNG_BLOCK_BYTES // (width * self._bpp))
        f.write(_PNG_SIGNATURE)
        f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, _PNG_COLOUR_TYPE[channels], 0, 0, 0)))
        if icc_profile:
            f.write(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile, 9)))

    def write_rows(self, rows: np.ndarray) -> None:
        """Filter, compress and write the next rows (``n x width x channels``, or ``n x width`` gray)."""
        if rows.ndim == 2:
            rows = rows[..., None]
        if rows.dtype != self._dtype or rows.shape[1:] != (self.width, self.channels):
            raise ValueError(
                f"expected {np.dtype(self._dtype).name} rows n x {self.width} x {self.channels}, "
                f"got {rows.dtype} {rows.shape}"
            )
        if self.rows_written + rows.shape[0] > self.height:
            raise ValueError(f"more than the {self.height} rows of the image")
        for start in range(0, rows.shape[0], self.block_rows):
            self._write_block(rows[start : start + self.block_rows])
        self.rows_written += rows.shape[0]

    def _write_block(self, block: np.ndarray) -> None:
        if self.depth == 16:
            block = block.astype(">u2")  # PNG samples are big-endian
        raw = np.ascontiguousarray(block).reshape(block.shape[0], self.width * self.channels).view(np.uint8)
        filtered = _paeth_filter(raw, self._prev, self._bpp)
        lines = np.concatenate([np.full((raw.shape[0], 1), 4, dtype=np.uint8), filtered], axis=1)
        data = self._comp.compress(lines.tobytes())
        if data:
            self.f.write(_png_chunk(b"IDAT", data))
        self._prev = raw[-1].copy()

    def close(self) -> None:
        """Write the end of the image; ValueError if rows are missing."""
        if self.rows_written != self.height:
            raise ValueError(f"PNG got {self.rows_written} of its {self.height} rows")
        self.f.write(_png_chunk(b"IDAT", self._comp.flush()))
        self.f.write(_png_chunk(b"IEND", b""))


def write_png(f: BinaryIO, pixels: np.ndarray, icc_profile: bytes | None = None, level: int = 6) -> None:
    """Write uint8 or uint16 ``H x W x C`` (C = 1..4) to ``f`` as a PNG of that bit depth.

    Rows are Paeth-filtered and compressed a block at a time and written as separate IDAT
    chunks (`PngStream`), so memory stays a few megabytes whatever the image size. An iCCP
    chunk holds ``icc_profile`` if given.
    """
    pixels = _check(pixels, (np.uint8, np.uint16))
    h, w, c = pixels.shape
    stream = PngStream(f, w, h, c, 8 * pixels.dtype.itemsize, icc_profile, level)
    stream.write_rows(pixels)
    stream.close()


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
