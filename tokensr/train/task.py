"""The contract between the training engine and a method.

The engine (``tokensr.train.engine``) owns everything generic: devices, DDP, AMP, gradient
accumulation, EMA, learning-rate schedule, checkpoints, logging, progress bar, validation
cadence. A *task* owns what is specific to one method and one training stage: which modules
exist, which are trained, the data, and the losses.

Each optimisation step the engine calls ``task.losses(batch, step)``, which returns one scalar
loss per optimizer name (e.g. ``{"g": ..., "d": ...}`` for a GAN). The engine back-propagates
each loss into the parameters of its optimizer, in the order of ``optimizers()``, and steps
them. A loss that should not train this step (e.g. the discriminator before it starts) is
simply left out of the dict.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset


class TrainTask(Protocol):
    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state is checkpointed, by name (frozen ones included)."""
        ...

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """Trainable parameters per optimizer name; the engine builds the optimizers."""
        ...

    def train_dataset(self) -> Dataset[Any]:
        ...

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Return (loss per optimizer name, scalars to log)."""
        ...

    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Return (metrics, images in [0, 1] as [3, H, W] to save). May return ({}, {})."""
        ...

    def export(self, folder: str) -> None:
        """Write the trained model(s) with ``save_pretrained`` (EMA weights when the engine has them)."""
        ...
