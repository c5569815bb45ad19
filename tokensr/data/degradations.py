"""Degradation registry: build a pipeline by name.

A degradation is a callable ``(hr, rng, scale) -> (lr, params)``: ``hr`` float32 HxWx3 RGB in
[0, 1] (H, W multiples of ``scale``), ``rng`` a ``np.random.Generator`` (the only source of
randomness), ``lr`` float32 (H/scale)x(W/scale)x3 on the 8-bit grid and ``params`` a
JSON-serialisable dict of everything that was drawn.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from tokensr.data.bsrgan import BSRGANConfig, BSRGANDegradation
from tokensr.data.realesrgan import RealESRGANConfig, RealESRGANDegradation
from tokensr.errors import OptionError


class Degradation(Protocol):
    name: str

    def __call__(self, hr: np.ndarray, rng: np.random.Generator, scale: int = 4) -> tuple[np.ndarray, dict[str, Any]]:
        ...


_FACTORIES: dict[str, Callable[[], Degradation]] = {
    "realesrgan": lambda: RealESRGANDegradation(RealESRGANConfig()),
    "bsrgan": lambda: BSRGANDegradation(BSRGANConfig(), plus=False),
    "bsrgan_plus": lambda: BSRGANDegradation(BSRGANConfig(), plus=True),
}

#: names accepted by :func:`build_degradation` (and by ``tokensr degrade --pipeline``)
DEGRADATIONS: tuple[str, ...] = tuple(_FACTORIES)


def build_degradation(name: str | Degradation) -> Degradation:
    """Return the pipeline called ``name`` with its published defaults (a callable passes
    through unchanged, so configs with custom ranges can be given directly)."""
    if not isinstance(name, str):
        return name
    key = name.lower().replace("-", "_")
    if key not in _FACTORIES:
        raise OptionError(f"unknown degradation '{name}'; choose one of: {', '.join(DEGRADATIONS)}")
    return _FACTORIES[key]()
