"""Task table: config ``task:`` names -> task classes, imported on first use.

Every task class is built as ``TaskClass(task_config: dict, device: torch.device)`` (see
:mod:`tokensr.train.task`). A config may also name any class directly as
``"package.module:ClassName"`` (for your own tasks).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from tokensr.errors import OptionError

TASKS: dict[str, str] = {
    "vqgan": "tokensr.train.tasks.vqgan:VQGANTask",
    "realsrt_generator": "tokensr.methods.realsrt.train:GeneratorTask",
    "realsrt_critic": "tokensr.methods.realsrt.train:CriticTask",
    "realsrt_ccm": "tokensr.methods.realsrt.train:CCMTask",
    "realsrt_distill": "tokensr.methods.realsrt.distill:DistillTask",
    "iter": "tokensr.methods.iter.train:ITERTask",
    "iter_lq_encoder": "tokensr.methods.iter.train:LQEncoderTask",
    "iter_refine": "tokensr.methods.iter.train:RefineEvalTask",
    "ugtsr_esu": "tokensr.methods.ugtsr.train:ESUTask",
    "ugtsr_udl": "tokensr.methods.ugtsr.train:UDLTask",
}


def task_class(name: str) -> type[Any]:
    """The class for a task name or a ``module:Class`` reference."""
    target = TASKS.get(name)
    if target is None:
        if ":" not in name:
            raise OptionError(f"unknown task '{name}' (choose from {', '.join(TASKS)}, or give module:Class)")
        target = name
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise OptionError(f"task '{name}' is not available: module {module_name} not found") from e
        raise
    cls = getattr(module, attr, None)
    if cls is None:
        raise OptionError(f"task '{name}': {module_name} has no class {attr}")
    return cls  # type: ignore[no-any-return]


def build_task(name: str, task_config: dict[str, Any], device: torch.device) -> Any:
    """Instantiate a task: ``TaskClass(task_config, device)``."""
    return task_class(name)(task_config, device)


__all__ = ["TASKS", "build_task", "task_class"]
