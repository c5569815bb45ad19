"""Image-quality metrics with the conventions of the super-resolution literature.

Full reference (SR output against the ground truth):
    :func:`psnr`, :func:`ssim`, :func:`ms_ssim` -- on the MATLAB-Y channel after cropping
    ``crop_border`` (= the scale) pixels, matching BasicSR's ``calculate_psnr`` /
    ``calculate_ssim`` with ``test_y_channel=True``;
    :class:`LPIPS`, :class:`DISTS` -- learned distances, weights from local files.
No reference:
    :func:`niqe` -- the MATLAB NIQE algorithm with its pristine model, matching BasicSR's
    ``calculate_niqe``.

Arrays are on the 0..255 scale, tensors on 0..1 (see ``tokensr.metrics.image``).
See docs/metrics.md for the conventions and the validation against BasicSR.
"""

from __future__ import annotations

from tokensr.metrics.color import rgb_to_y
from tokensr.metrics.fullref import ms_ssim, psnr, ssim
from tokensr.metrics.image import quantize, read_rgb, to_array255
from tokensr.metrics.niqe import niqe
from tokensr.metrics.resize import imresize
from tokensr.metrics.suite import METRICS, MetricSuite

__all__ = [
    "DISTS",
    "LPIPS",
    "METRICS",
    "MetricSuite",
    "WeightsNotFoundError",
    "imresize",
    "ms_ssim",
    "niqe",
    "psnr",
    "quantize",
    "read_rgb",
    "rgb_to_y",
    "ssim",
    "to_array255",
]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # The perceptual networks are imported on first use only.
    if name in ("LPIPS", "DISTS", "WeightsNotFoundError"):
        from tokensr.metrics import perceptual

        return getattr(perceptual, name)
    raise AttributeError(f"module 'tokensr.metrics' has no attribute {name!r}")
