"""Degradation ops that follow the reference implementations: the floating-point JPEG of
BasicSR's second-order pipeline, torch-style 'area' resizing, and BSRGAN's processed camera
sensor ("ISP") noise. No reference code or shared data is needed: each test checks a property
the reference behaviour implies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tokensr.data import BSRGANConfig, BSRGANDegradation, RealESRGANConfig, RealESRGANDegradation, ops
from tokensr.data.ops import JPEG_LUMA_TABLE, jpeg_dct, jpeg_quality_scale


def smooth_gray(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A grey (R = G = B) image with detail, kept inside [0.2, 0.8] so JPEG never clips."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    g = 0.5 + 0.12 * np.sin(0.31 * xx + 0.17 * yy) + 0.08 * np.cos(0.9 * yy) + 0.05 * rng.standard_normal((h, w))
    return np.repeat(np.clip(g, 0.2, 0.8)[:, :, None], 3, axis=2).astype(np.float32)


def block_dct(plane: np.ndarray) -> np.ndarray:
    """8x8 orthonormal DCT-II of every block (written independently of ops: scipy-free loops)."""
    n = np.arange(8)
    d = np.sqrt(2.0 / 8.0) * np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16.0)
    d[0] = np.sqrt(1.0 / 8.0)
    h, w = plane.shape
    out = np.empty_like(plane, dtype=np.float64)
    for i in range(0, h, 8):
        for j in range(0, w, 8):
            out[i : i + 8, j : j + 8] = d @ plane[i : i + 8, j : j + 8] @ d.T
    return out


# ------------------------------------------------------------------------------ JPEG (DCT)


def test_quality_scale_follows_the_ijg_rule_without_rounding() -> None:
    assert jpeg_quality_scale(50) == pytest.approx(1.0)
    assert jpeg_quality_scale(25) == pytest.approx(2.0)
    assert jpeg_quality_scale(95) == pytest.approx(0.1)  # libjpeg would make the DC step 2, here 1.6
    assert jpeg_quality_scale(30.5) == pytest.approx(5000 / 30.5 / 100)
    with pytest.raises(ValueError):
        jpeg_quality_scale(0)


@pytest.mark.parametrize("quality", [31.7, 50.0, 88.2])
def test_luma_dct_coefficients_are_multiples_of_the_scaled_transposed_table(quality: float) -> None:
    # A grey image has Cb = Cr = 128, so the output's luma is exactly the dequantised blocks:
    # every DCT coefficient of (Y - 128) must be an integer multiple of table.T * scale.
    img = smooth_gray(32, 48)
    out = jpeg_dct(img, quality).astype(np.float64)
    assert np.allclose(out[..., 0], out[..., 2], atol=1e-5)  # still grey
    y = out[..., 0] * 255.0 - 128.0
    step = np.tile(JPEG_LUMA_TABLE.T * jpeg_quality_scale(quality), (4, 6))
    k = block_dct(y) / step
    assert np.abs(k - np.rint(k)).max() < 2e-3
    # and the quantisation is to the nearest multiple: the coefficients moved by <= step / 2
    k_in = block_dct(img[..., 0].astype(np.float64) * 255.0 - 128.0) / step
    assert np.abs(k - k_in).max() <= 0.5 + 2e-3
    # a second pass at the same quality changes nothing (quantised coefficients are kept)
    assert np.abs(jpeg_dct(out.astype(np.float32), quality) - out).max() < 1e-4


def test_dct_jpeg_is_real_valued_in_quality_and_output() -> None:
    img = smooth_gray(32, 32, 1)
    a, b = jpeg_dct(img, 60.0), jpeg_dct(img, 60.4)
    assert np.abs(a - b).max() > 1e-3  # a fractional quality changes the tables
    assert np.abs(ops.jpeg(img, 60) - ops.jpeg(img, 60)).max() == 0  # libjpeg: integer quality
    assert not np.allclose(a * 255, np.rint(a * 255), atol=1e-3)  # not rounded to 8 bits
    errs = [np.abs(jpeg_dct(img, q) - img).mean() for q in (30, 60, 95)]
    assert errs[0] > errs[1] > errs[2] > 0


def test_dct_jpeg_pads_with_black_to_a_multiple_of_16() -> None:
    # a flat light image 20 px tall: the second block row shares its 8x8 blocks with black
    # padding, so the bottom rows ring while the top 16 rows stay flat
    img = np.full((20, 32, 3), 0.8, np.float32)
    out = jpeg_dct(img, 50)
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.abs(out[:16] - out[0, 0]).max() < 1e-4
    assert np.abs(out[16:] - 0.8).max() > 5 / 255


def test_chroma_is_subsampled_and_repeated_over_2x2() -> None:
    # a constant-luma image whose colour changes per pixel: the output colour is constant
    # over each aligned 2x2 cell (average pooling, then pixel repetition)
    rng = np.random.default_rng(2)
    img = np.clip(0.5 + 0.1 * rng.standard_normal((16, 16, 3)), 0, 1).astype(np.float32)
    out = jpeg_dct(img, 95).astype(np.float64) * 255.0
    r, g, b = out[..., 0], out[..., 1], out[..., 2]
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    assert np.abs(cb[0::2, 0::2] - cb[1::2, 1::2]).max() < 0.05
    assert np.abs(cb[0::2, 0::2] - cb[0::2, 1::2]).max() < 0.05


# ------------------------------------------------------------------------------ resizing


@pytest.mark.parametrize("size", [(13, 29), (40, 50), (61, 97), (24, 32)])
def test_area_pool_resize_equals_torch_area(size: tuple[int, int]) -> None:
    img = np.random.default_rng(3).random((24, 32, 3), dtype=np.float32)
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=size, mode="area")
    assert np.abs(ops.resize_area_pool(img, size) - ref[0].permute(1, 2, 0).numpy()).max() < 1e-5


# ------------------------------------------------------------------------------ pipelines


def test_realesrgan_defaults_use_the_basicsr_jpeg_and_area() -> None:
    hr = smooth_gray(64, 64)
    cfg = RealESRGANConfig()
    assert cfg.jpeg_backend == "dct" and cfg.torch_area
    lr, p = RealESRGANDegradation(cfg)(hr, np.random.default_rng(4), 4)
    assert p["jpeg_backend"] == "dct" and isinstance(p["jpeg1"], float)
    lr2, _ = RealESRGANDegradation(cfg)(hr, np.random.default_rng(4), 4)
    assert np.array_equal(lr, lr2)
    old = RealESRGANConfig(jpeg_backend="libjpeg", torch_area=False)
    _, p_old = RealESRGANDegradation(old)(hr, np.random.default_rng(4), 4)
    assert isinstance(p_old["jpeg1"], int)
    with pytest.raises(ValueError, match="jpeg_backend"):
        RealESRGANDegradation(RealESRGANConfig(jpeg_backend="nope"))(hr, np.random.default_rng(0), 4)


# ------------------------------------------------------------------------------ ISP noise


def test_isp_noise_is_signal_dependent_correlated_noise_around_the_input() -> None:
    img = smooth_gray(64, 64, 5)
    img[:, 32:] = np.clip(img[:, 32:] * 0.5 + 0.35, 0, 1)  # a brighter right half
    rng = np.random.default_rng(6)
    resid, infos = [], []
    for _ in range(6):
        out, info = ops.isp_noise(rng, img)
        assert out.shape == img.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        resid.append(out.astype(np.float64) - img)
        infos.append(info)
    for r, info in zip(resid, infos, strict=True):
        assert 1e-4 <= info["shot"] <= 1.2e-2 and 1.9 <= info["r_gain"] <= 2.4 and 1.5 <= info["b_gain"] <= 1.9
        assert abs(r.mean()) < 0.02  # noise around the input, not a colour or tone shift
    r = np.concatenate([x[8:-8, 8:-8] for x in resid], axis=1)
    assert r.std() > 1e-3
    # demosaicing spreads each raw sample over neighbours: horizontally adjacent residuals
    # correlate (white noise would give ~0), and the colour matrix correlates the channels
    lag = np.corrcoef(r[:, :-1, 1].ravel(), r[:, 1:, 1].ravel())[0, 1]
    assert lag > 0.2
    assert abs(np.corrcoef(r[..., 0].ravel(), r[..., 2].ravel())[0, 1]) > 0.05  # M^-1 mixes the channels
    # odd sizes work (the mosaic is padded and cropped back)
    assert ops.isp_noise(np.random.default_rng(0), img[:31, :45])[0].shape == (31, 45, 3)


def test_isp_noise_is_applied_with_its_probability_and_reproducibly() -> None:
    hr = smooth_gray(64, 64, 7)
    deg = BSRGANDegradation(BSRGANConfig())
    n, applied = 240, 0
    for s in range(n):
        _, p = deg(hr, np.random.default_rng(s), 4)
        isp = [st for st in p["steps"] if st["op"] == "isp"]
        assert len(isp) == 1 and isp[0]["applied"] == isp[0]["drawn"]
        applied += isp[0]["applied"]
    assert abs(applied / n - 0.25) < 0.08  # binomial std 0.028
    # same seed -> same bytes, with the ISP slot applied
    seed = next(
        s for s in range(n) if any(st.get("applied") for st in deg(hr, np.random.default_rng(s), 4)[1]["steps"])
    )
    a, _ = deg(hr, np.random.default_rng(seed), 4)
    b, _ = deg(hr, np.random.default_rng(seed), 4)
    assert np.array_equal(a, b)
    # isp_noise=False: the slot is drawn and recorded but leaves the image alone
    off = BSRGANDegradation(BSRGANConfig(isp_noise=False))
    c, p = off(hr, np.random.default_rng(seed), 4)
    st = next(st for st in p["steps"] if st["op"] == "isp")
    assert st["drawn"] and not st["applied"]
    assert not np.array_equal(a, c)


def test_bsrgan_plus_applies_isp_with_p_0_1() -> None:
    hr = smooth_gray(64, 64, 8)
    deg = BSRGANDegradation(BSRGANConfig(), plus=True)
    counts = [
        sum(st.get("applied", False) for st in deg(hr, np.random.default_rng(s), 4)[1]["steps"] if st["op"] == "isp")
        for s in range(120)
    ]
    rate = np.mean(counts) / 2  # two ISP slots per sample
    assert 0.04 < rate < 0.17  # p = 0.1, binomial std 0.019


# ------------------------------------------------------------------------------ benchmark statistics


def test_compare_benchmark_statistics_measure_what_they_claim() -> None:
    from tests.bench_scripts import load_script

    dc = load_script("degradation_compare")
    rng = np.random.default_rng(9)
    flat = np.full((96, 128), 120.0)
    assert abs(dc.noise_sigma(flat + 5.0 * rng.standard_normal(flat.shape)) - 5.0) < 0.3
    assert dc.noise_sigma(flat) == 0.0
    img = smooth_gray(96, 128, 9)
    y_clean = dc.y_channel(ops.to_uint8(img))
    y_jpeg = dc.y_channel(ops.to_uint8(ops.jpeg(img, 20)))
    assert dc.blockiness(y_jpeg) > dc.blockiness(y_clean) > 0.5
    assert dc.parse_sets(["pass2.jpeg_range=[60, 95]", "jpeg_backend=libjpeg"]) == {
        "pass2": {"jpeg_range": [60, 95]},
        "jpeg_backend": "libjpeg",
    }
    crop = dc.fit_crop(np.zeros((900, 600, 3), np.uint8))  # portrait -> turned, 768x512
    assert crop.shape == (512, 768, 3)
