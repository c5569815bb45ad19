"""Gaussian-weighted overlapping patch aggregation (tokensr.inference.patches)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokensr.errors import OptionError
from tokensr.inference.patches import (
    aggregate_patches,
    gaussian_weights,
    padded_length,
    patch_starts,
    reflect_pad,
)


def test_gaussian_weights_shape_and_peak() -> None:
    w = gaussian_weights(8, 12, var=0.05)
    assert w.shape == (8, 12) and (w > 0).all()
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))
    assert w.max() == pytest.approx(float(w[3:5, 5:7].min()), rel=1e-6)
    # variance 0.05 of the side: at the border (x = +-0.5 side) exp(-0.25 / 0.1)
    one = gaussian_weights(1001, 1, var=0.05)[:, 0]
    assert one[0].item() == pytest.approx(torch.exp(torch.tensor(-((500 / 1001) ** 2) / 0.1)).item(), rel=1e-4)
    assert gaussian_weights(10, 10, var=0.5).min() > w.min()  # wider kernel -> flatter


def test_grid_covers_image() -> None:
    assert padded_length(5, 8, 4) == 8
    assert padded_length(8, 8, 4) == 8
    assert padded_length(9, 8, 4) == 12
    assert patch_starts(12, 8, 4) == [0, 4]
    for length in range(1, 40):
        lp = padded_length(length, 8, 3)
        assert lp >= length and (lp - 8) % 3 == 0
        starts = patch_starts(lp, 8, 3)
        assert starts[-1] + 8 == lp


def test_reflect_pad_any_amount() -> None:
    x = torch.arange(6.0).view(1, 1, 2, 3)
    y = reflect_pad(x, 7, 5, 4, 9)
    assert y.shape == (1, 1, 2 + 4 + 9, 3 + 7 + 5)
    assert torch.equal(y[..., 4:6, 7:10], x)
    assert torch.equal(reflect_pad(x, 1, 1, 1, 1), F.pad(x, (1, 1, 1, 1), mode="reflect"))
    single = reflect_pad(torch.ones(1, 1, 1, 1), 2, 2, 2, 2)
    assert single.shape == (1, 1, 5, 5) and (single == 1).all()


def test_constant_patches_aggregate_exactly() -> None:
    lr = torch.rand(2, 3, 19, 26)

    def const(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3, 32, 32), 0.3125)

    out = aggregate_patches(lr, const, scale=4, patch=8, stride=4, batch_size=3)
    assert out.shape == (2, 3, 76, 104)
    assert torch.allclose(out, torch.full_like(out, 0.3125), atol=1e-6)


def test_consistent_patches_reproduce_the_image() -> None:
    """If every patch is upscaled by the same pixel-wise rule, blending changes nothing."""
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 21, 17)
    out = aggregate_patches(
        lr, lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), scale=2, patch=8, batch_size=5
    )
    assert torch.allclose(out, F.interpolate(lr, scale_factor=2, mode="nearest"), atol=1e-5)


def test_batch_size_does_not_change_result_and_blends_seams() -> None:
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 20, 27)
    calls: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        # each patch gets its own brightness offset: a seam-maker
        offset = torch.rand(x.shape[0], 1, 1, 1)
        return F.interpolate(x, scale_factor=4, mode="bilinear") + offset

    torch.manual_seed(1)
    a = aggregate_patches(lr, fn, scale=4, patch=8, batch_size=1)
    n_patches = len(calls)
    assert max(calls) == 1
    calls.clear()
    torch.manual_seed(1)
    b = aggregate_patches(lr, fn, scale=4, patch=8, batch_size=64)
    assert len(calls) == 1 and calls[0] == n_patches
    assert torch.allclose(a, b, atol=1e-6)
    # Gaussian blending leaves no hard step at patch borders: neighbour differences stay small
    base = F.interpolate(lr, scale_factor=4, mode="bilinear")
    residual = a - base
    assert residual.diff(dim=-1).abs().max() < 0.2


def test_channels_and_errors() -> None:
    lr = torch.rand(1, 3, 10, 10)
    out = aggregate_patches(lr, lambda x: torch.ones(x.shape[0], 5, 16, 16), scale=2, patch=8)
    assert out.shape == (1, 5, 20, 20)
    with pytest.raises(OptionError):
        aggregate_patches(lr, lambda x: x, scale=1, patch=8, stride=9)
    with pytest.raises(ValueError):
        aggregate_patches(lr, lambda x: x, scale=2, patch=8)  # wrong output size
