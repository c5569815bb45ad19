"""NIQE, the "completely blind" natural-image-quality evaluator (Mittal et al., 2013).

Lower is better. This follows the official MATLAB release (and BasicSR's
``calculate_niqe``, which reproduces it): the image becomes MATLAB-Y rounded to integers,
``crop_border`` pixels are cut from every edge, the image is cut to whole 96x96 blocks,
and 18 natural-scene statistics per block are computed at full and half resolution (the
half-resolution image made with MATLAB's antialiased bicubic ``imresize``). The 36-dim
block features are fitted with a Gaussian and compared with the pristine model shipped in
``data/niqe_pris_params.npz`` (see ``data/ATTRIBUTION.md``).

The image needs at least two whole 96x96 blocks (for example 96x192) after cropping.

Precision: by default the local mean/variance normalisation, the half-size resize and the
pairwise products run in float32, as in BasicSR. This is not only for bit-compatibility:
NIQE counts the negative and positive normalised values of each block separately, so in
flat regions (exactly zero in exact arithmetic) float64 rounding noise of 1e-14 changes the
counts, and with few blocks the score by up to 0.3. Float32 keeps those values at exactly
zero. ``precision="float64"`` is available for experiments.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
from scipy.ndimage import correlate
from scipy.special import gamma as gamma_fn

from tokensr.errors import OptionError
from tokensr.metrics.color import rgb_to_y
from tokensr.metrics.image import ImageLike, to_array255
from tokensr.metrics.resize import imresize

BLOCK = 96


@lru_cache(maxsize=1)
def pristine_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu [36], cov [36x36], 7x7 Gaussian window) of the pristine NIQE model."""
    ref = resources.files("tokensr.metrics").joinpath("data/niqe_pris_params.npz")
    with resources.as_file(ref) as path, np.load(path) as data:
        mu = np.asarray(data["mu_pris_param"], dtype=np.float64).reshape(-1)
        cov = np.asarray(data["cov_pris_param"], dtype=np.float64)
        window = np.asarray(data["gaussian_window"], dtype=np.float64)
    return mu, cov, window


@lru_cache(maxsize=1)
def _shape_table() -> tuple[np.ndarray, np.ndarray]:
    """The grid of shape parameters searched by the moment-matching AGGD fit (0.2:0.001:10
    as in the MATLAB code) and the matching ratio Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))."""
    alphas = np.round(np.linspace(0.2, 10.0, 9801), 3)
    ratio = gamma_fn(2.0 / alphas) ** 2 / (gamma_fn(1.0 / alphas) * gamma_fn(3.0 / alphas))
    return alphas, ratio


def _fit_aggd(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit an asymmetric generalised Gaussian to each row of ``samples`` ([N, M]).
    Returns (alpha, beta_left, beta_right), each [N]; NaN where a side has no samples."""
    alphas, ratio = _shape_table()
    neg, pos = samples < 0, samples > 0
    samples = samples.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.sum(np.where(neg, samples**2, 0.0), axis=1) / neg.sum(axis=1))
        right = np.sqrt(np.sum(np.where(pos, samples**2, 0.0), axis=1) / pos.sum(axis=1))
        g = left / right
        r = np.mean(np.abs(samples), axis=1) ** 2 / np.mean(samples**2, axis=1)
        r_norm = r * (g**3 + 1.0) * (g + 1.0) / (g**2 + 1.0) ** 2
    best = np.argmin((ratio[None, :] - r_norm[:, None]) ** 2, axis=1)
    alpha = alphas[best]
    alpha = np.where(np.isnan(r_norm), np.nan, alpha)
    k = np.sqrt(gamma_fn(1.0 / alpha) / gamma_fn(3.0 / alpha))
    return alpha, left * k, right * k


def _block_features(norm: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """18 statistics for every ``bh x bw`` block of the normalised image: [num_blocks, 18]."""
    h, w = norm.shape
    nh, nw = h // bh, w // bw
    # Blocks ordered column-major (down the first column first), as the MATLAB code does.
    blocks = norm[: nh * bh, : nw * bw].reshape(nh, bh, nw, bw).transpose(2, 0, 1, 3).reshape(-1, bh, bw)
    flat = blocks.reshape(len(blocks), -1)
    alpha, bl, br = _fit_aggd(flat)
    feats = [alpha, (bl + br) / 2.0]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        shifted = np.roll(blocks, (dy, dx), axis=(1, 2))  # circular shift inside each block
        a, l_, r_ = _fit_aggd((blocks * shifted).reshape(len(blocks), -1))
        mean = (r_ - l_) * gamma_fn(2.0 / a) / gamma_fn(1.0 / a)
        feats += [a, mean, l_, r_]
    return np.stack(feats, axis=1)


def _mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted, contrast-normalised coefficients, in the dtype of ``img``."""
    mu = correlate(img, window, mode="nearest")
    var = correlate(img * img, window, mode="nearest") - mu * mu
    return (img - mu) / (np.sqrt(np.abs(var)) + 1.0)


def niqe_y(y: np.ndarray, precision: str = "float32") -> float:
    """NIQE of a luma plane already on 0..255 (cropped, rounded as the caller wants)."""
    if precision not in ("float32", "float64"):
        raise OptionError(f"precision must be 'float32' or 'float64', got {precision!r}")
    dt = np.dtype(precision)
    mu_p, cov_p, window = pristine_params()
    h, w = y.shape
    nh, nw = h // BLOCK, w // BLOCK
    if nh * nw < 2:
        raise OptionError(f"NIQE needs at least two whole {BLOCK}x{BLOCK} blocks, image is {w}x{h}")
    img = np.asarray(y[: nh * BLOCK, : nw * BLOCK], dtype=dt)
    full = _block_features(_mscn(img, window), BLOCK, BLOCK)
    half_img = (imresize(img / dt.type(255.0), 0.5, antialias=True, dtype=dt) * dt.type(255.0)).astype(dt)
    half = _block_features(_mscn(half_img, window), BLOCK // 2, BLOCK // 2)
    feats = np.concatenate([full, half], axis=1)
    mu_d = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]
    cov_d = np.cov(complete, rowvar=False)
    diff = mu_p - mu_d
    dist = diff @ np.linalg.pinv((cov_p + cov_d) / 2.0) @ diff
    return float(np.sqrt(dist))


def niqe(img: ImageLike, crop_border: int = 0, precision: str = "float32") -> float:
    """NIQE of an RGB or grayscale image (lower is better); see the module doc."""
    arr = to_array255(img)
    y = np.round(rgb_to_y(arr))
    if crop_border:
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    return niqe_y(y, precision)
