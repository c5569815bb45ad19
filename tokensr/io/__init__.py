"""Image files in and out: `read_image` -> `LoadedImage` -> `write_image`.

See `tokensr.io.read` and `tokensr.io.write` for the rules (formats, bit depth, alpha, ICC,
EXIF orientation, pixel limit, atomic and non-clobbering writes).
"""

from __future__ import annotations

from tokensr.io.loaded import LoadedImage, PixelImage, float_to_uint, uint_to_float
from tokensr.io.read import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    MAX_PIXELS_ENV,
    ImageHeader,
    decode_image,
    default_max_pixels,
    from_pil,
    is_image_name,
    probe_image,
    read_image,
)
from tokensr.io.write import (
    OUTPUT_FORMATS,
    ImageWriteError,
    check_output_path,
    check_output_size,
    encode_image,
    output_format,
    png_rows,
    same_path,
    to_pil,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS_ENV",
    "OUTPUT_FORMATS",
    "ImageHeader",
    "ImageWriteError",
    "LoadedImage",
    "PixelImage",
    "check_output_path",
    "check_output_size",
    "decode_image",
    "default_max_pixels",
    "encode_image",
    "float_to_uint",
    "from_pil",
    "is_image_name",
    "output_format",
    "png_rows",
    "probe_image",
    "read_image",
    "same_path",
    "to_pil",
    "uint_to_float",
    "write_image",
]
