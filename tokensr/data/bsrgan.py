"""BSRGAN's shuffled degradation and its "plus" variant, on the CPU.

BSRGAN (Zhang et al., ICCV 2021, ``degradation_bsrgan``), used by FeMaSR / UGTSR:

- x4 only: with p = 0.25 a first x2 downscale (OpenCV resize or MATLAB bicubic, p = 0.5
  each), after which the remaining factor is 2;
- seven operations in random order, with the second downsample kept after the first:
  two blurs (anisotropic Gaussian from covariance eigenvalues, or isotropic ``fspecial``
  Gaussian, p = 0.5 each), downsample-2 (p = 0.75 a random resize by 1/U(1, 2s), else a
  (s-1)/2-shifted Gaussian blur + decimation), downsample-3 (resize to the target size),
  Gaussian noise (2..25, colour / gray / channel-correlated), JPEG with p = 0.9, and processed
  camera sensor noise with p = 0.25 (``ops.isp_noise``, tokensr's own unprocess -> raw noise ->
  process model; BSRGAN's ISP model is not public and its released code skips the slot);
- a final JPEG (30..95) always.

BSRGAN-plus (``degradation_bsrgan_plus``, also adopted by Real-ESRGAN's authors):
USM-sharpened input, then 13 slots: blur, resize, Gaussian noise, Poisson (p = 0.1),
speckle (p = 0.1), ISP (p = 0.1), JPEG, blur, resize, Gaussian noise, Poisson,
speckle, ISP; fully shuffled with p = 0.5, else in this order with the four noise slots of
each half shuffled among themselves; then a resize to the target size and a final JPEG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokensr.data import ops
from tokensr.data.kernels import covariance_gaussian_kernel, fspecial_gaussian, shifted_gaussian

_CV_MODES = ("bilinear", "bicubic", "area")  # BSRGAN draws among OpenCV flags 1, 2, 3


@dataclass(frozen=True)
class BSRGANConfig:
    """Probabilities and ranges of BSRGAN / BSRGAN-plus; defaults are the published values."""

    # both variants
    blur_sizes: tuple[int, ...] = tuple(2 * v + 3 for v in range(2, 12))  # 7..25, odd
    aniso_prob: float = 0.5  # anisotropic vs isotropic blur
    noise_level: tuple[int, int] = (2, 25)  # Gaussian sigma, integer 8-bit units, inclusive
    color_noise_prob: float = 0.4  # colour noise (rand > 0.6)
    gray_noise_prob: float = 0.4  # gray noise (rand < 0.4); the rest is channel-correlated
    jpeg_range: tuple[int, int] = (30, 95)  # integer quality, inclusive
    # BSRGAN only
    scale2_prob: float = 0.25  # extra x2 downscale first (x4 only)
    downsample2_resize_prob: float = 0.75  # else shifted Gaussian + decimation
    jpeg_prob: float = 0.9
    isp_prob: float = 0.25  # processed camera sensor noise (ops.isp_noise)
    isp_noise: bool = True  # False: draw and record the ISP slot but skip it (BSRGAN's released code)
    # BSRGAN-plus only
    plus_shuffle_prob: float = 0.5
    plus_poisson_prob: float = 0.1
    plus_speckle_prob: float = 0.1
    plus_isp_prob: float = 0.1
    plus_usm: bool = True
    plus_first_resize_scale: int = 4  # the first resize's down range is 0.5/4 .. 1 at any scale
    resize_up_range: tuple[float, float] = (1.0, 2.0)
    resize_up_prob: float = 0.2
    resize_down_prob: float = 0.7


def _mode(rng: np.random.Generator) -> str:
    return _CV_MODES[int(rng.integers(3))]


class BSRGANDegradation:
    """Callable ``(hr, rng, scale) -> (lr, params)`` for BSRGAN (``plus=False``) or
    BSRGAN-plus (``plus=True``). Same contract as :class:`RealESRGANDegradation`."""

    def __init__(self, cfg: BSRGANConfig | None = None, plus: bool = False) -> None:
        self.cfg = cfg or BSRGANConfig()
        self.plus = plus
        self.name = "bsrgan_plus" if plus else "bsrgan"

    # ---------------------------------------------------------------- single operations
    def _blur(self, rng: np.random.Generator, img: np.ndarray, sf: int) -> tuple[np.ndarray, dict[str, Any]]:
        cfg = self.cfg
        if rng.uniform() < cfg.aniso_prob:
            wd2 = 4.0 + sf
            l1, l2 = float(wd2 * rng.uniform()), float(wd2 * rng.uniform())
            size = int(rng.choice(np.asarray(cfg.blur_sizes)))
            theta = float(rng.uniform() * math.pi)
            k = covariance_gaussian_kernel(size, l1, l2, theta)
            info: dict[str, Any] = {
                "op": "blur",
                "type": "aniso",
                "size": size,
                "lambda1": l1,
                "lambda2": l2,
                "theta": theta,
            }
        else:
            wd = 2.0 + 0.2 * sf
            size = int(rng.choice(np.asarray(cfg.blur_sizes)))
            sigma = float(wd * rng.uniform())
            k = fspecial_gaussian(size, sigma)
            info = {"op": "blur", "type": "iso", "size": size, "sigma": sigma}
        return ops.filter2d(img, k), info

    def _gaussian_noise(
        self, rng: np.random.Generator, img: np.ndarray, multiplicative: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]]:
        cfg = self.cfg
        lo, hi = cfg.noise_level
        level = int(rng.integers(lo, hi + 1))
        r = rng.uniform()
        h, w = img.shape[:2]
        if r > 1.0 - cfg.color_noise_prob:
            kind = "color"
            n = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(level / 255.0)
        elif r < cfg.gray_noise_prob:
            kind = "gray"
            n = np.repeat(rng.standard_normal((h, w, 1), dtype=np.float32), 3, axis=2) * np.float32(level / 255.0)
        else:
            # channel-correlated noise: covariance |L^2 U^T D U| with a random orthonormal U,
            # random diagonal D and L the top of the noise range (as in the reference model)
            kind = "correlated"
            big_l = hi / 255.0
            d = np.diag(rng.uniform(size=3))
            u, _, _ = np.linalg.svd(rng.uniform(size=(3, 3)))
            cov = np.abs(big_l**2 * (u.T @ d @ u))
            evals, evecs = np.linalg.eigh(cov)
            a = (evecs * np.sqrt(np.clip(evals, 0.0, None))).astype(np.float32)
            n = rng.standard_normal((h, w, 3), dtype=np.float32) @ a.T
        if multiplicative:
            img = np.clip(img, 0.0, 1.0)
            out = img + img * n
        else:
            out = img + n
        op = "speckle" if multiplicative else "gaussian_noise"
        return np.clip(out, 0.0, 1.0), {"op": op, "type": kind, "level": level}

    def _poisson_noise(self, rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        img = ops.quantize(img)
        vals = float(10 ** (2 * rng.uniform() + 2.0))  # photon count in [100, 10000]
        if rng.uniform() < 0.5:
            out = rng.poisson(img.astype(np.float64) * vals).astype(np.float32) / np.float32(vals)
            gray = False
        else:
            g = np.clip(np.rint(ops.rgb_to_gray(img) * 255.0), 0, 255).astype(np.float32) / 255.0
            ng = rng.poisson(g.astype(np.float64) * vals).astype(np.float32) / np.float32(vals) - g
            out = img + ng[:, :, None]
            gray = True
        return np.clip(out, 0.0, 1.0), {"op": "poisson", "vals": vals, "gray": gray}

    def _isp(self, rng: np.random.Generator, img: np.ndarray, prob: float) -> tuple[np.ndarray, dict[str, Any]]:
        drawn = bool(rng.uniform() < prob)
        if not (drawn and self.cfg.isp_noise):
            return img, {"op": "isp", "drawn": drawn, "applied": False}
        out, info = ops.isp_noise(rng, img)
        return out, {"op": "isp", "drawn": True, "applied": True, **info}

    def _jpeg(self, rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        lo, hi = self.cfg.jpeg_range
        q = int(rng.integers(lo, hi + 1))
        return ops.jpeg(img, q), {"op": "jpeg", "quality": q}

    def _random_resize(self, rng: np.random.Generator, img: np.ndarray, sf: int) -> tuple[np.ndarray, dict[str, Any]]:
        cfg = self.cfg
        r = rng.uniform()
        if r > 1.0 - cfg.resize_up_prob:
            f = float(rng.uniform(*cfg.resize_up_range))
        elif r < cfg.resize_down_prob:
            f = float(rng.uniform(0.5 / sf, 1.0))
        else:
            f = 1.0
        mode = _mode(rng)
        h, w = img.shape[:2]
        out = np.clip(ops.resize(img, (int(f * h), int(f * w)), mode), 0.0, 1.0)
        return out, {"op": "resize", "scale": f, "mode": mode, "out_hw": list(out.shape[:2])}

    # ---------------------------------------------------------------- pipelines
    def __call__(self, hr: np.ndarray, rng: np.random.Generator, scale: int = 4) -> tuple[np.ndarray, dict[str, Any]]:
        hr = ops.as_float_image(hr)
        h, w = hr.shape[:2]
        if scale < 1 or h % scale or w % scale:
            raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {scale}")
        params: dict[str, Any] = {"pipeline": self.name, "scale": int(scale), "hr_hw": [h, w]}
        if self.plus:
            lr = self._plus(hr, rng, scale, params)
        else:
            lr = self._bsrgan(hr, rng, scale, params)
        lr = ops.quantize(lr)
        if lr.shape[:2] != (h // scale, w // scale):  # pragma: no cover - guarded by construction
            raise AssertionError(f"LR size {lr.shape[:2]} != {(h // scale, w // scale)}")
        params["lr_hw"] = [h // scale, w // scale]
        return lr, params

    def _bsrgan(self, img: np.ndarray, rng: np.random.Generator, scale: int, params: dict[str, Any]) -> np.ndarray:
        cfg = self.cfg
        h, w = img.shape[:2]
        sf = scale
        steps: list[dict[str, Any]] = []
        if scale == 4 and rng.uniform() < cfg.scale2_prob:
            if rng.uniform() < 0.5:
                mode = _mode(rng)
                img = ops.resize(img, (h // 2, w // 2), mode)
            else:
                mode = "matlab_bicubic"
                img = ops.imresize_matlab(img, (h // 2, w // 2))
            img = np.clip(img, 0.0, 1.0)
            steps.append({"op": "downsample1", "mode": mode})
            sf = 2
        order = [int(v) for v in rng.permutation(7)]
        i2, i3 = order.index(2), order.index(3)
        if i2 > i3:  # downsample-3 must come after downsample-2
            order[i2], order[i3] = order[i3], order[i2]
        params["order"] = order
        th, tw = img.shape[0] // sf, img.shape[1] // sf  # == HR / scale
        for op in order:
            if op in (0, 1):
                img, info = self._blur(rng, img, sf)
            elif op == 2:
                if rng.uniform() < cfg.downsample2_resize_prob:
                    f = float(rng.uniform(1.0, 2.0 * sf))
                    mode = _mode(rng)
                    hh, ww = img.shape[:2]
                    img = ops.resize(img, (int(hh / f), int(ww / f)), mode)
                    info = {"op": "downsample2", "type": "resize", "factor": f, "mode": mode}
                else:
                    sigma = float(rng.uniform(0.1, 0.6 * sf))
                    k = shifted_gaussian(25, sigma, (sf - 1) / 2.0)
                    img = ops.filter2d(img, k)[::sf, ::sf]
                    info = {"op": "downsample2", "type": "shifted_gaussian", "sigma": sigma}
                img = np.clip(img, 0.0, 1.0)
                info["out_hw"] = list(img.shape[:2])
            elif op == 3:
                mode = _mode(rng)
                img = np.clip(ops.resize(img, (th, tw), mode), 0.0, 1.0)
                info = {"op": "downsample3", "mode": mode}
            elif op == 4:
                img, info = self._gaussian_noise(rng, img)
            elif op == 5:
                if rng.uniform() < cfg.jpeg_prob:
                    img, info = self._jpeg(rng, img)
                else:
                    info = {"op": "jpeg", "quality": None}
            else:
                img, info = self._isp(rng, img, cfg.isp_prob)
            steps.append(info)
        img, info = self._jpeg(rng, img)
        info["op"] = "final_jpeg"
        steps.append(info)
        params["steps"] = steps
        return img

    def _plus(self, img: np.ndarray, rng: np.random.Generator, scale: int, params: dict[str, Any]) -> np.ndarray:
        cfg = self.cfg
        h, w = img.shape[:2]
        if cfg.plus_usm:
            img = ops.usm_sharpen(img)
        params["usm"] = cfg.plus_usm
        if rng.uniform() < cfg.plus_shuffle_prob:
            order = [int(v) for v in rng.permutation(13)]
            params["shuffled"] = True
        else:
            order = list(range(13))
            order[2:6] = [int(v) for v in rng.permutation(order[2:6])]
            order[9:13] = [int(v) for v in rng.permutation(order[9:13])]
            params["shuffled"] = False
        params["order"] = order
        steps: list[dict[str, Any]] = []
        for op in order:
            slot = op if op < 7 else op - 7  # second half: 7..12 -> blur, resize, noise x4
            if op == 6:
                img, info = self._jpeg(rng, img)
            elif slot == 0:
                img, info = self._blur(rng, img, scale)
            elif slot == 1:
                sf = cfg.plus_first_resize_scale if op == 1 else scale
                img, info = self._random_resize(rng, img, sf)
            elif slot == 2:
                img, info = self._gaussian_noise(rng, img)
            elif slot == 3:
                if rng.uniform() < cfg.plus_poisson_prob:
                    img, info = self._poisson_noise(rng, img)
                else:
                    info = {"op": "poisson", "applied": False}
            elif slot == 4:
                if rng.uniform() < cfg.plus_speckle_prob:
                    img, info = self._gaussian_noise(rng, img, multiplicative=True)
                else:
                    info = {"op": "speckle", "applied": False}
            else:
                img, info = self._isp(rng, img, cfg.plus_isp_prob)
            steps.append(info)
        mode = _mode(rng)
        img = np.clip(ops.resize(img, (h // scale, w // scale), mode), 0.0, 1.0)
        steps.append({"op": "resize_to_target", "mode": mode})
        img, info = self._jpeg(rng, img)
        info["op"] = "final_jpeg"
        steps.append(info)
        params["steps"] = steps
        return img
