"""`from_pretrained` / `save_pretrained` for every tokensr model.

A saved model is a folder holding ``config.json`` (the model's dataclass config plus
``"model_type"``) and ``model.safetensors`` (its state dict). Loading never unpickles
anything: configs are JSON and tensors are safetensors.

Bundled weights live in ``tokensr/weights/<name>/`` and are found by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file

from tokensr.io.permissions import NEW_FILE_MODE

WEIGHTS_DIR = Path(__file__).parent / "weights"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

T = TypeVar("T", bound="PretrainedMixin")


class WeightsNotFoundError(FileNotFoundError):
    """Raised when a name is neither a folder nor a bundled model."""


def bundled_names() -> list[str]:
    """Names of the models that ship inside the package."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / CONFIG_NAME).is_file())


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """Turn a bundled model name or a folder path into a folder that holds config.json."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return path
    bundled = WEIGHTS_DIR / str(name_or_path)
    if bundled.is_dir() and (bundled / CONFIG_NAME).is_file():
        return bundled
    known = ", ".join(bundled_names()) or "none"
    raise WeightsNotFoundError(
        f"no model at '{name_or_path}': give a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, "
        f"or a bundled name ({known})"
    )


def read_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    folder = resolve(name_or_path)
    with open(folder / CONFIG_NAME, encoding="utf-8") as f:
        return json.load(f)


def check_fields(config_cls: type, keys: Iterable[str], where: str, exclude: Iterable[str] = ()) -> None:
    """ValueError for the first key that is not a field of the dataclass ``config_cls`` (nor
    ``model_type``), naming the nearest field: the one check every nested model config uses, so
    a typo in a sub-module's settings is never silently ignored. ``exclude``: fields that may
    not be set here (they come from elsewhere, e.g. the tokenizer)."""
    names = sorted({f.name for f in dataclasses.fields(config_cls)} - set(exclude))
    for key in sorted(set(keys) - set(names) - {"model_type"}):
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(names)}"
        raise ValueError(f"unknown {where} setting '{key}' ({hint})")


def config_from_dict(config_cls: type, data: dict[str, Any], where: str | None = None) -> Any:
    """Build a dataclass config from a dict (lists become tuples). Keys that are not fields are
    ignored (``model_type``, fields of a newer version), unless ``where`` names the config for
    a message: then :func:`check_fields` refuses them."""
    if where is not None:
        check_fields(config_cls, data, where)
    names = {f.name for f in dataclasses.fields(config_cls)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    return config_cls(**kwargs)


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temp file over ``path`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, NEW_FILE_MODE)  # mkstemp's 0600 -> the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights_like(state: dict[str, torch.Tensor], like: Path, out: Path) -> None:
    """Save ``state`` as ``out``'s weights (atomically), with the config and model card of the
    model folder ``like`` copied beside them: a saved model with edited weights, as the
    scripts that swap a decoder or interpolate two models write it."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, "README.md"):
        if (like / name).is_file() and like.resolve() != out.resolve():
            atomic_write_bytes(out / name, functools.partial(shutil.copyfile, like / name))
    atomic_write_bytes(out / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))


class PretrainedMixin:
    """Mixin for ``nn.Module`` subclasses built from a single dataclass ``config``.

    Subclasses set ``config_class`` and ``model_type`` and take the config as the only
    constructor argument.
    """

    config_class: ClassVar[type]
    model_type: ClassVar[str]
    config: Any

    def config_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self.config)
        data["model_type"] = self.model_type
        return data

    def save_pretrained(self, folder: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
        """Write config.json and model.safetensors (optionally cast floats to ``dtype``)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {}
        for k, v in self.state_dict().items():  # type: ignore[attr-defined]
            v = v.detach().cpu()
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            state[k] = v.contiguous()
        atomic_write_bytes(out / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
        text = json.dumps(self.config_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(out / CONFIG_NAME, lambda p: Path(p).write_text(text, encoding="utf-8"))
        return out

    @classmethod
    def from_config(cls: type[T], data: dict[str, Any]) -> T:
        return cls(config_from_dict(cls.config_class, data))  # type: ignore[call-arg]

    @classmethod
    def from_pretrained(
        cls: type[T],
        name_or_path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        strict: bool = True,
    ) -> T:
        folder = resolve(name_or_path)
        data = read_config(folder)
        if data.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"'{name_or_path}' holds a {data.get('model_type')} model, not {cls.model_type}")
        model = cls.from_config(data)
        weights = folder / WEIGHTS_NAME
        if weights.is_file():
            state = load_file(str(weights), device="cpu")
            own = model.state_dict()  # type: ignore[attr-defined]
            state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
            model.load_state_dict(state, strict=strict)  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        return model.to(device)  # type: ignore[attr-defined,no-any-return]
