"""Image operations shared by the degradation pipelines.

All functions take and return float32 HxWx3 RGB arrays (values nominally in [0, 1]) and draw
randomness only from an explicit ``np.random.Generator``, so a pipeline is reproducible from
its seed and safe to run in DataLoader workers. OpenCV does the heavy lifting for speed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# OpenCV's own thread pool does not survive fork(): once a parallel OpenCV call has run in a
# process, DataLoader workers forked from it hang on their first parallel call. Parallelism
# here comes from DataLoader workers, so OpenCV runs single-threaded in every process.
cv2.setNumThreads(1)

#: OpenCV interpolation flags by the names used in the configs and in the params JSON
RESIZE_MODES: dict[str, int] = {
    "area": cv2.INTER_AREA,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
}

# ITU-R BT.601 luma weights, used for "gray" noise
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def as_float_image(img: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float image -> contiguous float32 HxWx3 in [0, 1]."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.ascontiguousarray(img, dtype=np.float32)


def quantize(img: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] and round to the 8-bit grid (still float32)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.float32) / 255.0


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def filter2d(img: np.ndarray, kernel: np.ndarray, rank_tol: float = 1e-6) -> np.ndarray:
    """Correlate every channel with ``kernel`` using reflect-101 borders (as torch 'reflect').

    Most blur kernels are (nearly) separable: an SVD ``K = sum_i s_i u_i v_i^T`` cut where
    ``s_i < rank_tol * s_0`` turns one k x k filter into a few 1-D passes (2k taps each),
    about twice as fast over the mix of Real-ESRGAN kernels and equal to the direct filter to
    float32 round-off (< 1e-6). Kernels of high rank go through the direct 2-D filter.
    """
    border = cv2.BORDER_REFLECT_101
    u, s, vt = np.linalg.svd(kernel.astype(np.float64))
    rank = int((s > s[0] * rank_tol).sum()) if s[0] > 0 else 0
    if rank == 0 or rank * (kernel.shape[0] + kernel.shape[1]) >= kernel.size:  # 1-D taps vs 2-D taps
        return cv2.filter2D(img, cv2.CV_32F, kernel.astype(np.float32), borderType=border)
    out = None
    for i in range(rank):
        rows = np.ascontiguousarray(vt[i] * s[i], dtype=np.float32)  # along x
        cols = np.ascontiguousarray(u[:, i], dtype=np.float32)  # along y
        part = cv2.sepFilter2D(img, cv2.CV_32F, rows, cols, borderType=border)
        out = part if out is None else out + part
    return out


def resize(img: np.ndarray, out_hw: tuple[int, int], mode: str) -> np.ndarray:
    """Resize to ``out_hw`` (at least 1x1) with 'area', 'bilinear' or 'bicubic'.

    Bilinear and bicubic (a = -0.75) use half-pixel centres and no anti-aliasing, like
    ``torch.nn.functional.interpolate(align_corners=False)``, so downscales alias as they do
    in Real-ESRGAN's pipeline.
    """
    h, w = max(1, int(out_hw[0])), max(1, int(out_hw[1]))
    if (h, w) == img.shape[:2]:
        return img
    out = cv2.resize(img, (w, h), interpolation=RESIZE_MODES[mode])
    return out if out.ndim == 3 else out[:, :, None]


def rgb_to_gray(img: np.ndarray) -> np.ndarray:
    """BT.601 luma, HxW float32."""
    return img @ _LUMA


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, gray: bool) -> np.ndarray:
    """Zero-mean Gaussian noise with std ``sigma`` (8-bit units); ``gray`` gives the same
    noise in all three channels."""
    h, w = shape[:2]
    if gray:
        n = rng.standard_normal((h, w, 1), dtype=np.float32)
        n = np.repeat(n, 3, axis=2)
    else:
        n = rng.standard_normal((h, w, 3), dtype=np.float32)
    return n * np.float32(sigma / 255.0)


def _count_levels(img8: np.ndarray) -> float:
    """Number of distinct 8-bit values rounded up to a power of two (Poisson photon count)."""
    n = int(np.count_nonzero(np.bincount(img8.ravel(), minlength=256)))
    return float(2 ** math.ceil(math.log2(max(n, 1))))


def poisson_noise(rng: np.random.Generator, img: np.ndarray, scale: float, gray: bool) -> np.ndarray:
    """Shot noise as in Real-ESRGAN: the image is rounded to 8 bits, the photon count is the
    number of distinct values (rounded up to a power of two), and the Poisson residual is
    multiplied by ``scale``. ``gray`` draws one residual on the luma for all channels."""
    if gray:
        src = np.clip(np.rint(rgb_to_gray(img) * 255.0), 0, 255).astype(np.uint8)
    else:
        src = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    vals = _count_levels(src)
    base = src.astype(np.float32) / 255.0
    noisy = rng.poisson(base.astype(np.float64) * vals).astype(np.float32) / np.float32(vals)
    noise = (noisy - base) * np.float32(scale)
    if gray:
        noise = np.repeat(noise[:, :, None], 3, axis=2)
    return noise


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Real JPEG round trip (libjpeg via OpenCV, 4:2:0 chroma) at integer ``quality``.

    The input is clamped and rounded to 8 bits first, the output is float32 in [0, 1].
    """
    bgr = np.ascontiguousarray(to_uint8(img)[:, :, ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:  # pragma: no cover - OpenCV only fails on invalid input
        raise RuntimeError("JPEG encoding failed")
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return dec[:, :, ::-1].astype(np.float32) / 255.0


def usm_sharpen(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: float = 10.0) -> np.ndarray:
    """Unsharp masking as Real-ESRGAN applies it to the ground truth.

    A Gaussian blur of side ``radius`` (made odd; sigma from OpenCV's size rule) gives the
    residual; pixels whose residual exceeds ``threshold`` (8-bit units) form a mask that is
    blurred the same way and used to blend ``img + weight * residual`` (clamped) into ``img``.
    """
    k = radius + 1 if radius % 2 == 0 else radius
    blur = cv2.GaussianBlur(img, (k, k), 0, borderType=cv2.BORDER_REFLECT_101)
    residual = img - blur
    mask = (np.abs(residual) * 255.0 > threshold).astype(np.float32)
    soft = cv2.GaussianBlur(mask, (k, k), 0, borderType=cv2.BORDER_REFLECT_101)
    sharp = np.clip(img + np.float32(weight) * residual, 0.0, 1.0)
    return soft * sharp + (1.0 - soft) * img


# ------------------------------------------------------------------------------------------
# MATLAB-style bicubic (anti-aliased on downscale), used by BSRGAN and by the statistics
# ------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    # Keys cubic with a = -0.5 (MATLAB imresize)
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of MATLAB's bicubic imresize along one axis (symmetric borders)."""
    scale = n_out / n_in
    support = 4.0
    stretch = 1.0 / scale if scale < 1 else 1.0  # widen the kernel on downscale (anti-alias)
    width = support * stretch
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based input coordinate of each output pixel
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based
    dist = u[:, None] - idx
    wts = _cubic(dist / stretch) / stretch
    wts /= wts.sum(axis=1, keepdims=True)
    # symmetric (half-sample) boundary: 0 -> 1, -1 -> 2, n+1 -> n, ...
    i0 = idx - 1
    period = 2 * n_in
    i0 = np.mod(i0, period)
    i0 = np.where(i0 >= n_in, period - 1 - i0, i0).astype(np.int64)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.repeat(np.arange(n_out), taps), i0.ravel()), wts.ravel())
    return m


def imresize_matlab(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize matching MATLAB ``imresize`` (a = -0.5, anti-aliasing when shrinking).

    Implemented as two dense matrix products, which is fast for the image sizes used here.
    """
    h, w = img.shape[:2]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    mh = _resize_matrix(h, oh).astype(np.float32)
    mw = _resize_matrix(w, ow).astype(np.float32)
    x = img.astype(np.float32)
    out = np.einsum("oh,hwc->owc", mh, x, optimize=True)
    out = np.einsum("pw,owc->opc", mw, out, optimize=True)
    return np.ascontiguousarray(out, dtype=np.float32)
