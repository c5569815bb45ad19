"""What every training task feeds its model: crops, the fixed validation batch, image strips.

- :func:`crop_dataset` builds :class:`tokensr.data.datasets.HRCropDataset` from a ``data``
  section (``root`` plus the dataset's keyword arguments) with one clear error for a missing
  or wrong folder and for an unknown option.
- :class:`ValSettings` is the ``val`` section, the same keys in every task: ``root`` (default:
  ``data.root``), ``crop_size`` (default: the training crop), ``count`` crops, ``images`` shown
  in the saved strip, ``batch_size`` for tasks that validate in chunks, plus a task's own keys.
- :func:`validation_batch` cuts ``count`` crops once, from the training data settings with the
  seed moved by :data:`VAL_SEED_OFFSET` and augmentation off, so every validation of a run
  (and of a resumed run) sees the same images.
- :func:`batch_inputs` moves a training batch to the device as float32 ``hr``, ``lr`` and the
  per-sample weight ``sample_weight`` ``[B]`` (the datasets down-weight flat crops).
- :func:`image_strip` lays the first images of a batch side by side for the saved figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from tokensr.errors import OptionError
from tokensr.train.options import ConfigDeprecationWarning, check_keys

#: Added to ``data.seed`` for the validation crops (one value for every task), so they differ
#: from the first training crops.
VAL_SEED_OFFSET = 7_919

VAL_KEYS = ("root", "crop_size", "count", "images", "batch_size")


class Inputs(NamedTuple):
    """A training batch on the device: images in [0, 1] and the per-sample weights."""

    hr: torch.Tensor  # [B, 3, H, W]
    lr: torch.Tensor | None  # [B, 3, H/s, W/s] (None for HR-only data)
    sample_weight: torch.Tensor | None  # [B], None when the batch has no weights (all equal)


def batch_inputs(batch: Mapping[str, torch.Tensor], device: torch.device) -> Inputs:
    """``hr``, ``lr`` and ``weight`` of a DataLoader batch as float32 on ``device``."""
    lr, weight = batch.get("lr"), batch.get("weight")
    return Inputs(
        batch["hr"].to(device, torch.float32),
        lr.to(device, torch.float32) if lr is not None else None,
        weight.to(device, torch.float32).view(-1) if weight is not None else None,
    )


def crop_dataset(
    data: Mapping[str, Any],
    crop_size: int,
    scale: int | None = None,
    *,
    task: str,
    degradation: str | None = None,
    **overrides: Any,
) -> Dataset[Any]:
    """An :class:`~tokensr.data.datasets.HRCropDataset` of ``crop_size`` HR crops (with LR
    partners when ``scale`` is given) from a ``data`` section; ``degradation`` is the task's
    default for ``data.degradation``, ``overrides`` win over the section."""
    from tokensr.data.datasets import HRCropDataset

    root = data.get("root")
    if not root:
        raise OptionError(f"the {task} task needs data.root: a folder of HR training photos (data.root=FOLDER)")
    if not Path(root).is_dir():
        where = "" if Path(root).is_absolute() else f" (from {Path.cwd()})"
        raise OptionError(f"data folder not found: {root}{where}; set data.root=FOLDER of training photos")
    kwargs = {k: v for k, v in data.items() if k not in ("root", "crop_size", "scale")}
    if degradation is not None and scale is not None:
        kwargs.setdefault("degradation", degradation)
    kwargs.update(overrides)
    try:
        return HRCropDataset(root, crop_size=crop_size, scale=scale, **kwargs)
    except TypeError as e:
        raise OptionError(f"bad data option: {e}") from e


@dataclass
class ValSettings:
    """The ``val`` section of a task config (see the module docstring)."""

    root: str | None = None  # None: data.root
    crop_size: int | None = None  # None: the training crop size
    count: int = 4  # validation crops
    images: int = 4  # crops shown side by side in the saved image
    batch_size: int = 8  # crops per forward pass, for tasks that validate in chunks
    extra: dict[str, Any] = field(default_factory=dict)  # the task's own val keys (e.g. ITER's steps)
    data: dict[str, Any] = field(default_factory=dict)  # deprecated val_data: data settings for validation

    @classmethod
    def parse(
        cls, section: Mapping[str, Any] | None, extra_keys: tuple[str, ...] = (), count: int = 4, images: int = 4
    ) -> ValSettings:
        """Check and read a ``val`` section; ``count``/``images`` are the task's defaults."""
        given = dict(section or {})
        old = given.pop("data", None)  # from the deprecated val_data (see tokensr.train.options)
        check_keys(given, VAL_KEYS + extra_keys, "val")
        data = dict(old or {})
        if data:
            given.setdefault("root", data.pop("root", None))
            given.setdefault("crop_size", data.pop("crop_size", None))
            if data:
                warnings.warn(
                    f"val_data settings {sorted(data)} override data for validation; val takes only root and crop_size",
                    ConfigDeprecationWarning,
                    stacklevel=2,
                )
        crop = given.get("crop_size")
        return cls(
            root=given.get("root"),
            crop_size=int(crop) if crop is not None else None,
            count=int(given.get("count", count)),
            images=int(given.get("images", images)),
            batch_size=int(given.get("batch_size", 8)),
            extra={k: given[k] for k in extra_keys if k in given},
            data=data,
        )

    def data_section(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The training ``data`` section as validation reads it (its root and crop size)."""
        out = {**data, **self.data}
        if self.root:
            out["root"] = self.root
        if self.crop_size is not None:
            out["crop_size"] = self.crop_size
        return out


def validation_batch(
    data: Mapping[str, Any],
    val: ValSettings,
    dataset: Callable[..., Dataset[Any]],
    keys: tuple[str, ...] = ("hr", "lr"),
) -> dict[str, torch.Tensor] | None:
    """``val.count`` fixed crops stacked per key (on the CPU), or None without a data root.

    ``dataset(section, **overrides)`` is the task's dataset builder; it gets the validation
    data section and ``seed`` (``data.seed + VAL_SEED_OFFSET``), ``length`` and ``augment=False``.
    """
    section = val.data_section(data)
    if not section.get("root"):
        return None
    seed = int(section.pop("seed", 0)) + VAL_SEED_OFFSET
    section.pop("length", None)
    section.pop("cache_dir", None)  # the cache holds training crops
    ds = dataset(section, seed=seed, length=val.count, augment=False)
    items = [ds[i] for i in range(val.count)]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in keys}


def image_strip(images: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` images of ``[B, 3, H, W]`` side by side, clamped to [0, 1]: ``[3, H, n*W]``."""
    return torch.cat(list(images[:n].detach().float().clamp(0, 1).cpu()), dim=2)


def image_rows(rows: list[torch.Tensor], n: int) -> torch.Tensor:
    """Strips of the first ``n`` images of each batch in ``rows``, stacked top to bottom."""
    return torch.cat([image_strip(r, n) for r in rows], dim=1)


__all__ = [
    "VAL_KEYS",
    "VAL_SEED_OFFSET",
    "Inputs",
    "ValSettings",
    "batch_inputs",
    "crop_dataset",
    "image_rows",
    "image_strip",
    "validation_batch",
]
