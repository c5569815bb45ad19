"""Training: one engine (:mod:`tokensr.train.engine`) shared by every method, driven by YAML
configs (:mod:`tokensr.train.config`); each method's stages are tasks
(:mod:`tokensr.train.task`, table in :mod:`tokensr.train.tasks`). See docs/training.md.

    >>> from tokensr.train import load_config, train
    >>> train(load_config("configs/vqgan_tiny.yaml", ["data.root=photos/", "max_steps=3"]))
"""

from __future__ import annotations

from typing import Any

from tokensr.train.config import EngineConfig, TrainConfig, load_config

__all__ = ["EngineConfig", "TrainConfig", "Trainer", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("Trainer", "train"):
        from tokensr.train import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'tokensr.train' has no attribute {name!r}")
