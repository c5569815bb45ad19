"""Bicubic resizing that reproduces MATLAB's ``imresize`` (the default 'bicubic' method).

MATLAB differs from OpenCV/PIL in three ways that matter for metrics such as NIQE:
the cubic kernel uses a = -0.5; when shrinking, the kernel is stretched by 1/scale
(antialiasing); and pixels outside the image are taken by mirror reflection including the
edge pixel ("symmetric" padding). Each axis is a matrix product with a sparse weight matrix.
"""

from __future__ import annotations

import math

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The ``out_len x in_len`` matrix M with ``out = M @ in`` along one axis."""
    width = 4.0
    shrink = scale < 1 and antialias
    if shrink:
        width /= scale
    out_pos = np.arange(1, out_len + 1, dtype=np.float64)
    # Centre of output pixel k (1-based) in input coordinates (1-based).
    centre = out_pos / scale + 0.5 * (1.0 - 1.0 / scale)
    first = np.floor(centre - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = first[:, None] + np.arange(taps)[None, :]
    dist = centre[:, None] - idx
    w = scale * _cubic(dist * scale) if shrink else _cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    # Mirror out-of-range (1-based) indices: ..., 2, 1 | 1, 2, ..., n | n, n-1, ...
    zero_based = (idx - 1).astype(np.int64)
    period = 2 * in_len
    m = np.mod(zero_based, period)
    src = np.where(m < in_len, m, period - 1 - m)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.repeat(np.arange(out_len), taps)
    np.add.at(mat, (rows, src.ravel()), w.ravel())
    return mat


def imresize(img: np.ndarray, scale: float, antialias: bool = True, dtype: np.dtype | str = "float64") -> np.ndarray:
    """Resize an ``H x W`` or ``H x W x C`` array by ``scale`` like MATLAB
    ``imresize(img, scale)`` (bicubic). The output size is ``ceil(H*scale) x ceil(W*scale)``;
    values are not rounded or clipped. ``dtype`` is the arithmetic (and output) precision."""
    dt = np.dtype(dtype)
    arr = np.asarray(img, dtype=dt)
    h, w = arr.shape[:2]
    out_h, out_w = int(math.ceil(h * scale)), int(math.ceil(w * scale))
    mh = resize_matrix(h, out_h, scale, antialias).astype(dt)
    mw = resize_matrix(w, out_w, scale, antialias).astype(dt)
    if arr.ndim == 2:
        return mh @ arr @ mw.T
    return np.einsum("oh,hwc,pw->opc", mh, arr, mw, optimize=True)
