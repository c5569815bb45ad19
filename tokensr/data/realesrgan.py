"""Real-ESRGAN's second-order ("high-order") degradation, x4plus recipe, on the CPU.

Order of operations (Wang et al., ICCV-W 2021; BasicSR ``RealESRGANDataset`` +
``RealESRGANModel.feed_data``):

0. optional USM sharpening of the HR (Real-ESRGAN degrades the sharpened ground truth);
1. first pass: blur (kernel1) -> random resize (up/down/keep, relative to the current size)
   -> Gaussian or Poisson noise (colour or gray) -> clamp -> JPEG;
2. second pass: blur (kernel2) with p = 0.8 -> random resize relative to HR/scale -> noise;
3. with p = 0.5: [resize to HR/scale + final sinc] -> clamp -> JPEG,
   else:        clamp -> JPEG -> [resize to HR/scale + final sinc];
4. clamp and round to 8 bits.

JPEG and 'area' resizing follow BasicSR by default: JPEG is simulated in floating point like
BasicSR's DiffJPEG (``jpeg_backend="dct"``, real-valued quality, see ``ops.jpeg_dct``; the old
libjpeg round trip at an integer quality is ``jpeg_backend="libjpeg"``), and 'area' is torch's
adaptive average pooling (``torch_area=True``; ``False`` is OpenCV's INTER_AREA). The one
deliberate difference: each sample draws its own resize parameters (BasicSR draws them once per
GPU batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokensr.data import ops
from tokensr.data.kernels import MixedKernelRanges, mixed_kernel, sinc_kernel

_UDK = ("up", "down", "keep")
_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class DegradationPass:
    """Resize + noise + JPEG settings of one pass (defaults: x4plus first pass)."""

    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_modes: tuple[str, ...] = _MODES
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)  # sigma, 8-bit units
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)


def _second_kernel() -> MixedKernelRanges:
    return MixedKernelRanges(sigma=(0.2, 1.5))


def _second_pass() -> DegradationPass:
    return DegradationPass(
        resize_prob=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclass(frozen=True)
class RealESRGANConfig:
    """All ranges of the Real-ESRGAN x4plus degradation; defaults are the published values
    (``options/train_realesrgan_x4plus.yml``)."""

    kernel1: MixedKernelRanges = field(default_factory=MixedKernelRanges)
    kernel2: MixedKernelRanges = field(default_factory=_second_kernel)
    pass1: DegradationPass = field(default_factory=DegradationPass)
    pass2: DegradationPass = field(default_factory=_second_pass)
    second_blur_prob: float = 0.8
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = tuple(range(7, 22, 2))
    final_sinc_omega: tuple[float, float] = (math.pi / 3, math.pi)
    resize_back_first_prob: float = 0.5  # p of [resize + sinc] -> JPEG (else JPEG first)
    jpeg_backend: str = "dct"  # "dct": BasicSR's float DiffJPEG; "libjpeg": OpenCV, integer quality
    torch_area: bool = True  # 'area' resizes as torch's adaptive average pooling (BasicSR)
    usm: bool = True  # degrade the USM-sharpened HR, as Real-ESRGAN does
    usm_weight: float = 0.5
    usm_radius: int = 50
    usm_threshold: float = 10.0


def _choose(rng: np.random.Generator, items: tuple[str, ...], probs: tuple[float, ...] | None = None) -> str:
    if probs is None:
        return items[int(rng.integers(len(items)))]
    p = np.asarray(probs, dtype=np.float64)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def _draw_resize_factor(rng: np.random.Generator, p: DegradationPass) -> tuple[str, float]:
    kind = _choose(rng, _UDK, p.resize_prob)
    if kind == "up":
        return kind, float(rng.uniform(1.0, p.resize_range[1]))
    if kind == "down":
        return kind, float(rng.uniform(p.resize_range[0], 1.0))
    return kind, 1.0


def _add_noise(rng: np.random.Generator, img: np.ndarray, p: DegradationPass) -> tuple[np.ndarray, dict[str, Any]]:
    if rng.uniform() < p.gaussian_noise_prob:
        sigma = float(rng.uniform(*p.noise_range))
        gray = bool(rng.uniform() < p.gray_noise_prob)
        out = img + ops.gaussian_noise(rng, img.shape, sigma, gray)
        info: dict[str, Any] = {"type": "gaussian", "sigma": sigma, "gray": gray}
    else:
        scale = float(rng.uniform(*p.poisson_scale_range))
        gray = bool(rng.uniform() < p.gray_noise_prob)
        out = img + ops.poisson_noise(rng, img, scale, gray)
        info = {"type": "poisson", "scale": scale, "gray": gray}
    return np.clip(out, 0.0, 1.0), info


def _jpeg(
    rng: np.random.Generator, img: np.ndarray, quality_range: tuple[float, float], backend: str
) -> tuple[np.ndarray, float]:
    q = float(rng.uniform(*quality_range))
    if backend == "dct":
        return ops.jpeg_dct(np.clip(img, 0.0, 1.0), q), q
    if backend == "libjpeg":
        qi = int(round(q))
        return ops.jpeg(np.clip(img, 0.0, 1.0), qi), qi
    raise ValueError(f"unknown jpeg_backend {backend!r}; choose 'dct' or 'libjpeg'")


def _resize(img: np.ndarray, out_hw: tuple[int, int], mode: str, torch_area: bool) -> np.ndarray:
    if mode == "area" and torch_area:
        return ops.resize_area_pool(img, out_hw)
    return ops.resize(img, out_hw, mode)


class RealESRGANDegradation:
    """Callable ``(hr, rng, scale) -> (lr, params)``.

    ``hr`` is float32 HxWx3 RGB in [0, 1] with H and W multiples of ``scale``; ``lr`` is
    float32 (H/scale)x(W/scale)x3 on the 8-bit grid; ``params`` is a JSON-serialisable record
    of everything drawn.
    """

    name = "realesrgan"

    def __init__(self, cfg: RealESRGANConfig | None = None) -> None:
        self.cfg = cfg or RealESRGANConfig()

    def __call__(self, hr: np.ndarray, rng: np.random.Generator, scale: int = 4) -> tuple[np.ndarray, dict[str, Any]]:
        cfg = self.cfg
        hr = ops.as_float_image(hr)
        h, w = hr.shape[:2]
        if scale < 1 or h % scale or w % scale:
            raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {scale}")
        th, tw = h // scale, w // scale
        params: dict[str, Any] = {
            "pipeline": self.name,
            "scale": int(scale),
            "hr_hw": [h, w],
            "usm": cfg.usm,
            "jpeg_backend": cfg.jpeg_backend,
            "torch_area": cfg.torch_area,
        }

        # kernels are drawn up front, like the dataset does in BasicSR
        k1, params["kernel1"] = mixed_kernel(rng, cfg.kernel1)
        k2, params["kernel2"] = mixed_kernel(rng, cfg.kernel2)
        if rng.uniform() < cfg.final_sinc_prob:
            size = int(rng.choice(np.asarray(cfg.final_sinc_sizes)))
            omega = float(rng.uniform(*cfg.final_sinc_omega))
            sinc = sinc_kernel(size, omega)
            params["final_sinc"] = {"size": size, "omega_c": omega}
        else:
            sinc = None
            params["final_sinc"] = None

        src = ops.usm_sharpen(hr, cfg.usm_weight, cfg.usm_radius, cfg.usm_threshold) if cfg.usm else hr

        # ---- first pass ----
        out = ops.filter2d(src, k1)
        kind, f = _draw_resize_factor(rng, cfg.pass1)
        mode = _choose(rng, cfg.pass1.resize_modes)
        size1 = (max(1, int(h * f)), max(1, int(w * f)))
        out = _resize(out, size1, mode, cfg.torch_area)
        params["resize1"] = {"type": kind, "scale": f, "mode": mode, "out_hw": list(size1)}
        out, params["noise1"] = _add_noise(rng, out, cfg.pass1)
        out, params["jpeg1"] = _jpeg(rng, out, cfg.pass1.jpeg_range, cfg.jpeg_backend)

        # ---- second pass ----
        blur2 = bool(rng.uniform() < cfg.second_blur_prob)
        params["blur2_applied"] = blur2
        if blur2:
            out = ops.filter2d(out, k2)
        kind, f = _draw_resize_factor(rng, cfg.pass2)
        mode = _choose(rng, cfg.pass2.resize_modes)
        size2 = (max(1, int(h / scale * f)), max(1, int(w / scale * f)))
        out = _resize(out, size2, mode, cfg.torch_area)
        params["resize2"] = {"type": kind, "scale": f, "mode": mode, "out_hw": list(size2)}
        out, params["noise2"] = _add_noise(rng, out, cfg.pass2)

        # ---- final step: [resize back + sinc] and JPEG in random order ----
        resize_first = bool(rng.uniform() < cfg.resize_back_first_prob)
        final_mode = _choose(rng, _MODES)
        params["final_order"] = "resize+sinc,jpeg" if resize_first else "jpeg,resize+sinc"
        params["final_resize_mode"] = final_mode
        if resize_first:
            out = _resize(out, (th, tw), final_mode, cfg.torch_area)
            if sinc is not None:
                out = ops.filter2d(out, sinc)
            out, params["jpeg2"] = _jpeg(rng, out, cfg.pass2.jpeg_range, cfg.jpeg_backend)
        else:
            out, params["jpeg2"] = _jpeg(rng, out, cfg.pass2.jpeg_range, cfg.jpeg_backend)
            out = _resize(out, (th, tw), final_mode, cfg.torch_area)
            if sinc is not None:
                out = ops.filter2d(out, sinc)

        lr = ops.quantize(out)
        params["lr_hw"] = [th, tw]
        return lr, params
