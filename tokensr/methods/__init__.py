"""Method lookup: an explicit table from method name to the function that builds it.

Nothing registers itself at import time; modules are imported only when their method is
asked for, so `tokensr upscale --method bicubic` never loads a transformer.
"""

from __future__ import annotations

import importlib
from typing import Any

from tokensr.errors import OptionError
from tokensr.methods.base import SRMethod

# name -> "module:function". Each function takes (scale, weights, device, **options).
METHODS: dict[str, str] = {
    "bicubic": "tokensr.methods.bicubic:build",
    "realesrgan": "tokensr.methods.peers:build_realesrgan",
    "span": "tokensr.methods.peers:build_span",
    "realsrt": "tokensr.methods.realsrt.method:build",
    "iter": "tokensr.methods.iter.method:build",
    "ugtsr": "tokensr.methods.ugtsr.method:build",
    "femasr": "tokensr.methods.femasr.method:build",
}

# `tokensr upscale` without --method: the first of these whose bundled weights exist for the
# asked scale (RealSRT is the project's main method; UGTSR is the first one trained), else
# bicubic, which works at any scale. Each method module names its bundled weights per scale in
# DEFAULT_WEIGHTS.
DEFAULT_PREFERENCE: tuple[str, ...] = ("realsrt", "ugtsr", "iter")
DEFAULT_METHOD = "bicubic"  # the fall-back when no trained method is bundled for the scale
# Bundled weights that work by name (``--method NAME``) but missed the quality bar at their
# scale (PSNR-Y at most 0.5 dB below bicubic's, NIQE at least 1.5 lower), so they are never
# chosen by default; their model cards give the numbers.
NOT_DEFAULT: frozenset[str] = frozenset({"ugtsr-small-x2"})  # 1.3 dB below bicubic at x2


def default_method(scale: int | None = None) -> str:
    """The method ``tokensr upscale`` uses without ``--method`` for ``scale`` (None = 4)."""
    from tokensr.pretrained import bundled_names

    bundled = set(bundled_names())
    wanted = 4 if scale is None else int(scale)
    for name in DEFAULT_PREFERENCE:
        module = importlib.import_module(METHODS[name].split(":")[0])
        weights = getattr(module, "DEFAULT_WEIGHTS", {}).get(wanted)
        if weights in bundled and weights not in NOT_DEFAULT:
            return name
    return DEFAULT_METHOD


def available_methods() -> list[str]:
    return list(METHODS)


def build_method(
    name: str,
    scale: int = 4,
    weights: str | None = None,
    device: str = "cpu",
    **options: Any,
) -> SRMethod:
    """Build the method called ``name`` (see ``METHODS``)."""
    if name not in METHODS:
        raise OptionError(f"unknown method '{name}' (choose from {', '.join(METHODS)})")
    module_name, func_name = METHODS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("tokensr"):
            raise OptionError(f"method '{name}' is not available in this version of tokensr") from e
        raise OptionError(f"method '{name}' needs the package '{e.name}' (try: pip install 'tokensr[peers]')") from e
    factory = getattr(module, func_name)
    return factory(scale=scale, weights=weights, device=device, **options)  # type: ignore[no-any-return]
