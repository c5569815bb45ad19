"""Colour correction: AdaIN and the wavelet fix (tokensr.inference.colorfix)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokensr.errors import OptionError
from tokensr.inference.colorfix import adain, channel_stats, color_fix, wavelet_color_fix, wavelet_decompose


def test_adain_matches_target_statistics() -> None:
    torch.manual_seed(0)
    content = torch.rand(3, 3, 64, 48) * 0.5 + 0.4
    style = torch.rand(3, 3, 16, 12) * torch.tensor([0.2, 0.6, 1.0]).view(1, 3, 1, 1)
    out = adain(content, style)
    assert out.shape == content.shape
    om, os_ = channel_stats(out)
    sm, ss = channel_stats(style)
    assert torch.allclose(om, sm, atol=1e-5)
    assert torch.allclose(os_, ss, atol=1e-4)
    # the spatial pattern is kept: out is an affine map of content per channel
    for c in range(3):
        corr = torch.corrcoef(torch.stack([out[0, c].flatten(), content[0, c].flatten()]))[0, 1]
        assert corr > 0.9999


def test_adain_is_identity_on_own_statistics_and_handles_flat_input() -> None:
    x = torch.rand(1, 3, 20, 20)
    assert torch.allclose(adain(x, x), x, atol=1e-4)
    flat = torch.full((1, 3, 8, 8), 0.7)
    out = adain(flat, x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.mean((2, 3)), x.mean((2, 3)), atol=1e-5)
    with pytest.raises(ValueError):
        adain(torch.rand(1, 3, 4, 4), torch.rand(2, 3, 4, 4))


def test_wavelet_decomposition_is_exact_and_fix_takes_low_frequencies_from_style() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    high, low = wavelet_decompose(x)
    assert torch.allclose(high + low, x, atol=1e-6)
    # content = smooth colour A + fine texture; style = smooth colour B at low resolution
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    texture = 0.1 * torch.sign(torch.sin(xx * 60) * torch.sin(yy * 60))
    content = (torch.tensor([0.8, 0.2, 0.2]).view(1, 3, 1, 1) + texture).expand(1, 3, 64, 64)
    style = torch.tensor([0.2, 0.3, 0.7]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    out = wavelet_color_fix(content, style)
    assert torch.allclose(out.mean((2, 3)), torch.tensor([[0.2, 0.3, 0.7]]), atol=0.02)
    # the texture survives
    corr = torch.corrcoef(torch.stack([out[0, 0].flatten(), texture.flatten()]))[0, 1]
    assert corr > 0.9


def test_color_fix_modes() -> None:
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 4, 4)
    assert torch.equal(color_fix(a, b, "none"), a)
    assert torch.allclose(color_fix(a, b, "adain"), adain(a, b))
    assert torch.allclose(color_fix(a, b, "wavelet"), wavelet_color_fix(a, b))
    with pytest.raises(OptionError):
        color_fix(a, b, "histogram")
    assert F.mse_loss(color_fix(a, b, "adain"), a) > 0


def test_wavelet_levels_trade_fidelity_for_texture() -> None:
    """Fewer levels take more of the image from the (upsampled) reference, more levels keep more
    of the content; 0 levels is refused."""
    torch.manual_seed(1)
    content = torch.rand(1, 3, 64, 64)
    style = torch.rand(1, 3, 16, 16)
    up = F.interpolate(style, size=(64, 64), mode="bicubic", align_corners=False)
    to_ref = [F.mse_loss(wavelet_color_fix(content, style, n), up).item() for n in (1, 2, 3, 4, 5)]
    to_content = [F.mse_loss(wavelet_color_fix(content, style, n), content).item() for n in (1, 2, 3, 4, 5)]
    assert to_ref == sorted(to_ref) and to_ref[0] < 0.5 * to_ref[-1]
    assert to_content == sorted(to_content, reverse=True)
    assert torch.allclose(color_fix(content, style, "wavelet", 2), wavelet_color_fix(content, style, 2))
    assert torch.equal(color_fix(content, style, "none", 2), content)
    with pytest.raises(OptionError, match="at least 1 level"):
        wavelet_color_fix(content, style, 0)
