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
    assert out is not None  # rank >= 1 here
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


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of adaptive average pooling: output i averages the inputs
    floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1 with equal weights."""
    m = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        a = (i * n_in) // n_out
        b = -((-(i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def resize_area_pool(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """'area' resize as ``torch.nn.functional.interpolate(mode='area')`` computes it (adaptive
    average pooling), which BasicSR's Real-ESRGAN pipeline uses. Unlike OpenCV's INTER_AREA the
    windows are whole pixels, so fractional ratios average over more pixels (smoother), and
    upscaling averages 1-2 neighbours instead of copying the nearest one."""
    h, w = max(1, int(out_hw[0])), max(1, int(out_hw[1]))
    if (h, w) == img.shape[:2]:
        return img
    mh, mw = _pool_matrix(img.shape[0], h), _pool_matrix(img.shape[1], w)
    out = np.einsum("oh,hwc->owc", mh, img.astype(np.float32), optimize=True)
    return np.ascontiguousarray(np.einsum("pw,owc->opc", mw, out, optimize=True), dtype=np.float32)


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
    if dec is None:  # pragma: no cover - the buffer was just encoded by OpenCV
        raise RuntimeError("JPEG decoding failed")
    return dec[:, :, ::-1].astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------
# JPEG simulated in floating point (the JPEG of BasicSR's second-order pipeline)
# ------------------------------------------------------------------------------------------

# Annex K quantisation tables of the JPEG standard (ITU-T T.81), row = vertical frequency.
JPEG_LUMA_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float64,
)
JPEG_CHROMA_TABLE = np.full((8, 8), 99.0)
JPEG_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def _dct_matrix() -> np.ndarray:
    """Orthonormal 8-point DCT-II: ``coef = D @ block @ D.T``, ``block = D.T @ coef @ D``."""
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    d = 0.5 * np.cos((2 * x + 1) * u * np.pi / 16.0)
    d[0] /= math.sqrt(2.0)
    return d


_DCT = _dct_matrix()


def jpeg_quality_scale(quality: float) -> float:
    """IJG quality -> multiplier of the base tables (5000/q % below 50, 200 - 2q % above),
    kept as a real number: no integer rounding and no clamping of the scaled table."""
    q = float(quality)
    if not 0.0 < q <= 100.0:
        raise ValueError(f"JPEG quality must be in (0, 100], got {quality}")
    return (5000.0 / q if q < 50.0 else 200.0 - 2.0 * q) / 100.0


def _block_roundtrip(plane: np.ndarray, table: np.ndarray) -> np.ndarray:
    """DCT each 8x8 block of a level-shifted plane, quantise with ``table`` (round half to
    even), dequantise and invert. ``plane`` sides are multiples of 8."""
    h, w = plane.shape
    blocks = (plane - 128.0).reshape(h // 8, 8, w // 8, 8)
    coef = np.einsum("ux,ixjy,vy->iujv", _DCT, blocks, _DCT, optimize=True)
    coef = np.rint(coef / table[None, :, None, :]) * table[None, :, None, :]
    back = np.einsum("ux,iujv,vy->ixjy", _DCT, coef, _DCT, optimize=True)
    return back.reshape(h, w) + 128.0


def jpeg_dct(img: np.ndarray, quality: float) -> np.ndarray:
    """JPEG compression simulated in floating point, as BasicSR's ``DiffJPEG(differentiable=
    False)`` does it in Real-ESRGAN's second-order pipeline (no entropy coding, no 8-bit I/O).

    The steps, which differ from libjpeg (``jpeg``) where noted:

    - the input is taken as it is (no rounding to 8 bits; clamp it to [0, 1] first);
    - zero padding (black) at the bottom/right to a multiple of 16 (libjpeg replicates edges);
    - RGB -> YCbCr (JFIF), chroma 4:2:0 by 2x2 averaging;
    - 8x8 DCT; each coefficient divided by ``table * jpeg_quality_scale(quality)`` and rounded
      (half to even). ``quality`` is real-valued and the scaled table is neither rounded nor
      clamped to >= 1 (libjpeg rounds it to integers in 1..255);
    - the tables are applied transposed (the luma entry of horizontal frequency u and vertical
      frequency v is ``JPEG_LUMA_TABLE[u, v]``), as BasicSR stores them;
    - chroma is upsampled by pixel repetition (libjpeg interpolates: "fancy upsampling");
    - YCbCr -> RGB, clamp to [0, 1]; the output is float32 and NOT rounded to 8 bits.
    """
    x = np.asarray(img, dtype=np.float64) * 255.0
    h, w = x.shape[:2]
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)))
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0
    hh, ww = y.shape
    f = jpeg_quality_scale(quality)
    ty, tc = JPEG_LUMA_TABLE.T * f, JPEG_CHROMA_TABLE.T * f

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(hh // 2, 2, ww // 2, 2).mean(axis=(1, 3))

    def up(c: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(c, 2, axis=0), 2, axis=1)

    y = _block_roundtrip(y, ty)
    cb = up(_block_roundtrip(sub(cb), tc)) - 128.0
    cr = up(_block_roundtrip(sub(cr), tc)) - 128.0
    out = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    out = np.clip(out, 0.0, 255.0)[:h, :w] / 255.0
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------
# Processed camera sensor noise (BSRGAN's "ISP noise" slot)
# ------------------------------------------------------------------------------------------


def _demosaic_bilinear(raw: np.ndarray) -> np.ndarray:
    """Bilinear demosaicing of an RGGB mosaic (HxW, even sides) -> HxWx3."""
    h, w = raw.shape
    masks = np.zeros((3, h, w), dtype=np.float32)
    masks[0, 0::2, 0::2] = 1.0
    masks[1, 0::2, 1::2] = 1.0
    masks[1, 1::2, 0::2] = 1.0
    masks[2, 1::2, 1::2] = 1.0
    k_g = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4.0
    k_rb = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4.0
    border = cv2.BORDER_REFLECT_101  # keeps the Bayer parity at the borders
    out = [cv2.filter2D(raw * masks[c], cv2.CV_32F, k_g if c == 1 else k_rb, borderType=border) for c in range(3)]
    return np.stack(out, axis=-1)


def isp_noise(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Camera sensor noise as it looks after a camera's processing (tokensr's own model of
    BSRGAN's "processed camera sensor noise", whose ISP model is not public).

    The sRGB image is "unprocessed" to a raw Bayer mosaic with randomly drawn camera
    parameters, noise is added there, and the same camera processes it back:

    1. inverse tone curve (of the smoothstep ``3x^2 - 2x^3``), inverse gamma (2.2);
    2. sRGB -> camera colour with a random colour matrix ``M`` (identity plus off-diagonal
       terms in [0, 0.3], rows normalised to 1 so grey stays grey), then division by white
       balance gains red ~ U(1.9, 2.4), blue ~ U(1.5, 1.9);
    3. RGGB mosaic; heteroscedastic Gaussian noise of variance ``shot * x + read`` with
       ``log shot ~ U(log 1e-4, log 1.2e-2)`` and ``log read = 2.18 log shot + 1.2 + N(0, 0.26)``
       (the shot/read relation measured by Brooks et al., "Unprocessing images for learned raw
       denoising", CVPR 2019), clipped to [0, 1];
    4. bilinear demosaicing, white balance, ``M^-1``, gamma, tone curve.

    Without the noise the round trip returns the input except for demosaicing (which softens
    colour edges), so the HR stays the ground truth. The noise is signal dependent, spatially
    correlated by the demosaicing, colour-correlated by ``M^-1`` and amplified in dark areas
    by the gamma. Returns the image (float32, [0, 1]) and the drawn parameters.
    """
    x = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    h, w = x.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:  # the mosaic needs even sides; the last row/column is restored below
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="edge")
    m = np.eye(3) + rng.uniform(0.0, 0.3, size=(3, 3)) * (1.0 - np.eye(3))
    m /= m.sum(axis=1, keepdims=True)
    r_gain, b_gain = float(rng.uniform(1.9, 2.4)), float(rng.uniform(1.5, 1.9))
    log_shot = float(rng.uniform(math.log(1e-4), math.log(1.2e-2)))
    log_read = 2.18 * log_shot + 1.2 + float(rng.normal(0.0, 0.26))
    shot, read = math.exp(log_shot), math.exp(log_read)
    gains = np.array([r_gain, 1.0, b_gain], dtype=np.float32)

    # unprocess
    lin = 0.5 - np.sin(np.arcsin(np.clip(1.0 - 2.0 * x, -1.0, 1.0)) / 3.0)
    lin = np.power(np.maximum(lin, 1e-8), 2.2)
    cam = (lin @ m.T.astype(np.float32)) / gains
    raw = np.empty((x.shape[0], x.shape[1]), dtype=np.float32)
    raw[0::2, 0::2] = cam[0::2, 0::2, 0]
    raw[0::2, 1::2] = cam[0::2, 1::2, 1]
    raw[1::2, 0::2] = cam[1::2, 0::2, 1]
    raw[1::2, 1::2] = cam[1::2, 1::2, 2]
    raw = np.clip(raw, 0.0, 1.0)
    # sensor noise
    std = np.sqrt(raw * np.float32(shot) + np.float32(read))
    raw = np.clip(raw + rng.standard_normal(raw.shape, dtype=np.float32) * std, 0.0, 1.0)
    # process
    cam = _demosaic_bilinear(raw) * gains
    lin = np.clip(cam @ np.linalg.inv(m).T.astype(np.float32), 0.0, 1.0)
    out = np.power(np.maximum(lin, 1e-8), 1.0 / 2.2)
    out = 3.0 * out**2 - 2.0 * out**3
    out = np.clip(out[:h, :w], 0.0, 1.0).astype(np.float32)
    return out, {"shot": shot, "read": read, "r_gain": r_gain, "b_gain": b_gain}


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
