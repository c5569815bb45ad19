"""Training data: synthetic degradations (Real-ESRGAN, BSRGAN, BSRGAN-plus) and datasets."""

from __future__ import annotations

from tokensr.data.bsrgan import BSRGANConfig, BSRGANDegradation
from tokensr.data.degradations import DEGRADATIONS, Degradation, build_degradation
from tokensr.data.realesrgan import DegradationPass, RealESRGANConfig, RealESRGANDegradation

__all__ = [
    "BSRGANConfig",
    "BSRGANDegradation",
    "DEGRADATIONS",
    "Degradation",
    "DegradationPass",
    "RealESRGANConfig",
    "RealESRGANDegradation",
    "build_degradation",
]
