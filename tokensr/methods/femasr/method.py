"""FeMaSR as an SR method: ``build(scale, weights, device, **options)``.

FeMaSR has no bundled weights (the released ones are CC BY-NC-SA 4.0): convert the authors'
checkpoint first (``tokensr convert FeMaSR_SRX4_model_g.pth -o FOLDER``) and pass
``--weights FOLDER``. One forward pass per image, padded as the authors' test() (mirror
padding to whole 8-token blocks, see :meth:`tokensr.methods.femasr.model.FeMaSR.upscale`); no
colour correction, as the authors. Like the authors' inference script, an image of
:data:`WHOLE_IMAGE_PIXELS` LR pixels or more runs in 240-px tiles with 16 px of overlap
(tokensr's tiler blends the overlaps; the authors paste tile centres).

Options (strings are accepted, as the benchmark passes them):

- ``tile`` (LR pixels; default ``auto``: one pass below :data:`WHOLE_IMAGE_PIXELS`, else
  240-px tiles; ``0`` = never tile), ``tile_overlap`` (16).
"""

from __future__ import annotations

from typing import Any

import torch

from tokensr.errors import OptionError
from tokensr.methods.femasr.model import FeMaSR
from tokensr.methods.loading import as_int, load_saved_model, tile_option

AUTO_TILE = 240  # the authors' tile side (test_tile)
DEFAULT_OVERLAP = 16  # the authors' tile_pad
WHOLE_IMAGE_PIXELS = 600 * 600  # the authors' --max_size 600: larger images are tiled
SCALES = (2, 4)  # the released models
NEEDS_WEIGHTS = (
    "femasr needs weights: convert the authors' checkpoint with "
    "`tokensr convert FeMaSR_SRX{scale}_model_g.pth -o FOLDER` and pass --weights FOLDER (see docs/femasr.md)"
)


class FeMaSRMethod:
    name = "femasr"

    def __init__(self, model: FeMaSR, tile: int | None = AUTO_TILE, tile_overlap: int = DEFAULT_OVERLAP) -> None:
        self.model = model.eval()
        self.scale = model.scale
        self.tile = tile
        self.tile_overlap = tile_overlap

    @property
    def device(self) -> torch.device:
        """Where the model lives (the pipeline moves inputs here)."""
        return self.model.device

    @property
    def pad_multiple(self) -> int:
        return self.model.pad_multiple

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise OptionError(f"femasr expects an RGB batch [B, 3, h, w], got {tuple(lr.shape)}")
        lr = lr.to(self.model.device, torch.float32)
        h, w = lr.shape[-2:]
        if not self.tile or h * w < WHOLE_IMAGE_PIXELS:
            return self.model.upscale(lr)
        from tokensr.inference.tiling import upscale_tiled

        one = _Pass(self)
        outs = [
            upscale_tiled(one, lr[i : i + 1], tile=self.tile, overlap=self.tile_overlap, quiet=True)
            for i in range(lr.shape[0])
        ]
        return torch.cat(outs).clamp(0, 1)


class _Pass:
    """The model without the method's own tiling, for :func:`upscale_tiled`."""

    name = "femasr"

    def __init__(self, method: FeMaSRMethod) -> None:
        self.model = method.model
        self.scale = method.scale
        self.pad_multiple = method.pad_multiple

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        return self.model.upscale(lr)


def build(scale: int = 4, weights: str | None = None, device: str = "cpu", **options: Any) -> FeMaSRMethod:
    """Build FeMaSR for ``scale`` from ``weights`` (a folder written by ``tokensr convert``)."""
    known = {"tile", "tile_overlap"}
    unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
    if unknown:
        raise OptionError(
            f"femasr does not take the option(s): {', '.join(unknown)} (it takes {', '.join(sorted(known))})"
        )
    if weights is None:
        raise OptionError(NEEDS_WEIGHTS.format(scale=scale if int(scale) in SCALES else 4))
    model = load_saved_model(FeMaSR, weights, int(scale), {}, device)
    overlap = options.get("tile_overlap")
    return FeMaSRMethod(
        model,
        tile=tile_option(options.get("tile"), AUTO_TILE, minimum=16),
        tile_overlap=DEFAULT_OVERLAP if overlap is None else as_int("tile_overlap", overlap, 0),
    )


__all__ = ["AUTO_TILE", "DEFAULT_OVERLAP", "FeMaSRMethod", "WHOLE_IMAGE_PIXELS", "build"]
