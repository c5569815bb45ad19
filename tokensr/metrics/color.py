"""Luma the way SR papers measure it: MATLAB ``rgb2ycbcr`` (ITU-R BT.601, "studio swing").

Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B on 0..255, so Y spans 16..235.
This is not OpenCV's YCrCb (full-range JPEG) nor Pillow's ``L``; PSNR/SSIM tables in the
literature (and BasicSR's ``test_y_channel=True``) use this one.
"""

from __future__ import annotations

import numpy as np
import torch

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y of an ``H x W x 3`` RGB array on 0..255 (float64, not rounded). Other shapes
    (``H x W`` or one channel) are returned as float64 ``H x W`` unchanged."""
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr @ _Y_WEIGHTS + 16.0
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[..., 0]
    if arr.ndim == 2:
        return arr
    raise ValueError(f"expected H x W x 3 RGB or a single channel, got shape {arr.shape}")


def rgb_to_y_torch(img: torch.Tensor) -> torch.Tensor:
    """Y of ``[B, 3, H, W]`` RGB in [0, 1], returned as ``[B, 1, H, W]`` in [16/255, 235/255]."""
    w = torch.as_tensor(_Y_WEIGHTS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True) + 16.0 / 255.0
