"""Degradation registry: build a pipeline by name.

A degradation is a callable ``(hr, rng, scale) -> (lr, params)``: ``hr`` float32 HxWx3 RGB in
[0, 1] (H, W multiples of ``scale``), ``rng`` a ``np.random.Generator`` (the only source of
randomness), ``lr`` float32 (H/scale)x(W/scale)x3 on the 8-bit grid and ``params`` a
JSON-serialisable dict of everything that was drawn.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from tokensr.data.bsrgan import BSRGANConfig, BSRGANDegradation
from tokensr.data.realesrgan import RealESRGANConfig, RealESRGANDegradation
from tokensr.errors import OptionError


class Degradation(Protocol):
    name: str

    def __call__(
        self, hr: np.ndarray, rng: np.random.Generator, scale: int = 4
    ) -> tuple[np.ndarray, dict[str, Any]]: ...


# name -> (the config dataclass holding every range, the pipeline built from such a config)
_PIPELINES: dict[str, tuple[Callable[[], Any], Callable[[Any], Degradation]]] = {
    "realesrgan": (RealESRGANConfig, RealESRGANDegradation),
    "bsrgan": (BSRGANConfig, lambda cfg: BSRGANDegradation(cfg, plus=False)),
    "bsrgan_plus": (BSRGANConfig, lambda cfg: BSRGANDegradation(cfg, plus=True)),
}

#: names accepted by :func:`build_degradation` (and by ``tokensr degrade --pipeline``)
DEGRADATIONS: tuple[str, ...] = tuple(_PIPELINES)


def _override(obj: Any, values: Mapping[str, Any], where: str) -> Any:
    """``dataclasses.replace`` that recurses into nested config dataclasses (lists -> tuples)."""
    fields = [f.name for f in dataclasses.fields(obj)]
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
            raise OptionError(f"unknown degradation option '{where}{key}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[key] = _override(current, value, f"{where}{key}.")
        elif isinstance(value, list):
            changes[key] = tuple(value)
        else:
            changes[key] = value
    return dataclasses.replace(obj, **changes)


def build_degradation(spec: str | Mapping[str, Any] | Degradation) -> Degradation:
    """Return a degradation pipeline.

    ``spec`` is a name (the published defaults), a mapping ``{name: NAME, **overrides}`` whose
    other keys override fields of that pipeline's config dataclass (nested sections as nested
    mappings, e.g. ``{name: realesrgan, pass2: {jpeg_range: [60, 95]}, final_sinc_prob: 0.5}``;
    this is how a YAML training config changes any range), or a callable, returned unchanged.
    """
    if not isinstance(spec, (str, Mapping)):
        return spec
    values = dict(spec) if isinstance(spec, Mapping) else {"name": spec}
    if "name" not in values:
        raise OptionError(f"a degradation mapping needs a 'name' ({', '.join(DEGRADATIONS)})")
    name = str(values.pop("name"))
    key = name.lower().replace("-", "_")
    if key not in _PIPELINES:
        raise OptionError(f"unknown degradation '{name}'; choose one of: {', '.join(DEGRADATIONS)}")
    make_config, make_pipeline = _PIPELINES[key]
    return make_pipeline(_override(make_config(), values, ""))
