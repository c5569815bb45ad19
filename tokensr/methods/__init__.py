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
}

DEFAULT_METHOD = "bicubic"


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
        raise OptionError(
            f"method '{name}' needs the package '{e.name}' (try: pip install 'tokensr[peers]')"
        ) from e
    factory = getattr(module, func_name)
    return factory(scale=scale, weights=weights, device=device, **options)  # type: ignore[no-any-return]
