"""The part every training task shares (the engine contract is in :mod:`tokensr.train.task`).

A task subclasses :class:`TaskBase`, which reads and checks the config, builds the training
data and the fixed validation batch, keeps frozen modules frozen, and builds the image loss
(:class:`tokensr.nn.losses.ImageLoss`) with its discriminator. A method's ``train.py`` then
holds only what is its own: the model it builds, its losses and its validation metrics.

What a subclass sets (class attributes) and fills in (methods)::

    name = "realsrt_ccm"              # the task's name in messages
    keys = ("init", "losses", ...)    # its task_config keys (data and val are always allowed)
    val_keys = ("steps",)             # its own keys in the val section, if any
    val_count, val_images = 4, 2      # defaults of val.count / val.images
    degradation = "realesrgan"        # default data.degradation (None: HR-only crops)
    model_name = "ugtsr"              # checkpoint name of self.model (default modules())

    def crop_size(self, data) -> int          # HR crop side, checked against the model
    def data_scale(self) -> int | None        # LR partners at this scale (None: HR only)
    def frozen_modules(self) -> list[Module]  # kept in eval mode and without gradients
    def losses(self, batch, step)             # the engine's training step (tokensr.train.task)
    def evaluate(self, batch, step)           # metrics and images of the validation batch

``validate`` (the engine's call) builds the validation batch once and runs ``evaluate`` with
every module in eval mode. ``modules``, ``ema_modules``, ``param_groups`` and ``export`` have
defaults for a task that trains ``self.model`` (plus the image loss's discriminator); tasks
that train one part of a larger model override them.

Config vocabulary shared by every task (:mod:`tokensr.train.options` for the spellings that
are still read): ``init`` (a saved folder to start from), ``data`` (the crop dataset),
``val`` (:class:`tokensr.train.batches.ValSettings`), ``losses`` (weights by name, typed like
the task's defaults, kept as ``self.loss_weights``), ``discriminator``.

Frozen-module policy: a frozen module has ``requires_grad`` off and stays in eval mode (an EMA
codebook must never move, dropout never fires). :meth:`TaskBase.freeze` sets both once;
:meth:`TaskBase.keep_frozen` puts the frozen modules back in eval mode and is called at the
start of every ``losses`` and ``validate``, since the engine switches modules' modes around
validation and export.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from tokensr.errors import OptionError
from tokensr.nn.losses import ImageLoss
from tokensr.train.batches import Inputs, ValSettings, batch_inputs, crop_dataset, validation_batch
from tokensr.train.options import DEPRECATED_KEYS, check_keys, loss_weights, rename_deprecated, section


def freeze(*modules: nn.Module | None) -> None:
    """No gradients and eval mode for each module (None ones skipped)."""
    for m in modules:
        if m is not None:
            m.requires_grad_(False)
            m.eval()


def load_discriminator(disc: nn.Module, path: str) -> None:
    """Warm-start ``disc`` from ``path``: a tokensr training checkpoint (``.pt``, its
    ``discriminator`` module) or a safetensors file of the discriminator alone. The
    ``discriminator.init`` option of any task with a GAN term; a discriminator that already
    knows what decoded images look like saves the first few hundred steps of a CPU run."""
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise OptionError(f"discriminator.init: no such file: {path}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            ckpt = torch.load(str(file), map_location="cpu", weights_only=True)
            modules = ckpt.get("modules", {}) if isinstance(ckpt, dict) else {}
            if "discriminator" not in modules:
                raise OptionError(f"discriminator.init: {path} is not a training checkpoint with a discriminator")
            state = modules["discriminator"]
        disc.load_state_dict(state)
    except (RuntimeError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptionError(f"discriminator.init: {path} does not fit this discriminator ({first})") from e


def trainable_parameters(*modules: nn.Module | None) -> list[nn.Parameter]:
    """The parameters with ``requires_grad`` of the given modules, in order."""
    return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]


class TaskBase:
    """Config, data, validation batch, frozen modules and image loss of a training task."""

    name: ClassVar[str] = "task"
    keys: ClassVar[tuple[str, ...]] = ()
    renamed: ClassVar[Mapping[str, str]] = DEPRECATED_KEYS
    val_keys: ClassVar[tuple[str, ...]] = ()
    val_count: ClassVar[int] = 4
    val_images: ClassVar[int] = 4
    val_batch_keys: ClassVar[tuple[str, ...]] = ("hr", "lr")
    degradation: ClassVar[str | None] = None
    model_name: ClassVar[str] = "model"  # checkpoint name of ``self.model`` (the default modules())

    model: Any  # the model the task trains (set by the subclass)
    loss: ImageLoss  # the image loss, for tasks with image terms (set by image_loss())
    discriminator: nn.Module | None = None  # the image loss's discriminator, if any

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str) -> None:
        where = f"{self.name} task_config"
        self.cfg = rename_deprecated(cfg, self.renamed, where)
        check_keys(self.cfg, ("data", "val") + self.keys, where)
        self.device = torch.device(device)
        self.val = ValSettings.parse(section(self.cfg, "val"), self.val_keys, self.val_count, self.val_images)
        self.val_batch: dict[str, torch.Tensor] | None = None  # built on first use; tests may set it

    # --- hooks --------------------------------------------------------------------------------
    def crop_size(self, data: Mapping[str, Any]) -> int:  # pragma: no cover - every task sets it
        raise NotImplementedError

    def data_scale(self) -> int | None:
        """The LR scale of the crops (None: HR crops only)."""
        return None

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that are loaded but never trained in this task."""
        return []

    # --- engine contract, for a task that trains one model (and maybe a discriminator) -----------
    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {self.model_name: self.model}
        if self.discriminator is not None:
            mods["discriminator"] = self.discriminator
        return mods

    def ema_modules(self) -> list[str]:
        return [self.model_name]

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """``g``: the model's trainable parameters; ``d``: the discriminator's, when there is one."""
        groups: dict[str, Iterable[nn.Parameter]] = {"g": trainable_parameters(self.model)}
        if self.discriminator is not None:
            groups["d"] = list(self.discriminator.parameters())
        return groups

    def export(self, folder: str) -> None:
        self.model.save_pretrained(folder)

    # --- config -------------------------------------------------------------------------------
    def read_losses(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """``losses`` over the task's ``defaults`` (see :func:`tokensr.train.options.loss_weights`)."""
        return loss_weights(section(self.cfg, "losses"), defaults)

    # --- frozen modules -----------------------------------------------------------------------
    def freeze(self) -> None:
        """Turn off gradients of the frozen modules and put them in eval mode."""
        freeze(*self.frozen_modules())

    def keep_frozen(self) -> None:
        """Put the frozen modules back in eval mode, whatever the engine did to the others."""
        for m in self.frozen_modules():
            m.eval()

    # --- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """The engine's validation: :meth:`evaluate` on the fixed validation batch, every module
        in eval mode (``({}, {})`` without validation data)."""
        batch = self.validation_batch()
        if batch is None:
            return {}, {}
        with self.evaluating():
            return self.evaluate(batch, step)

    def evaluate(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Metrics and images (``[3, H, W]`` in [0, 1]) for the validation ``batch``."""
        return {}, {}

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Every module of the task in eval mode for the block (as the engine validates), then
        back in the mode it was in, with the frozen ones in eval mode again."""
        modes = {name: m.training for name, m in self.modules().items()}
        for m in self.modules().values():
            m.eval()
        try:
            yield
        finally:
            for name, m in self.modules().items():
                m.train(modes[name])
            self.keep_frozen()

    # --- data ---------------------------------------------------------------------------------
    def dataset(self, data: Mapping[str, Any], **overrides: Any) -> Dataset[Any]:
        """Crops of ``data`` at this task's crop size and scale."""
        return crop_dataset(
            data, self.crop_size(data), self.data_scale(), task=self.name, degradation=self.degradation, **overrides
        )

    def train_dataset(self) -> Dataset[Any]:
        return self.dataset(section(self.cfg, "data"))

    def validation_batch(self) -> dict[str, torch.Tensor] | None:
        """The fixed validation crops on the device (None when there is no data root)."""
        if self.val_batch is None:
            self.val_batch = validation_batch(section(self.cfg, "data"), self.val, self.dataset, self.val_batch_keys)
            if self.val_batch is None:
                return None
        return {k: v.to(self.device) for k, v in self.val_batch.items()}

    def inputs(self, batch: Mapping[str, torch.Tensor]) -> Inputs:
        return batch_inputs(batch, self.device)

    # --- image loss -----------------------------------------------------------------------------
    def image_loss(
        self,
        weights: Mapping[str, Any],
        *,
        input_range: tuple[float, float],
        perceptual: nn.Module | None = None,
        discriminator: Mapping[str, Any] | None = None,
    ) -> ImageLoss:
        """The task's :class:`ImageLoss`, also kept as ``self.loss`` (and its discriminator as
        ``self.discriminator``). The discriminator (when ``weights["gan"] > 0``) comes from the
        ``discriminator`` section, else from the task's default settings."""
        disc = None
        if float(weights.get("gan", 0.0)) > 0:
            from tokensr.nn.discriminator import build_discriminator

            settings = dict(section(self.cfg, "discriminator") or dict(discriminator or {"type": "patch"}))
            init = settings.pop("init", None)
            disc = build_discriminator(settings)
            if init is not None:
                load_discriminator(disc, str(init))
            disc = disc.to(self.device).train()
        self.loss = ImageLoss(weights, input_range=input_range, perceptual=perceptual, discriminator=disc)
        self.discriminator = self.loss.discriminator
        return self.loss.to(self.device)


__all__ = ["TaskBase", "freeze", "trainable_parameters"]
