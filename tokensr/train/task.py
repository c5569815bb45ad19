"""The contract between the training engine and a method.

The engine (``tokensr.train.engine``) owns everything generic: devices, DDP, AMP, gradient
accumulation, EMA, learning-rate schedule, checkpoints, logging, progress bar, validation
cadence. A *task* owns what is specific to one method and one training stage: which modules
exist, which are trained, the data, and the losses.

Each optimisation step the engine calls ``task.losses(batch, step)``, which returns one scalar
loss per optimizer name (e.g. ``{"g": ..., "d": ...}`` for a GAN). The engine back-propagates
each loss into the parameters of its optimizer, in the order of ``param_groups()``, and steps
them. A loss that should not train this step (e.g. the discriminator before it starts) is
simply left out of the dict.

Construction: the engine builds a task as ``TaskClass(cfg, device)`` where ``cfg`` is the
``task_config`` mapping of the YAML file (a private copy, after command-line overrides;
relative paths that exist next to the config file are already absolute) and ``device`` is a
``torch.device``. Names in configs map to classes in ``tokensr.train.tasks.TASKS`` (or are
given as ``"package.module:Class"``).

What the engine does around the task (see ``tokensr.train.engine``):

- ``step`` given to ``losses`` is the number of optimizer steps completed before this one;
  with gradient accumulation ``losses`` is called several times with the same step.
- ``losses`` runs under autocast when AMP is on; each loss is back-propagated into its own
  optimizer's parameters only, so a generator loss that passes through a discriminator does
  not touch the discriminator's gradients. Do not call ``backward`` yourself;
  ``torch.autograd.grad`` (e.g. for an adaptive GAN weight) is fine.
- The set of loss names returned must depend on ``step`` only (under DDP all ranks must step
  the same optimizers).
- Modules with trained parameters are put in train mode, the others in eval mode, once at
  start and again after every validation/export. A task that needs a frozen module in a
  particular mode during ``losses`` should set it itself.
- ``validate`` and ``export`` run on rank 0 only, under ``torch.no_grad()``, with every module
  in eval mode and the EMA weights swapped in (when the EMA is on). They must not run
  collective operations.
- Optional member ``ema_modules() -> list[str]``: names (keys of ``modules()``) whose trained
  weights get an EMA; default: all modules. E.g. a GAN task lists only the generator.
- Batches come from a DataLoader over ``train_dataset()`` with default collation, moved to
  the device; a dataset with ``set_epoch(epoch)`` is told each new epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

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

    def train_dataset(self) -> Dataset[Any]: ...

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Return (loss per optimizer name, scalars to log)."""
        ...

    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Return (metrics, images in [0, 1] as [3, H, W] to save). May return ({}, {})."""
        ...

    def export(self, folder: str) -> None:
        """Write the trained model(s) with ``save_pretrained`` (EMA weights when the engine has them)."""
        ...
