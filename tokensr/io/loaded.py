"""`LoadedImage`: one decoded image in the single layout the rest of tokensr works with.

Whatever the file held (8/16-bit, gray, palette, CMYK, alpha), the pixels become float32 RGB
in [0, 1] plus an optional float32 alpha plane, and the facts needed to write the result back
in the same kind (gray or colour, bit depth, ICC profile) travel alongside. SR methods only
ever see the RGB part.

`PixelImage` is the other end: the finished result as uint8 / uint16 pixels in the layout it
is written in, ready to encode. A big result is built straight into one of these, strip by
strip, so it never exists as float32 (four times the bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# ITU-R BT.601 luma weights: the same ones Pillow uses for RGB -> L.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class LoadedImage:
    """A decoded image.

    rgb: float32 ``H x W x 3`` in [0, 1]. For a grayscale image the gray value is repeated in
        all three channels, so that colour-only SR methods can run on it unchanged.
    alpha: float32 ``H x W`` in [0, 1], or None when the image has no alpha channel.
    grayscale: the image was (and will be written as) one channel: L / LA / I;16.
    bit_depth: 8 or 16, bits per channel of the source (and of a PNG/TIFF output).
    icc_profile: the embedded ICC profile bytes, carried over to the output.
    source: the file it came from (None for in-memory images).
    format: the Pillow format name of the source file ("PNG", "JPEG", ...), if any.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    grayscale: bool = False
    bit_depth: int = 8
    icc_profile: bytes | None = None
    source: Path | None = None
    format: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"rgb must be H x W x 3, got shape {self.rgb.shape}")
        if self.rgb.dtype != np.float32:
            self.rgb = self.rgb.astype(np.float32)
        if self.alpha is not None:
            if self.alpha.shape != self.rgb.shape[:2]:
                raise ValueError(f"alpha shape {self.alpha.shape} does not match {self.rgb.shape[:2]}")
            if self.alpha.dtype != np.float32:
                self.alpha = self.alpha.astype(np.float32)
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth}")

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None

    @property
    def mode(self) -> str:
        """The Pillow-style layout the image is written in: L, LA, RGB or RGBA."""
        base = "L" if self.grayscale else "RGB"
        return base + ("A" if self.alpha is not None else "")

    @property
    def channels(self) -> int:
        """Channels of the written image: 1, 2, 3 or 4 (L, LA, RGB, RGBA; see `planes`)."""
        return len(self.mode)

    def gray(self) -> np.ndarray:
        """Luma plane (``H x W`` float32); exact for an image whose channels are equal."""
        return np.clip(self.rgb @ LUMA_WEIGHTS, 0.0, 1.0).astype(np.float32)

    def planes(self) -> np.ndarray:
        """Float32 ``H x W x C`` in the output layout (C = 1, 2, 3 or 4 for L, LA, RGB, RGBA)."""
        colour = self.gray()[..., None] if self.grayscale else self.rgb
        if self.alpha is None:
            return np.ascontiguousarray(np.clip(colour, 0.0, 1.0))
        return np.concatenate([np.clip(colour, 0.0, 1.0), np.clip(self.alpha, 0.0, 1.0)[..., None]], axis=2)

    def to_uint(self, bits: int | None = None) -> np.ndarray:
        """``planes()`` as uint8 (bits=8) or uint16 (bits=16); defaults to ``bit_depth``."""
        bits = bits or self.bit_depth
        return float_to_uint(self.planes(), bits)

    def to_pixels(self) -> PixelImage:
        """The image as a `PixelImage` at its own bit depth (metadata carried over)."""
        return PixelImage(self.to_uint(), icc_profile=self.icc_profile, source=self.source)

    def with_pixels(self, rgb: np.ndarray, alpha: np.ndarray | None) -> LoadedImage:
        """A copy carrying the same metadata with new pixels (e.g. the upscaled ones)."""
        return replace(self, rgb=rgb, alpha=alpha)

    @classmethod
    def from_planes(
        cls,
        planes: np.ndarray,
        bit_depth: int = 8,
        icc_profile: bytes | None = None,
        source: Path | None = None,
        format: str | None = None,
    ) -> LoadedImage:
        """Build from float ``H x W`` or ``H x W x C`` (C = 1..4: L, LA, RGB, RGBA) in [0, 1]."""
        planes = np.asarray(planes, dtype=np.float32)
        if planes.ndim == 2:
            planes = planes[..., None]
        if planes.ndim != 3 or planes.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"expected H x W or H x W x 1..4 pixels, got shape {planes.shape}")
        channels = planes.shape[2]
        grayscale = channels in (1, 2)
        colour = planes[..., :1] if grayscale else planes[..., :3]
        rgb = np.repeat(colour, 3, axis=2) if grayscale else colour
        alpha = planes[..., -1] if channels in (2, 4) else None
        return cls(
            rgb=np.ascontiguousarray(rgb),
            alpha=None if alpha is None else np.ascontiguousarray(alpha),
            grayscale=grayscale,
            bit_depth=bit_depth,
            icc_profile=icc_profile,
            source=source,
            format=format,
        )


@dataclass
class PixelImage:
    """An image ready to encode.

    pixels: uint8 or uint16 ``H x W x C`` in the output layout, C = 1, 2, 3, 4 for L, LA, RGB,
        RGBA (the dtype is the bit depth).
    icc_profile: embedded in the output where the format allows.
    source: the file the image came from (never overwritten by a write).
    """

    pixels: np.ndarray
    icc_profile: bytes | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"pixels must be H x W x 1..4, got shape {self.pixels.shape}")
        if self.pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"pixels must be uint8 or uint16, got {self.pixels.dtype}")

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def bit_depth(self) -> int:
        return 8 * self.pixels.dtype.itemsize

    @property
    def grayscale(self) -> bool:
        return self.channels in (1, 2)

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def mode(self) -> str:
        """L, LA, RGB or RGBA."""
        return ("L" if self.grayscale else "RGB") + ("A" if self.has_alpha else "")


def uint_to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 / uint16 (any byte order) -> float32 in [0, 1]."""
    if pixels.dtype.kind != "u" or pixels.dtype.itemsize not in (1, 2):
        raise ValueError(f"expected uint8 or uint16 pixels, got {pixels.dtype}")
    peak = 255.0 if pixels.dtype.itemsize == 1 else 65535.0
    return (pixels.astype(np.float32) / np.float32(peak)).astype(np.float32)


def float_to_uint(pixels: np.ndarray, bits: int) -> np.ndarray:
    """float in [0, 1] -> uint8 (bits=8) or uint16 (bits=16), rounded to nearest, clamped."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    peak = 255.0 if bits == 8 else 65535.0
    out = np.rint(np.clip(pixels, 0.0, 1.0) * peak)
    return out.astype(np.uint8 if bits == 8 else np.uint16)


__all__ = ["LUMA_WEIGHTS", "LoadedImage", "PixelImage", "float_to_uint", "uint_to_float"]
