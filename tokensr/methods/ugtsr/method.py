"""UGTSR as an SR method: ``build(scale, weights, device, **options)``.

One forward pass per image (no iterations): encode the LR, match codes (Top-k), decode with
the frozen VQGAN decoder fused with LQ features. Any LR size works: the LR is padded at the
bottom/right to what the encoder needs (a multiple of ``f / scale``; 1 for f=4 at x4) and
the output cropped to exactly ``scale * h`` by ``scale * w``. Large images are processed in
overlapping tiles (``tokensr.inference.tiling``) to bound memory.

Options (strings are accepted, as the benchmark passes them):

- ``top_k``: None = the model's trained k; 1 = plain nearest-neighbour matching (skips the
  fusion: an inference-time ablation). Other values are refused (the fusion is built for k).
- ``color_fix`` (``none`` | ``wavelet`` | ``adain``; default :data:`DEFAULT_COLOR_FIX`): correct
  the decoded colours towards the LR input (``tokensr.inference.colorfix``), per tile.
- ``color_levels`` (default :data:`COLOR_LEVELS` for the scale, else 5): depth of the wavelet fix; fewer
  levels take more of the image from the LR (fidelity), more keep more decoded texture.
- ``tile`` (LR pixels; default ``auto``: 256-px tiles when a side of the LR is longer than
  256, else one pass; ``0`` = never tile), ``tile_overlap`` (16, as FeMaSR).
"""

from __future__ import annotations

from typing import Any

import torch

from tokensr.errors import OptionError
from tokensr.inference.colorfix import COLOR_FIXES, color_fix
from tokensr.methods.loading import as_choice, as_int, color_levels_option, load_saved_model, tile_option
from tokensr.methods.ugtsr.model import UGTSR

# bundled default per scale (trained by the lead; see docs/ugtsr.md)
DEFAULT_WEIGHTS: dict[int, str] = {4: "ugtsr-small-x4", 2: "ugtsr-small-x2"}
AUTO_TILE = 256  # LR tile side used when the image is larger than one tile
DEFAULT_OVERLAP = 16
DEFAULT_COLOR_FIX = "wavelet"  # measured on set14_realesrgan_x4: +0.7 dB PSNR-Y, NIQE no worse (docs/ugtsr.md)
# Wavelet levels per scale, measured with ugtsr-small-x4 on set14_realesrgan_x4 (docs/ugtsr.md):
# 4 levels give 22.16 dB / NIQE 7.32 against 21.96 / 7.39 for 5. Other scales keep 5.
COLOR_LEVELS: dict[int, int] = {4: 4}


class UGTSRMethod:
    name = "ugtsr"

    def __init__(
        self,
        model: UGTSR,
        top_k: int | None = None,
        tile: int | None = AUTO_TILE,
        tile_overlap: int = DEFAULT_OVERLAP,
        color: str = DEFAULT_COLOR_FIX,
        color_levels: int | str | None = None,
    ) -> None:
        self.model = model.eval()
        self.color = as_choice("color_fix", color, COLOR_FIXES)
        self.color_levels = color_levels_option(color_levels, model.scale, COLOR_LEVELS)
        self.scale = model.scale
        self.top_k = model.resolve_top_k(top_k)
        self.tile = tile
        self.tile_overlap = tile_overlap

    @property
    def device(self) -> torch.device:
        """Where the model lives (the pipeline moves inputs here)."""
        return self.model.device

    @property
    def pad_multiple(self) -> int:
        return self.model.pad_multiple

    def _one_pass(self, lr: torch.Tensor) -> torch.Tensor:
        sr = self.model.upscale(lr, self.top_k)
        return sr if self.color == "none" else color_fix(sr, lr, self.color, self.color_levels).clamp(0, 1)

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise OptionError(f"ugtsr expects an RGB batch [B, 3, h, w], got {tuple(lr.shape)}")
        lr = lr.to(self.model.device, torch.float32)
        h, w = lr.shape[-2:]
        if not self.tile or (h <= self.tile and w <= self.tile):
            return self._one_pass(lr)
        from tokensr.inference.tiling import upscale_tiled

        outs = [
            upscale_tiled(_Pass(self), lr[i : i + 1], tile=self.tile, overlap=self.tile_overlap, quiet=True)
            for i in range(lr.shape[0])
        ]
        return torch.cat(outs).clamp(0, 1)


class _Pass:
    """The method without its own tiling, for :func:`upscale_tiled`."""

    name = "ugtsr"

    def __init__(self, method: UGTSRMethod) -> None:
        self.method = method
        self.scale = method.scale
        self.pad_multiple = method.pad_multiple

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        return self.method._one_pass(lr)


# --- options -------------------------------------------------------------------------------------


def load_model(weights: str | None, scale: int, device: str | torch.device = "cpu") -> UGTSR:
    """Load a saved UGTSR folder (or the bundled default for ``scale``) onto ``device``."""
    return load_saved_model(UGTSR, weights, scale, DEFAULT_WEIGHTS, device)


def build(scale: int = 4, weights: str | None = None, device: str = "cpu", **options: Any) -> UGTSRMethod:
    """Build UGTSR for ``scale`` from ``weights`` (a saved folder; None = the bundled default)."""
    known = {"top_k", "tile", "tile_overlap", "color_fix", "color_levels"}
    unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
    if unknown:
        raise OptionError(
            f"ugtsr does not take the option(s): {', '.join(unknown)} (it takes {', '.join(sorted(known))})"
        )
    model = load_model(weights, int(scale), device)
    top_k = options.get("top_k")
    if top_k is not None:
        top_k = as_int("top_k", top_k, 1)
        if top_k not in (1, model.config.top_k):
            raise OptionError(
                f"this ugtsr model was trained with top_k={model.config.top_k}: use top_k={model.config.top_k} "
                f"or top_k=1 (plain nearest matching), not {top_k}"
            )
    overlap = options.get("tile_overlap")
    return UGTSRMethod(
        model,
        top_k=top_k,
        tile=tile_option(options.get("tile"), AUTO_TILE, minimum=8),
        tile_overlap=DEFAULT_OVERLAP if overlap is None else as_int("tile_overlap", overlap, 0),
        color=options.get("color_fix") or DEFAULT_COLOR_FIX,  # checked by UGTSRMethod
        color_levels=options.get("color_levels"),  # checked by UGTSRMethod
    )


__all__ = ["AUTO_TILE", "COLOR_LEVELS", "DEFAULT_COLOR_FIX", "DEFAULT_WEIGHTS", "UGTSRMethod", "build", "load_model"]
