"""A named set of metrics computed together, as the ``metrics`` and ``bench`` commands do.

Names: ``psnr``, ``ssim``, ``ms_ssim`` (need a reference), ``niqe`` (no reference),
``lpips``, ``lpips_alex``, ``dists`` (need a reference and local weights, see
``tokensr.metrics.perceptual``). A metric that cannot be computed for an image (for example
NIQE on an image smaller than two 96x96 blocks) gives NaN and a one-time warning, so one
odd image does not stop a benchmark.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokensr.errors import OptionError, TokensrError
from tokensr.metrics.fullref import ms_ssim, psnr, ssim
from tokensr.metrics.niqe import niqe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str  # column title
    higher_is_better: bool
    needs_reference: bool
    digits: int  # decimals shown in tables


METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo("psnr", "PSNR-Y (dB)", True, True, 2),
    "ssim": MetricInfo("ssim", "SSIM-Y", True, True, 4),
    "ms_ssim": MetricInfo("ms_ssim", "MS-SSIM-Y", True, True, 4),
    "lpips": MetricInfo("lpips", "LPIPS-VGG", False, True, 4),
    "lpips_alex": MetricInfo("lpips_alex", "LPIPS-Alex", False, True, 4),
    "dists": MetricInfo("dists", "DISTS", False, True, 4),
    "niqe": MetricInfo("niqe", "NIQE", False, False, 3),
}

# BRISQUE is deliberately absent: see docs/metrics.md ("Why no BRISQUE").


def parse_metric_names(text: str | list[str]) -> list[str]:
    names = [n.strip().lower().replace("-", "_") for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    for n in names:
        if n not in METRICS:
            raise OptionError(f"unknown metric '{n}' (choose from {', '.join(METRICS)})")
    return list(dict.fromkeys(names))


class MetricSuite:
    """Compute ``names`` on uint8 ``H x W x 3`` arrays (SR output, optional reference).

    ``crop_border`` is applied to PSNR, SSIM, MS-SSIM and NIQE (use the SR scale), as in
    the SR literature; LPIPS and DISTS see the whole image.
    """

    def __init__(
        self,
        names: list[str],
        crop_border: int = 0,
        weights_dir: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.names = parse_metric_names(names)
        self.crop_border = crop_border
        self._models: dict[str, Any] = {}
        self._warned: set[str] = set()
        if any(n in ("lpips", "lpips_alex", "dists") for n in self.names):
            from tokensr.metrics.perceptual import DISTS, LPIPS

            if "lpips" in self.names:
                self._models["lpips"] = LPIPS("vgg", weights_dir, device)
            if "lpips_alex" in self.names:
                self._models["lpips_alex"] = LPIPS("alex", weights_dir, device)
            if "dists" in self.names:
                self._models["dists"] = DISTS(weights_dir, device)

    def applicable(self, has_reference: bool) -> list[str]:
        return [n for n in self.names if has_reference or not METRICS[n].needs_reference]

    def _one(self, name: str, sr: np.ndarray, ref: np.ndarray | None) -> float:
        c = self.crop_border
        if name == "niqe":
            return niqe(sr, c)
        assert ref is not None  # the others need a reference (`applicable` skips them without one)
        if name == "psnr":
            return psnr(sr, ref, c)
        if name == "ssim":
            return ssim(sr, ref, c)
        if name == "ms_ssim":
            return ms_ssim(sr, ref, c)
        return float(self._models[name].score(sr, ref))

    def __call__(self, sr: np.ndarray, ref: np.ndarray | None = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in self.applicable(ref is not None):
            try:
                out[name] = self._one(name, sr, ref)
            except TokensrError as e:
                if METRICS[name].needs_reference and ref is not None and sr.shape != ref.shape:
                    raise
                if name not in self._warned:
                    log.warning("%s: %s (recorded as NaN)", name, e)
                    self._warned.add(name)
                out[name] = math.nan
        return out
