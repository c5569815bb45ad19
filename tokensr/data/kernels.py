"""Blur kernels used by the synthetic degradations.

Every kernel is a 2-D float64 array with an odd side that sums to 1. Kernels are applied
by correlation (``cv2.filter2D``); all kernels here are point-symmetric, so correlation and
convolution give the same result.

Real-ESRGAN family (all on a grid centred at 0, quadratic form q = x^T S^-1 x, with
S = R(theta) diag(sx^2, sy^2) R(theta)^T):

- Gaussian:             exp(-q / 2)
- generalized Gaussian: exp(-q^beta / 2)       (beta < 1 heavy tails, beta > 1 flat top)
- plateau:              1 / (1 + q^beta)
- sinc (circular low-pass with cut-off omega): omega * J1(omega r) / (2 pi r),
  with the limit omega^2 / (4 pi) at r = 0.

BSRGAN family: Gaussians given by their covariance eigenvalues, MATLAB-style ``fspecial``
isotropic Gaussians, and a Gaussian shifted by (s - 1) / 2 pixels that aligns a later
``img[::s, ::s]`` decimation with the centre of each s x s block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

#: kernel family names understood by :func:`mixed_kernel` (Real-ESRGAN naming)
MIXED_KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd number, got {size}")
    half = size // 2
    ax = np.arange(-half, half + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)  # xx varies along columns (x), yy along rows (y)
    return xx, yy


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """q(x, y) = [x y] S^-1 [x y]^T for S = R diag(sx^2, sy^2) R^T on a centred grid."""
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    # coordinates in the rotated frame: u along the sigma_x axis, v along sigma_y
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalise(k: np.ndarray) -> np.ndarray:
    total = float(k.sum())
    if not np.isfinite(total) or total <= 0:
        raise ValueError("degenerate kernel (sum is not positive)")
    return k / total


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """Isotropic (``sigma_y=None``) or anisotropic rotated Gaussian kernel."""
    sy = sigma_x if sigma_y is None else sigma_y
    return _normalise(np.exp(-0.5 * _quadratic_form(size, sigma_x, sy, theta)))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None, theta: float, beta: float
) -> np.ndarray:
    """exp(-q^beta / 2): beta = 1 is the Gaussian."""
    sy = sigma_x if sigma_y is None else sigma_y
    return _normalise(np.exp(-0.5 * np.power(_quadratic_form(size, sigma_x, sy, theta), beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float | None, theta: float, beta: float) -> np.ndarray:
    """1 / (1 + q^beta): a flat-topped kernel with polynomial tails."""
    sy = sigma_x if sigma_y is None else sigma_y
    return _normalise(1.0 / (np.power(_quadratic_form(size, sigma_x, sy, theta), beta) + 1.0))


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """Circularly symmetric ideal low-pass filter with cut-off ``omega_c`` (radians, pi = Nyquist),
    truncated to ``size`` x ``size``. Models ringing and overshoot artefacts."""
    xx, yy = _grid(size)
    r = np.sqrt(xx**2 + yy**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * special.j1(omega_c * r) / (2.0 * math.pi * r)
    k[size // 2, size // 2] = omega_c**2 / (4.0 * math.pi)
    return _normalise(k)


def pad_kernel(k: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a square odd kernel to ``size`` (no effect on filtering, only on shape)."""
    p = (size - k.shape[0]) // 2
    return np.pad(k, p) if p > 0 else k


@dataclass(frozen=True)
class MixedKernelRanges:
    """Ranges for one Real-ESRGAN kernel draw (defaults: x4plus first pass)."""

    kernel_types: tuple[str, ...] = MIXED_KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: tuple[float, float] = (0.2, 3.0)
    betag: tuple[float, float] = (0.5, 4.0)
    betap: tuple[float, float] = (1.0, 2.0)
    rotation: tuple[float, float] = (-math.pi, math.pi)
    sinc_prob: float = 0.1
    sizes: tuple[int, ...] = tuple(range(7, 22, 2))


