"""Full-reference fidelity metrics with the SR-paper conventions: PSNR, SSIM, MS-SSIM.

Defaults follow BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with
``test_y_channel=True``: compare the MATLAB-Y channel (``tokensr.metrics.color``) after
cropping ``crop_border`` pixels (use the SR scale) from every edge, in float64 on the 0..255
scale. SSIM is the original Wang et al. definition (11x11 Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, "valid" filtering, mean of the map), as in their MATLAB code.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import correlate1d

from tokensr.errors import OptionError
from tokensr.metrics.color import rgb_to_y
from tokensr.metrics.image import ImageLike, to_array255


def _prepare(a: ImageLike, b: ImageLike, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_array255(a), to_array255(b)
    if x.shape != y.shape:
        raise OptionError(f"image sizes differ: {x.shape} vs {y.shape}")
    if crop_border < 0:
        raise OptionError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if min(x.shape[:2]) <= 2 * crop_border:
            raise OptionError(f"image {x.shape[:2]} is too small for crop_border={crop_border}")
        x = x[crop_border:-crop_border, crop_border:-crop_border]
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    return x, y


def psnr(sr: ImageLike, hr: ImageLike, crop_border: int = 0, y_channel: bool = True) -> float:
    """PSNR in dB with peak 255 (``inf`` for identical images)."""
    x, y = _prepare(sr, hr, crop_border, y_channel)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r * r) / (2.0 * sigma * sigma))
    return g / g.sum()


def _ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    g = _gaussian_1d()
    half = len(g) // 2
    if min(x.shape) < len(g):
        raise OptionError(f"SSIM needs images of at least {len(g)}x{len(g)} pixels after cropping")

    def blur(a: np.ndarray) -> np.ndarray:
        out = correlate1d(correlate1d(a, g, axis=0, mode="reflect"), g, axis=1, mode="reflect")
        return out[half:-half, half:-half]  # keep only fully-covered ("valid") positions

    mu_x, mu_y = blur(x), blur(y)
    xx, yy, xy = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (xx + yy + c2)
    return float(np.mean(num / den))


def ssim(sr: ImageLike, hr: ImageLike, crop_border: int = 0, y_channel: bool = True) -> float:
    """SSIM (mean over channels when ``y_channel=False``)."""
    x, y = _prepare(sr, hr, crop_border, y_channel)
    return float(np.mean([_ssim_plane(x[..., c], y[..., c]) for c in range(x.shape[2])]))


def ms_ssim(sr: ImageLike, hr: ImageLike, crop_border: int = 0, y_channel: bool = True) -> float:
    """Multi-scale SSIM (Wang, Simoncelli, Bovik 2003) via torchmetrics, on the same Y / crop
    convention (5 scales, the paper's weights, 11x11 Gaussian window). Both image sides
    must be at least 176 pixels after cropping (the 11-tap window must fit at 1/16 size).
    Negative contrast terms are clamped to 0 (``normalize="relu"``) so that very poor
    images give a low score instead of NaN."""
    x, y = _prepare(sr, hr, crop_border, y_channel)
    if min(x.shape[:2]) // 16 <= 10:
        raise OptionError(f"MS-SSIM needs both sides >= 176 pixels after cropping, got {x.shape[1]}x{x.shape[0]}")
    try:
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise OptionError("MS-SSIM needs the package 'torchmetrics' (pip install torchmetrics)") from e
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    ty = torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))[None]
    value = multiscale_structural_similarity_index_measure(
        tx, ty, data_range=255.0, kernel_size=11, sigma=1.5, normalize="relu"
    )
    return float(value)
