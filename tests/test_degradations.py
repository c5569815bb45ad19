"""Degradation pipelines: kernels, noise, JPEG, ranges, determinism, sizes, and that the
synthetic LR really is blurrier and noisier than a clean bicubic downscale."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tokensr.data import (
    BSRGANConfig,
    BSRGANDegradation,
    DegradationPass,
    RealESRGANConfig,
    RealESRGANDegradation,
    build_degradation,
    ops,
)
from tokensr.data import kernels as K
from tokensr.errors import OptionError

PIPELINES = ("realesrgan", "bsrgan", "bsrgan_plus")


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-but-detailed test image: sum of random sinusoids plus fine noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fy, fx = rng.uniform(0.02, 0.4, size=2)
            img[..., c] += np.sin(fy * yy + fx * xx + rng.uniform(0, 6.28)).astype(np.float32)
    img = 0.5 + 0.1 * img + 0.02 * rng.standard_normal((h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 1)


# ------------------------------------------------------------------------------ kernels


@pytest.mark.parametrize("size", [7, 13, 21])
def test_every_kernel_family_sums_to_one_at_its_size(size: int) -> None:
    ks = [
        K.gaussian_kernel(size, 1.3),
        K.gaussian_kernel(size, 2.5, 0.4, 0.7),
        K.generalized_gaussian_kernel(size, 1.5, 0.8, 0.3, 0.6),
        K.plateau_kernel(size, 1.2, None, 0.0, 1.7),
        K.sinc_kernel(size, math.pi / 4),
        K.covariance_gaussian_kernel(size, 3.0, 0.5, 1.0),
        K.fspecial_gaussian(size, 1.1),
        K.shifted_gaussian(size, 1.0, 1.5),
    ]
    for k in ks:
        assert k.shape == (size, size)
        assert abs(k.sum() - 1.0) < 1e-9


def test_mixed_kernel_draws_respect_size_and_type() -> None:
    r = K.MixedKernelRanges()
    seen = set()
    for s in range(300):
        k, p = K.mixed_kernel(np.random.default_rng(s), r)
        assert p["size"] in range(7, 22, 2)
        assert k.shape == (p["size"], p["size"])
        assert abs(k.sum() - 1.0) < 1e-9
        seen.add(p["type"])
        if p["type"] == "sinc":
            lo = math.pi / 3 if p["size"] < 13 else math.pi / 5
            assert lo <= p["omega_c"] <= math.pi
        else:
            assert 0.2 <= p["sigma_x"] <= 3.0 and 0.2 <= p["sigma_y"] <= 3.0
            if p["type"].startswith("generalized"):
                assert 0.5 <= p["beta"] <= 4.0
            if p["type"].startswith("plateau"):
                assert 1.0 <= p["beta"] <= 2.0
    assert {"iso", "aniso", "sinc", "generalized_iso", "plateau_iso"} <= seen


def test_kernel_shapes_follow_their_parameters() -> None:
    # beta = 1 generalized Gaussian is the Gaussian
    g = K.gaussian_kernel(15, 2.0, 1.0, 0.4)
    assert np.allclose(K.generalized_gaussian_kernel(15, 2.0, 1.0, 0.4, 1.0), g)
    # variance of a wide-support Gaussian is sigma^2; anisotropy follows theta
    xx, yy = np.meshgrid(np.arange(-15, 16), np.arange(-15, 16))
    k = K.gaussian_kernel(31, 3.0, 1.0, 0.0)
    assert abs((k * xx**2).sum() - 9.0) < 1e-3 and abs((k * yy**2).sum() - 1.0) < 1e-3
    k90 = K.gaussian_kernel(31, 3.0, 1.0, math.pi / 2)
    assert abs((k90 * yy**2).sum() - 9.0) < 1e-3
    # plateau has a flatter top than the Gaussian of the same sigma
    p = K.plateau_kernel(21, 2.0, None, 0.0, 2.0)
    gg = K.gaussian_kernel(21, 2.0)
    assert p[10, 11] / p[10, 10] > gg[10, 11] / gg[10, 10]
    # sinc has negative lobes (ringing); shifted Gaussian's centre of mass is the shift
    assert K.sinc_kernel(21, math.pi / 4).min() < 0
    s = K.shifted_gaussian(25, 1.2, 1.5)
    ax = np.arange(-12, 13)
    assert abs((s.sum(0) * ax).sum() - 1.5) < 1e-6 and abs((s.sum(1) * ax).sum() - 1.5) < 1e-6
    # zero sigma -> identity
    ident = K.fspecial_gaussian(7, 0.0)
    assert ident[3, 3] == 1.0 and ident.sum() == 1.0


# ------------------------------------------------------------------------------ ops


def test_gaussian_and_poisson_noise_statistics() -> None:
    rng = np.random.default_rng(0)
    n = ops.gaussian_noise(rng, (200, 200, 3), 20.0, gray=False)
    assert abs(n.std() * 255 - 20.0) < 0.5 and abs(n.mean()) < 1e-3
    ng = ops.gaussian_noise(rng, (50, 60, 3), 5.0, gray=True)
    assert np.array_equal(ng[..., 0], ng[..., 2])
    img = textured(64, 64)
    pn = ops.poisson_noise(rng, img, 1.0, gray=False)
    pn3 = ops.poisson_noise(rng, img, 3.0, gray=False)
    assert 2.0 < pn3.std() / pn.std() < 4.0  # the scale multiplies the residual
    pg = ops.poisson_noise(rng, img, 1.0, gray=True)
    assert np.array_equal(pg[..., 0], pg[..., 1])


def test_jpeg_quality_orders_the_error() -> None:
    img = textured(64, 64, 3)
    err = [np.abs(ops.jpeg(img, q) - img).mean() for q in (30, 60, 95)]
    assert err[0] > err[1] > err[2] > 0
    out = ops.jpeg(img, 50)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.allclose(out * 255, np.rint(out * 255), atol=1e-4)


def test_separable_filter_equals_the_direct_2d_filter() -> None:
    import cv2

    rng = np.random.default_rng(5)
    img = rng.random((40, 56, 3), dtype=np.float32)
    kernels = [K.mixed_kernel(rng, K.MixedKernelRanges())[0] for _ in range(12)]
    kernels += [K.sinc_kernel(13, 1.2), rng.random((7, 7))]  # a full-rank kernel takes the 2-D path
    for k in kernels:
        direct = cv2.filter2D(img, cv2.CV_32F, k.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(ops.filter2d(img, k) - direct).max() < 1e-5


def test_usm_sharpen_raises_local_contrast_only_where_detail_is() -> None:
    img = np.full((64, 64, 3), 0.5, np.float32)
    img[:, 32:] = 0.7  # one edge
    out = ops.usm_sharpen(img)
    assert np.allclose(out[:, :8], 0.5, atol=1e-6)  # flat far from the edge: unchanged
    assert out[:, 31].mean() < 0.5 and out[:, 32].mean() > 0.7  # overshoot at the edge


def test_matlab_imresize_keeps_constants_and_sizes() -> None:
    img = np.full((20, 30, 3), 0.25, np.float32)
    for hw in ((5, 7), (40, 60), (20, 30)):
        out = ops.imresize_matlab(img, hw)
        assert out.shape == (*hw, 3) and np.allclose(out, 0.25, atol=1e-6)


# ------------------------------------------------------------------------------ pipelines


def draw_params(name: str, n: int, size: int = 32, scale: int = 4, cfg: object = None) -> list[dict]:
    deg = build_degradation(name) if cfg is None else cfg
    hr = textured(size, size)
    return [deg(hr, np.random.default_rng(s), scale)[1] for s in range(n)]


def test_realesrgan_drawn_values_stay_in_the_x4plus_ranges() -> None:
    ps = draw_params("realesrgan", 120)
    for p in ps:
        json.dumps(p)
        for key, sig, poi in (("noise1", (1, 30), (0.05, 3)), ("noise2", (1, 25), (0.05, 2.5))):
            n = p[key]
            if n["type"] == "gaussian":
                assert sig[0] <= n["sigma"] <= sig[1]
            else:
                assert poi[0] <= n["scale"] <= poi[1]
        assert 30 <= p["jpeg1"] <= 95 and 30 <= p["jpeg2"] <= 95
        assert 0.15 <= p["resize1"]["scale"] <= 1.5 and 0.3 <= p["resize2"]["scale"] <= 1.2
        assert p["kernel1"]["size"] in range(7, 22, 2) and p["kernel2"]["size"] in range(7, 22, 2)
        if p["kernel2"]["type"] != "sinc":
            assert p["kernel2"]["sigma_x"] <= 1.5
    types = [p["noise1"]["type"] for p in ps]
    assert 0.3 < types.count("gaussian") / len(types) < 0.7
    assert {p["final_order"] for p in ps} == {"resize+sinc,jpeg", "jpeg,resize+sinc"}
    assert any(p["final_sinc"] is None for p in ps) and any(p["final_sinc"] for p in ps)


def test_custom_ranges_are_obeyed() -> None:
    cfg = RealESRGANConfig(
        pass1=DegradationPass(gaussian_noise_prob=1.0, noise_range=(7.0, 7.0), jpeg_range=(55, 55)),
        pass2=DegradationPass(gaussian_noise_prob=0.0, poisson_scale_range=(0.5, 0.5), jpeg_range=(88, 88)),
    )
    for p in draw_params("realesrgan", 10, cfg=RealESRGANDegradation(cfg)):
        assert p["noise1"] == {"type": "gaussian", "sigma": 7.0, "gray": p["noise1"]["gray"]}
        assert p["noise2"]["type"] == "poisson" and p["noise2"]["scale"] == 0.5
        assert p["jpeg1"] == 55 and p["jpeg2"] == 88
    bcfg = BSRGANConfig(noise_level=(9, 9), jpeg_range=(40, 40))
    for p in draw_params("bsrgan", 10, cfg=BSRGANDegradation(bcfg)):
        for st in p["steps"]:
            if st["op"] == "gaussian_noise":
                assert st["level"] == 9
            if st["op"] in ("jpeg", "final_jpeg") and st["quality"] is not None:
                assert st["quality"] == 40


@pytest.mark.parametrize("name", ["bsrgan", "bsrgan_plus"])
def test_bsrgan_drawn_values_stay_in_range(name: str) -> None:
    ps = draw_params(name, 60)
    for p in ps:
        json.dumps(p)
        ops_seen = [st["op"] for st in p["steps"]]
        assert ops_seen[-1] == "final_jpeg"
        for st in p["steps"]:
            if st["op"] in ("gaussian_noise", "speckle") and "level" in st:
                assert 2 <= st["level"] <= 25
            if st["op"] in ("jpeg", "final_jpeg") and st.get("quality") is not None:
                assert 30 <= st["quality"] <= 95 and isinstance(st["quality"], int)
            if st["op"] == "blur":
                assert st["size"] in range(7, 26, 2)
        if name == "bsrgan":
            assert sorted(p["order"]) == list(range(7))
            assert p["order"].index(2) < p["order"].index(3)  # downsample-2 before -3
        else:
            assert sorted(p["order"]) == list(range(13))
            if not p["shuffled"]:
                assert p["order"][:2] == [0, 1] and p["order"][6:9] == [6, 7, 8]


@pytest.mark.parametrize("name", PIPELINES)
def test_same_seed_same_bytes_other_seed_differs(name: str) -> None:
    deg = build_degradation(name)
    hr = textured(48, 48, 1)
    a, pa = deg(hr, np.random.default_rng(123), 4)
    b, pb = deg(hr, np.random.default_rng(123), 4)
    c, _ = deg(hr, np.random.default_rng(124), 4)
    assert a.tobytes() == b.tobytes() and json.dumps(pa) == json.dumps(pb)
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("name", PIPELINES)
@pytest.mark.parametrize("scale,hw", [(4, (64, 44)), (2, (30, 52)), (4, (16, 16))])
def test_lr_size_is_exactly_hr_over_scale(name: str, scale: int, hw: tuple[int, int]) -> None:
    deg = build_degradation(name)
    for s in range(4):
        lr, p = deg(textured(*hw, s), np.random.default_rng(s), scale)
        assert lr.shape == (hw[0] // scale, hw[1] // scale, 3) and lr.dtype == np.float32
        assert p["lr_hw"] == [hw[0] // scale, hw[1] // scale]
        assert lr.min() >= 0 and lr.max() <= 1
        assert np.array_equal(lr * 255, np.rint(lr * 255).astype(np.float32))  # 8-bit grid
    with pytest.raises(ValueError):
        deg(textured(hw[0] + 1, hw[1]), np.random.default_rng(0), scale)


def test_a_mapping_overrides_any_range_of_a_pipeline() -> None:
    spec = {
        "name": "realesrgan",
        "final_sinc_prob": 0.0,
        "pass2": {"jpeg_range": [90, 95], "gaussian_noise_prob": 1.0},
        "kernel1": {"sinc_prob": 0.0},
    }
    deg = build_degradation(spec)
    assert isinstance(deg, RealESRGANDegradation)
    cfg = deg.cfg
    assert cfg.final_sinc_prob == 0.0 and cfg.pass2.jpeg_range == (90, 95) and cfg.kernel1.sinc_prob == 0.0
    assert cfg.pass1 == RealESRGANConfig().pass1  # untouched sections keep the published values
    same = build_degradation(dict(spec))
    hr = textured(64, 64, 0)
    assert np.array_equal(deg(hr, np.random.default_rng(1), 4)[0], same(hr, np.random.default_rng(1), 4)[0])
    plus = build_degradation({"name": "bsrgan_plus", "jpeg_range": [80, 95]})
    assert isinstance(plus, BSRGANDegradation) and plus.plus
    with pytest.raises(OptionError, match="pass2.jpeg_rnage.*did you mean 'jpeg_range'"):
        build_degradation({"name": "realesrgan", "pass2": {"jpeg_rnage": [1, 2]}})
    with pytest.raises(OptionError, match="needs a 'name'"):
        build_degradation({"final_sinc_prob": 0.5})


def test_unknown_pipeline_is_an_option_error() -> None:
    with pytest.raises(OptionError):
        build_degradation("nope")


def rise_width(profile: np.ndarray) -> float:
    """10-90 % rise distance (pixels) of a monotone-ish step profile."""
    p = (profile - profile[:3].mean()) / (profile[-3:].mean() - profile[:3].mean())
    x = np.arange(len(p), dtype=np.float64)
    return float(np.interp(0.9, np.maximum.accumulate(p), x) - np.interp(0.1, np.maximum.accumulate(p), x))


@pytest.mark.parametrize("name", PIPELINES)
def test_degraded_lr_is_blurrier_and_noisier_than_bicubic(name: str) -> None:
    deg = build_degradation(name)
    size, scale = 96, 4
    # a vertical step edge (blur probe) and a smooth ramp (noise probe), both with slight texture
    step = np.full((size, size, 3), 0.3, np.float32)
    step[:, size // 2 :] = 0.7
    step += 0.004 * textured(size, size, 5) - 0.002
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ramp = np.repeat((0.25 + 0.5 * (xx + yy) / (2 * size))[..., None], 3, axis=2)

    def bicubic(img: np.ndarray) -> np.ndarray:
        return ops.quantize(ops.imresize_matlab(img, (size // scale, size // scale)))

    def noise_level(lr: np.ndarray) -> float:
        g = lr.mean(axis=2).astype(np.float64)
        lap = g[1:-1, 1:-1] * 4 - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        return float(np.abs(lap).mean())

    def edge_width(lr: np.ndarray) -> float:
        return rise_width(lr.mean(axis=(0, 2)).astype(np.float64))

    ref_w, ref_n = edge_width(bicubic(step)), noise_level(bicubic(ramp))
    widths, noises = [], []
    for s in range(24):
        widths.append(edge_width(deg(step, np.random.default_rng(s), scale)[0]))
        noises.append(noise_level(deg(ramp, np.random.default_rng(1000 + s), scale)[0]))
    assert np.mean(widths) > ref_w * 1.2
    assert np.mean(noises) > ref_n * 3 + 1e-3