def _draw_beta(rng: np.random.Generator, lo: float, hi: float) -> float:
    # Half of the draws are heavy-tailed (beta < 1), half flat-topped (beta > 1), as in the
    # reference sampler; with lo >= 1 the lower half collapses to beta = lo.
    if rng.uniform() < 0.5:
        return float(rng.uniform(lo, max(lo, 1.0)))
    return float(rng.uniform(min(1.0, hi), hi))


def sinc_cutoff(rng: np.random.Generator, size: int) -> float:
    """omega_c ~ U(pi/3, pi) for kernels smaller than 13, U(pi/5, pi) otherwise (x4plus rule)."""
    lo = math.pi / 3 if size < 13 else math.pi / 5
    return float(rng.uniform(lo, math.pi))


def mixed_kernel(rng: np.random.Generator, r: MixedKernelRanges) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw one Real-ESRGAN blur kernel: a sinc with p = ``sinc_prob``, else one of the six
    Gaussian-like families. Returns the kernel (at its drawn size) and its parameters."""
    size = int(rng.choice(np.asarray(r.sizes)))
    if rng.uniform() < r.sinc_prob:
        omega = sinc_cutoff(rng, size)
        return sinc_kernel(size, omega), {"type": "sinc", "size": size, "omega_c": omega}
    probs = np.asarray(r.kernel_probs, dtype=np.float64)
    kind = str(r.kernel_types[int(rng.choice(len(probs), p=probs / probs.sum()))])
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sx = float(rng.uniform(*r.sigma))
    if iso:
        sy, theta = sx, 0.0
    else:
        sy = float(rng.uniform(*r.sigma))
        theta = float(rng.uniform(*r.rotation))
    params: dict[str, Any] = {"type": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind in ("iso", "aniso"):
        k = gaussian_kernel(size, sx, sy, theta)
    elif kind.startswith("generalized"):
        beta = _draw_beta(rng, *r.betag)
        params["beta"] = beta
        k = generalized_gaussian_kernel(size, sx, sy, theta, beta)
    elif kind.startswith("plateau"):
        beta = _draw_beta(rng, *r.betap)
        params["beta"] = beta
        k = plateau_kernel(size, sx, sy, theta, beta)
    else:
        raise ValueError(f"unknown kernel type {kind!r}; known: {', '.join(MIXED_KERNEL_TYPES)}")
    return k, params


# ------------------------------------------------------------------------------------------
# BSRGAN kernels
# ------------------------------------------------------------------------------------------


def covariance_gaussian_kernel(size: int, lambda1: float, lambda2: float, theta: float) -> np.ndarray:
    """Gaussian with covariance eigenvalues ``lambda1`` (along angle ``theta``) and ``lambda2``
    (variances, not standard deviations) on a grid centred at the middle pixel."""
    l1 = max(float(lambda1), 1e-6)
    l2 = max(float(lambda2), 1e-6)
    return gaussian_kernel(size, math.sqrt(l1), math.sqrt(l2), theta)


def fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: isotropic Gaussian whose values below
    eps * max are set to zero. A (near) zero sigma gives the identity kernel."""
    if sigma < 1e-6:
        k = np.zeros((size, size))
        k[size // 2, size // 2] = 1.0
        return k
    xx, yy = _grid(size)
    k = np.exp(-(xx**2 + yy**2) / (2.0 * sigma * sigma))
    k[k < np.finfo(np.float64).eps * k.max()] = 0.0
    return _normalise(k)


def shifted_gaussian(size: int, sigma: float, shift: float) -> np.ndarray:
    """Isotropic Gaussian whose centre sits ``shift`` pixels right and down of the middle.

    Correlating with it and then keeping ``img[::s, ::s]`` with ``shift = (s - 1) / 2`` makes
    each kept sample the blurred value at the centre of its s x s block (no half-pixel drift).
    """
    xx, yy = _grid(size)
    k = np.exp(-((xx - shift) ** 2 + (yy - shift) ** 2) / (2.0 * max(sigma, 1e-6) ** 2))
    return _normalise(k)


def kernel_sizes(values: Sequence[int]) -> tuple[int, ...]:
    """Validate a list of kernel sizes (odd, positive)."""
    out = tuple(int(v) for v in values)
    if not out or any(v < 1 or v % 2 == 0 for v in out):
        raise ValueError(f"kernel sizes must be positive odd numbers, got {list(values)}")
    return out
