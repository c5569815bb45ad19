"""What every learned method's factory shares: finding and checking its saved weights, and
turning option values (which arrive from the CLI or the benchmark as strings) into numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch

from tokensr.errors import OptionError
from tokensr.inference.colorfix import DEFAULT_WAVELET_LEVELS
from tokensr.pretrained import WeightsNotFoundError, read_config, resolve

M = TypeVar("M")


def load_saved_model(
    cls: type[M], weights: str | None, scale: int, defaults: dict[int, str], device: str | torch.device = "cpu"
) -> M:
    """Load a saved ``cls`` folder (``weights``; None = the bundled default for ``scale``).

    Every failure is an OptionError with one clear line: unsupported scale, no bundled weights
    yet, a folder holding another kind of model or another scale, an unknown device.
    """
    method = cls.model_type  # type: ignore[attr-defined]
    name = weights if weights is not None else defaults.get(scale)
    if name is None:
        raise OptionError(f"{method} supports {', '.join(f'x{s}' for s in sorted(defaults))}, not x{scale}")
    try:
        folder = resolve(name)
    except WeightsNotFoundError as e:
        if weights is None:
            raise OptionError(f"no bundled weights for {method} x{scale} yet; pass --weights FOLDER") from None
        raise OptionError(str(e)) from None
    data = read_config(folder)
    if data.get("model_type") != method:
        raise OptionError(f"'{name}' holds a '{data.get('model_type')}' model, not '{method}'")
    if int(data.get("scale", 4)) != scale:
        raise OptionError(f"the {method} model '{name}' is x{data.get('scale')}, not x{scale}")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise OptionError(f"unknown device '{device}'") from e
    return cls.from_pretrained(folder, device=dev)  # type: ignore[attr-defined,no-any-return]


def as_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an integer >= ``minimum`` ("4" and 4.0 are fine, "4.5" is not)."""
    try:
        n = int(value)
        exact = float(value) == n
    except (TypeError, ValueError):
        raise OptionError(f"option {name} must be an integer, got '{value}'") from None
    if n < minimum or not exact:
        raise OptionError(f"option {name} must be an integer >= {minimum}, got '{value}'")
    return n


def color_levels_option(value: Any, scale: int, per_scale: Mapping[int, int]) -> int:
    """Depth of the wavelet colour fix: ``value`` (an integer >= 1) when given, else the
    method's measured default for ``scale`` (``per_scale``), else the fix's own default (5)."""
    if value is None:
        return per_scale.get(int(scale), DEFAULT_WAVELET_LEVELS)
    return as_int("color_levels", value)


def tile_option(value: Any, auto: int, minimum: int) -> int | None:
    """A method's ``tile`` option (LR pixels): None/``auto`` -> ``auto``; ``off``/``none``/
    ``false``/0 -> None (one pass); else a side of at least ``minimum``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return auto
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none", "false")):
        return None
    n = as_int("tile", value, 0)
    if n and n < minimum:
        raise OptionError(f"option tile must be 0 (off) or at least {minimum} LR pixels, got {n}")
    return n or None


def as_bool(name: str, value: Any) -> bool:
    """``value`` as a flag: a bool, or 1/0, true/false, yes/no, on/off in any case."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise OptionError(f"option {name} must be true or false, got '{value}'")


def as_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` as one of ``choices`` (surrounding spaces and case ignored)."""
    text = str(value).strip().lower()
    if text not in choices:
        raise OptionError(f"option {name} must be one of {', '.join(choices)}, got '{value}'")
    return text


def as_float(name: str, value: Any, minimum: float = 0.0, maximum: float | None = None) -> float:
    """``value`` as a number in ``[minimum, maximum]`` (no upper bound when ``maximum`` is None)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"option {name} must be a number, got '{value}'") from None
    if not (x >= minimum and (maximum is None or x <= maximum)):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise OptionError(f"option {name} must be {bound}, got '{value}'")
    return x


def save_steps_target(value: Any, default_dir: str) -> str | None:
    """``save_steps`` as given: a folder or ``.png`` path; True (the CLI flag) or a true word =
    ``default_dir``; None, False or a false word = off."""
    if value is None or value is False:
        return None
    if value is True:
        return default_dir
    text = str(value).strip()
    if text.lower() in ("", "0", "false", "no", "off"):
        return None
    if text.lower() in ("1", "true", "yes", "on"):
        return default_dir
    return text
