"""Reading a task's ``task_config``: strict keys, deprecated spellings, typed loss weights.

Every training task reads its settings through these few functions, so a typo, a value of the
wrong type or an old spelling gets the same one-line answer in every task:

- :func:`check_keys`: an unknown key is a :class:`~tokensr.train.config.ConfigError` that names
  the closest known key (``unknown losses key 'perceptal' (did you mean 'perceptual'?)``).
- :func:`rename_deprecated`: old spellings (``init_from``, ``val_count``) are moved to the
  current ones with a :class:`ConfigDeprecationWarning`, so configs of existing runs still load.
- :func:`loss_weights`: a ``losses`` section merged over the task's defaults, each value
  converted to the type of its default (``1`` -> ``1.0`` for a weight, ``1e4`` -> ``10000``
  for a step count).
- :func:`check_choice`: a string setting that must be one of a few names.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from tokensr.train.config import ConfigError


class ConfigDeprecationWarning(FutureWarning):
    """A config key uses an old spelling; it still works, under its new name."""


#: Old spellings every task still reads: old key -> new (dotted: a key inside a section).
DEPRECATED_KEYS: dict[str, str] = {
    "init_from": "init",
    "val_count": "val.count",
    "val_data": "val.data",
}


def check_keys(keys: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """ConfigError for the first key not in ``allowed``, with the nearest known key as a hint."""
    allowed = list(allowed)
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(allowed)}"
            raise ConfigError(f"unknown {where} key '{key}' ({hint})")


def section(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``cfg[key]`` as a fresh dict (``{}`` when absent or null); ConfigError if it is not a mapping."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
    return dict(value)


def rename_deprecated(cfg: Mapping[str, Any], renames: Mapping[str, str], where: str) -> dict[str, Any]:
    """A copy of ``cfg`` with each old key of ``renames`` moved to its new (possibly dotted) name,
    warning once per key. Giving both spellings is an error: which one was meant is unclear."""
    out = dict(cfg)
    for old, new in renames.items():
        if old not in out:
            continue
        value = out.pop(old)
        head, _, sub = new.partition(".")
        target = section(out, head) if sub else out
        name = sub or head
        if target.get(name) is not None and value is not None:
            raise ConfigError(f"{where}: both {old} and {new} are set; keep {new}")
        if target.get(name) is None:
            target[name] = value
        if sub:
            out[head] = target
        warnings.warn(f"{where}: '{old}' is deprecated, write '{new}'", ConfigDeprecationWarning, stacklevel=3)
    return out


def _typed(name: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default`` (None: any value)."""
    if default is None or value is None and not isinstance(default, (bool, int, float)):
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if isinstance(default, int):
            if int(value) != value:
                raise ConfigError(f"{name} must be a whole number, got {value!r}")
            return int(value)
        return float(value)
    if isinstance(default, str):
        return value if isinstance(value, (str, Mapping)) else str(value)
    return value


def loss_weights(
    section_: Mapping[str, Any] | None,
    defaults: Mapping[str, Any],
    where: str = "losses",
) -> dict[str, Any]:
    """The ``losses`` section over ``defaults``: unknown keys refused, values typed like the defaults."""
    given = dict(section_ or {})
    check_keys(given, defaults, where)
    return {k: _typed(f"{where}.{k}", given[k], v) if k in given else v for k, v in defaults.items()}


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` as a string when it is one of ``choices``; ConfigError naming them otherwise."""
    choices = tuple(choices)
    text = str(value)
    if text not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got '{value}'")
    return text


__all__ = [
    "DEPRECATED_KEYS",
    "ConfigDeprecationWarning",
    "check_choice",
    "check_keys",
    "loss_weights",
    "rename_deprecated",
    "section",
]
