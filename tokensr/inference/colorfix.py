"""Colour correction of a generated image towards its low-resolution input.

Token-based generators decode through a codebook and often drift in colour or brightness
(RealSRT sec. 3.4; user reports such as Real-ESRGAN #285/#558). Two fixes:

- :func:`adain` (RealSRT, StableSR's "adain"): match each channel's mean and standard
  deviation to those of the reference. Global per image/patch; cheap and robust.
- :func:`wavelet_color_fix` (StableSR's "wavelet"): keep the output's high-frequency detail and
  replace its low-frequency part (the colour layout) with the reference's, upsampled. Follows
  local colour changes but can reintroduce blur-free low-frequency noise of the LR.

Both take tensors ``[B, C, H, W]`` (any value range) and work on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokensr.errors import OptionError

COLOR_FIXES = ("adain", "wavelet", "none")
# Wavelet levels (StableSR's 5): the a-trous pyramid's low band, which comes from the reference,
# holds periods above about 2^(levels+1) output pixels. Fewer levels take more of the image
# from the upsampled LR (fidelity), more levels keep more of the generated image (texture); at
# x4, 2 levels take about everything the LR can represent. Methods choose their own default
# (option ``color_levels``), measured on the development sets.
DEFAULT_WAVELET_LEVELS = 5


def channel_stats(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and std ``[B, C, 1, 1]``; std is ``sqrt(var + eps)``
    with the population variance (defined even for a single pixel)."""
    flat = x.flatten(2)
    mean = flat.mean(dim=2)
    var = flat.var(dim=2, correction=0)
    return mean[..., None, None], (var + eps).sqrt()[..., None, None]


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalisation: ``content`` with the channel statistics of ``style``.

    ``content`` and ``style`` have the same batch and channel counts; their sizes may differ
    (e.g. an HR patch and its LR patch).
    """
    if content.shape[:2] != style.shape[:2]:
        raise ValueError(f"adain: batch/channels differ: {tuple(content.shape[:2])} vs {tuple(style.shape[:2])}")
    c_mean, c_std = channel_stats(content.float(), eps)
    s_mean, s_std = channel_stats(style.float(), eps)
    out = (content.float() - c_mean) / c_std * s_std + s_mean
    return out.to(content.dtype)


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur with holes (``a trous``), replicate padding so any size works."""
    k = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = (k[:, None] * k[None, :] / 16.0).expand(x.shape[1], 1, 3, 3)
    x = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(x, kernel, groups=x.shape[1], dilation=dilation)


def wavelet_decompose(x: torch.Tensor, levels: int = DEFAULT_WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` into (high frequencies, low frequencies) with an a-trous wavelet pyramid."""
    low = x
    high = torch.zeros_like(x)
    for i in range(levels):
        blurred = _blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor, levels: int = DEFAULT_WAVELET_LEVELS) -> torch.Tensor:
    """``content``'s high frequencies plus ``style``'s low frequencies (``style`` resized to fit)."""
    if levels < 1:
        raise OptionError(f"wavelet colour fix needs at least 1 level, got {levels}")
    x = content.float()
    ref = style.float()
    if ref.shape[-2:] != x.shape[-2:]:
        ref = F.interpolate(ref, size=x.shape[-2:], mode="bicubic", align_corners=False)
    high, _ = wavelet_decompose(x, levels)
    _, low = wavelet_decompose(ref, levels)
    return (high + low).to(content.dtype)


def color_fix(
    content: torch.Tensor,
    style: torch.Tensor,
    mode: str = "adain",
    levels: int = DEFAULT_WAVELET_LEVELS,
) -> torch.Tensor:
    """Apply the colour fix called ``mode`` ('adain', 'wavelet' or 'none'); ``levels`` is the
    wavelet pyramid's depth (ignored by the others).

    The fix always computes in float32 and returns float32, under bf16 / fp16 autocast too: a
    method's low-precision output is widened here, and the blur of the wavelet pyramid is not
    rounded to 8 bits of mantissa (`tokensr.inference.precision`)."""
    if mode not in COLOR_FIXES:
        raise OptionError(f"unknown colour fix '{mode}' (choose from {', '.join(COLOR_FIXES)})")
    with torch.autocast(content.device.type, enabled=False):
        content, style = content.float(), style.float()
        if mode == "adain":
            return adain(content, style)
        if mode == "wavelet":
            return wavelet_color_fix(content, style, levels)
        return content
