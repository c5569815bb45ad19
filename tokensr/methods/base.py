"""What every super-resolution method looks like to the pipeline, the CLI and the benchmark.

A method is a callable on RGB tensors in [0, 1]: ``[B, 3, h, w] -> [B, 3, h*scale, w*scale]``.
Image files, alpha, grayscale, 16-bit data and tiling are handled outside it
(``tokensr.inference.pipeline``), so a method only ever sees float RGB batches.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SRMethod(Protocol):
    name: str
    scale: int

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        ...
