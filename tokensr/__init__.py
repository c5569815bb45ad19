"""tokensr: real-world image super-resolution with VQGAN codebooks and iterative token generation.

>>> import tokensr
>>> sr = tokensr.upscale("photo.jpg", method="bicubic", scale=4)   # returns a PIL image
>>> model = tokensr.load("bicubic")                                 # an SR method
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load", "upscale"]


def __getattr__(name: str) -> Any:
    # The API pulls in torch and the I/O stack; import it on first use so that
    # `import tokensr` (and `tokensr --help`) stays fast.
    if name in ("load", "upscale"):
        from tokensr import api

        return getattr(api, name)
    raise AttributeError(f"module 'tokensr' has no attribute {name!r}")
