"""Method specifications on the command line: ``name`` or ``name:key=value:key=value``.

``realsrt:steps=4`` builds ``build_method("realsrt", steps=4)`` and labels its column
``realsrt:steps=4``; this is how sweeps over an option (e.g. the number of iterative steps)
are written. The special key ``weights`` goes to ``build_method(weights=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokensr.errors import OptionError


def parse_value(text: str) -> Any:
    """``4`` -> 4, ``0.5`` -> 0.5, ``true``/``false`` -> bool, anything else stays a string."""
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class MethodSpec:
    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None

    @property
    def steps(self) -> int | None:
        value = self.options.get("steps")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_method(text: str) -> MethodSpec:
    parts = [p.strip() for p in text.strip().split(":")]
    name = parts[0]
    if not name:
        raise OptionError(f"empty method name in '{text}'")
    options: dict[str, Any] = {}
    weights = None
    for part in parts[1:]:
        if "=" not in part:
            raise OptionError(f"method option '{part}' in '{text}' is not key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        if not key:
            raise OptionError(f"empty option name in '{text}'")
        if key == "weights":
            weights = value
        else:
            options[key.replace("-", "_")] = parse_value(value)
    return MethodSpec(label=text.strip(), name=name, options=options, weights=weights)


def parse_methods(text: str) -> list[MethodSpec]:
    """Comma-separated method specs, e.g. ``bicubic,realsrt:steps=1,realsrt:steps=4``."""
    specs = [parse_method(t) for t in text.split(",") if t.strip()]
    if not specs:
        raise OptionError("no methods given")
    labels = [s.label for s in specs]
    dup = {label for label in labels if labels.count(label) > 1}
    if dup:
        raise OptionError(f"method listed twice: {', '.join(sorted(dup))}")
    return specs
