"""``tokensr convert``: the authors' released checkpoints as tokensr weight folders.

Families are listed here explicitly (no import-time registry); each family module defines
``FAMILIES``. :func:`convert_files` reads the files, recognises their family (or takes
``--from``), converts, and writes config.json + model.safetensors + a model card.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from tokensr.convert.base import ConversionError, Family, StateDict, read_checkpoint

FAMILY_MODULES = ("tokensr.convert.realsrt", "tokensr.convert.iter", "tokensr.convert.femasr")


def families() -> list[Family]:
    """Every convertible family, in a fixed order."""
    found: list[Family] = []
    for name in FAMILY_MODULES:
        found.extend(importlib.import_module(name).FAMILIES)
    return found


def family_named(name: str) -> Family:
    known = families()
    for fam in known:
        if fam.name == name:
            return fam
    raise ConversionError(f"unknown --from '{name}' (choose from {', '.join(f.name for f in known)})")


def detect(states: Sequence[StateDict], paths: Sequence[str]) -> Family:
    """The family whose ``matches`` accepts the first file's state dict (one and only one)."""
    hits = [fam for fam in families() if fam.matches(states[0])]
    if len(hits) == 1:
        return hits[0]
    keys = list(states[0])
    head = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    if not hits:
        raise ConversionError(
            f"{paths[0]} is not a checkpoint tokensr knows ({len(keys)} tensors: {head}); "
            f"name its family with --from ({', '.join(f.name for f in families())})"
        )
    raise ConversionError(
        f"{paths[0]} fits several families ({', '.join(f.name for f in hits)}): choose one with --from"
    )


def model_card(fam: Family, paths: Sequence[str], model: nn.Module) -> str:
    params = sum(p.numel() for p in model.parameters())
    files = "\n".join(f"- `{Path(p).name}`" for p in paths)
    return (
        f"# {fam.name} (converted)\n\n"
        f"{fam.title}, converted from the authors' released checkpoint by `tokensr convert`.\n\n"
        f"## Source\n{files}\n\nFrom: {fam.source}\n\n"
        f"## Licence\nThe weights keep the licence of their source: **{fam.licence}**. tokensr's "
        f"code is Apache-2.0; that does not change the licence of these weights.\n\n"
        f"## Model\n`{type(model).__name__}`, {params / 1e6:.2f} M parameters; config.json holds "
        f"the architecture. Run it with `tokensr upscale --weights FOLDER`.\n"
    )


def convert_files(paths: Sequence[str], out: str | Path, family: str | None = None) -> tuple[Family, Path]:
    """Convert ``paths`` into the weights folder ``out`` (which must not hold a model yet)."""
    folder = Path(out)
    if (folder / "config.json").exists() or (folder / "model.safetensors").exists():
        raise ConversionError(f"{folder} already holds a model; choose an empty or new folder")
    states = [read_checkpoint(p) for p in paths]
    fam = family_named(family) if family else detect(states, paths)
    model = fam.convert(states)
    save = getattr(model, "save_pretrained", None)
    if save is None:
        raise ConversionError(f"the {fam.name} converter returned a model that cannot be saved")
    save(folder)
    (folder / "README.md").write_text(model_card(fam, paths, model), encoding="utf-8")
    return fam, folder


__all__ = ["ConversionError", "Family", "convert_files", "detect", "families", "family_named"]
