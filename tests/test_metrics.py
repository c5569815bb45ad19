"""tokensr.metrics against reference values.

The reference numbers below were computed once with BasicSR 1.4.2's own metric functions
(``calculate_psnr``, ``calculate_ssim`` with ``test_y_channel=True``, ``calculate_niqe``,
``matlab_functions.imresize``) on the same synthetic images, outside this repository; only
the numbers are kept here. The synthetic images use integer arithmetic only, so they are
bit-identical on every platform and numpy version.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from tokensr.cli import main
from tokensr.errors import ImageReadError, OptionError
from tokensr.metrics import (
    MetricSuite,
    imresize,
    ms_ssim,
    niqe,
    psnr,
    quantize,
    read_rgb,
    rgb_to_y,
    ssim,
)

SHARED_EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval" / "set14_realesrgan_x4"


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """Textured uint8 RGB test image (gradient + checkerboard + hash noise)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int64)
    v = (xx * 73856093) ^ (yy * 19349663) ^ (seed * 83492791)
    noise = ((v * 2654435761) % (1 << 32)) >> 24
    base = xx * 160 // w + yy * 60 // h
    checker = ((xx // 24 + yy // 16 + seed) % 2) * 40
    out = np.empty((h, w, 3), dtype=np.int64)
    for c in range(3):
        out[..., c] = base + checker + (noise - 128) // (3 + c) + 12 * c
    return np.clip(out, 0, 255).astype(np.uint8)


def degraded(img: np.ndarray, seed: int) -> np.ndarray:
    """3x3 box blur plus a little hash noise, in integers."""
    a = np.pad(img.astype(np.int64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    box = sum(a[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) // 9
    noisy = synthetic_image(h, w, seed + 1).astype(np.int64)
    return np.clip(box + (noisy - 128) // 16, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    hr = synthetic_image(120, 136, 3)
    return degraded(hr, 7), hr


# --- BasicSR 1.4.2 reference values --------------------------------------------------------


def test_psnr_ssim_y_match_basicsr(pair: tuple[np.ndarray, np.ndarray]) -> None:
    sr, hr = pair
    assert psnr(sr, hr, crop_border=4) == pytest.approx(23.355435429204118, abs=1e-4)
    assert ssim(sr, hr, crop_border=4) == pytest.approx(0.3862051135934902, abs=1e-5)


def test_psnr_ssim_rgb_match_basicsr(pair: tuple[np.ndarray, np.ndarray]) -> None:
    sr, hr = pair
    assert psnr(sr, hr, crop_border=0, y_channel=False) == pytest.approx(22.181975297319983, abs=1e-6)
    assert ssim(sr, hr, crop_border=0, y_channel=False) == pytest.approx(0.38387749096697027, abs=1e-6)


def test_niqe_matches_basicsr() -> None:
    big = synthetic_image(200, 296, 11)
    assert niqe(big) == pytest.approx(43.1617416395714, abs=0.01)
    assert niqe(degraded(big, 5), crop_border=4) == pytest.approx(8.83444075529859, abs=0.01)


def test_imresize_matches_basicsr_matlab_imresize() -> None:
    x = synthetic_image(30, 22, 2)[..., 0].astype(np.float64) / 255.0
    half = imresize(x, 0.5)
    assert half.shape == (15, 11)
    assert half.sum() == pytest.approx(80.19902095012367, abs=1e-4)
    np.testing.assert_allclose(
        half[:2, :3], [[0.07787911593914032, 0.029627004638314247, 0.1407843381166458],
                       [0.033428896218538284, 0.07921662926673889, 0.06234149634838104]], atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(half[-1, -2:], [0.9437341690063477, 0.9489953517913818], atol=1e-6)
    up = imresize(x, 2.0)
    assert up.shape == (60, 44)
    assert up.sum() == pytest.approx(1283.1843398560304, abs=1e-3)
    np.testing.assert_allclose(
        up[:2, :3], [[0.1721430867910385, 0.1564951092004776, 0.12519913911819458],
                     [0.14260877668857574, 0.12819156050682068, 0.09935709834098816]], atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(up[-1, -2:], [1.0107795000076294, 1.0116382837295532], atol=1e-6)
    third = imresize(x, 1 / 3)
    assert third.shape == (10, 8)
    np.testing.assert_allclose(
        third[:2, :3], [[0.05144422501325607, 0.09282658994197845, 0.20689517259597778],
                        [0.06640726327896118, 0.1291816383600235, 0.22202438116073608]], atol=1e-6)  # fmt: skip


@pytest.mark.skipif(not SHARED_EVAL.is_dir(), reason="needs ../shared/data/eval")
@pytest.mark.parametrize(
    "name, ref_psnr, ref_ssim, ref_niqe_sr, ref_niqe_hr",
    [
        ("baboon", 21.563890197315708, 0.3628177229105197, 8.825069767149056, 5.729572592446565),
        ("face", 26.56952969130472, 0.623122021393527, 13.849607031055676, 8.492999186041816),
        ("ppt3", 19.417504160631555, 0.6994744447424274, 8.111725367498344, 5.447663145765526),
    ],
)
def test_real_images_match_basicsr(
    name: str, ref_psnr: float, ref_ssim: float, ref_niqe_sr: float, ref_niqe_hr: float
) -> None:
    hr = read_rgb(SHARED_EVAL / "hr" / f"{name}.png")
    lr = read_rgb(SHARED_EVAL / "lr" / f"{name}.png")
    sr = np.clip(np.round(imresize(lr.astype(np.float64), 4)), 0, 255).astype(np.uint8)
    assert psnr(sr, hr, 4) == pytest.approx(ref_psnr, abs=1e-4)
    assert ssim(sr, hr, 4) == pytest.approx(ref_ssim, abs=1e-5)
    assert niqe(sr, 4) == pytest.approx(ref_niqe_sr, abs=0.01)
    # face has only 4 blocks: the score is sensitive to float rounding, and still matches.
    assert niqe(hr) == pytest.approx(ref_niqe_hr, abs=0.01)


# --- conventions and behaviour --------------------------------------------------------------


def test_y_channel_is_matlab_bt601() -> None:
    colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(colours)[0], [16.0, 235.0, 81.481, 144.553, 40.966], atol=1e-9)


def test_identical_images() -> None:
    img = synthetic_image(40, 50, 1)
    assert psnr(img, img) == math.inf
    assert ssim(img, img, 4) == pytest.approx(1.0)


def test_psnr_known_mse() -> None:
    a = np.full((20, 20, 3), 100, dtype=np.uint8)
    b = a.copy()
    b[..., :] = 110  # every RGB channel off by 10 -> Y off by 10 * (65.481 + 128.553 + 24.966) / 255
    dy = 10 * 219.0 / 255.0
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / dy**2))
    assert psnr(a, b, y_channel=False) == pytest.approx(10 * math.log10(255**2 / 100))


def test_crop_border_ignores_the_border(pair: tuple[np.ndarray, np.ndarray]) -> None:
    sr, hr = pair
    spoiled = sr.copy()
    spoiled[:4] = 0
    spoiled[:, -4:] = 255
    assert psnr(spoiled, hr, 4) == psnr(sr, hr, 4)
    assert psnr(spoiled, hr, 0) < psnr(sr, hr, 0)


def test_tensor_and_array_inputs_agree(pair: tuple[np.ndarray, np.ndarray]) -> None:
    sr, hr = pair
    t = torch.from_numpy(sr.astype(np.float32) / 255).permute(2, 0, 1)[None]
    assert psnr(t, hr, 4) == pytest.approx(psnr(sr, hr, 4), abs=1e-4)
    np.testing.assert_array_equal(quantize(t), sr)
    assert ssim(Image.fromarray(sr), Image.fromarray(hr), 4) == pytest.approx(ssim(sr, hr, 4))


def test_errors_are_clear(pair: tuple[np.ndarray, np.ndarray]) -> None:
    sr, hr = pair
    with pytest.raises(OptionError, match="sizes differ"):
        psnr(sr[:-1], hr)
    with pytest.raises(OptionError, match="too small"):
        psnr(sr[:8, :8], hr[:8, :8], crop_border=4)
    with pytest.raises(OptionError, match="two whole 96x96 blocks"):
        niqe(synthetic_image(100, 150, 0))
    with pytest.raises(OptionError, match="176"):
        ms_ssim(sr, hr)


def test_ms_ssim() -> None:
    pytest.importorskip("torchmetrics")
    hr = synthetic_image(192, 200, 4)
    assert ms_ssim(hr, hr, 4) == pytest.approx(1.0, abs=1e-6)
    worse = ms_ssim(degraded(hr, 1), hr, 4)
    assert 0.0 < worse < 0.999
    blurrier = np.asarray(Image.fromarray(hr).resize((50, 48), Image.BICUBIC).resize((200, 192), Image.BICUBIC))
    assert ms_ssim(blurrier, hr, 4) < 0.999


def test_niqe_prefers_the_clean_image() -> None:
    # Heavy noise destroys natural-scene statistics: NIQE must rise.
    hr = np.asarray(Image.fromarray(synthetic_image(240, 240, 9)).filter(ImageFilter.GaussianBlur(1)))
    noisy = np.clip(hr.astype(np.int64) + (synthetic_image(240, 240, 2).astype(np.int64) - 128) // 2, 0, 255)
    assert niqe(noisy.astype(np.uint8)) > niqe(hr)


def test_suite_records_nan_for_too_small_images(caplog: pytest.LogCaptureFixture) -> None:
    suite = MetricSuite(["psnr", "niqe"], crop_border=4)
    small = synthetic_image(60, 60, 0)
    out = suite(small, small)
    assert out["psnr"] == math.inf and math.isnan(out["niqe"])
    assert suite(small).keys() == {"niqe"}  # no reference -> only no-reference metrics
    assert "recorded as NaN" in caplog.text
    with pytest.raises(OptionError, match="unknown metric"):
        MetricSuite(["psnr", "brisque"])


def test_read_rgb_decodes_by_content_and_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([synthetic_image(10, 12, 0), np.full((10, 12), 7, np.uint8)])
    path = tmp_path / "really_a_png.jpeg"
    Image.fromarray(rgba, "RGBA").save(path, format="PNG")
    np.testing.assert_array_equal(read_rgb(path), rgba[..., :3])
    gray = tmp_path / "g.png"
    Image.fromarray(rgba[..., 0]).save(gray)
    assert read_rgb(gray).shape == (10, 12, 3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError):
        read_rgb(bad)


# --- CLI -----------------------------------------------------------------------------------


def test_cli_metrics_pair_and_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sr_dir, hr_dir = tmp_path / "sr", tmp_path / "hr"
    sr_dir.mkdir()
    hr_dir.mkdir()
    for i in range(2):
        hr = synthetic_image(104, 200, i)
        Image.fromarray(hr).save(hr_dir / f"im{i}.png")
        Image.fromarray(degraded(hr, i)).save(sr_dir / f"im{i}.png")
    out_csv = tmp_path / "m.csv"
    assert main(["metrics", str(sr_dir), str(hr_dir), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "PSNR-Y" in text and "mean" in text
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["im0", "im1"]
    expected = psnr(read_rgb(sr_dir / "im1.png"), read_rgb(hr_dir / "im1.png"), 4)
    assert float(rows[1]["psnr"]) == pytest.approx(expected, abs=1e-5)
    assert math.isfinite(float(rows[0]["niqe"]))

    assert main(["metrics", str(sr_dir / "im0.png"), "--crop-border", "0"]) == 0
    assert "NIQE" in capsys.readouterr().out
    assert main(["metrics", str(sr_dir / "im0.png"), "--metrics", "psnr"]) == 1
    assert "need a reference" in capsys.readouterr().err
    (hr_dir / "im1.png").unlink()
    assert main(["metrics", str(sr_dir), str(hr_dir)]) == 1
    assert "no HR image" in capsys.readouterr().err


# --- LPIPS / DISTS with random weights in the torchvision / release file formats ------------


def _random_backbone(net: str) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's key format (features.N.*, plus classifier keys to ignore)."""
    from tokensr.metrics.perceptual import alexnet_features, vgg16_features

    torch.manual_seed(0)
    feats = vgg16_features() if net == "vgg" else alexnet_features()
    state = {f"features.{k}": v.clone() for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    return state


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("metric_weights")
    torch.save(_random_backbone("alex"), folder / "alexnet-owt-7be5be79.pth")
    torch.save(_random_backbone("vgg"), folder / "vgg16.pth")  # the alternative accepted name
    g = torch.Generator().manual_seed(1)
    for net, chans in (("alex", (64, 192, 384, 256, 256)), ("vgg", (64, 128, 256, 512, 512))):
        heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(chans)}
        torch.save(heads, folder / f"lpips_{net}.pth")
    n = 3 + 64 + 128 + 256 + 512 + 512
    torch.save(
        {"alpha": torch.rand(1, n, 1, 1, generator=g), "beta": torch.rand(1, n, 1, 1, generator=g)},
        folder / "dists_weights.pt",
    )
    return folder


def _lpips_by_hand(x: torch.Tensor, y: torch.Tensor, folder: Path) -> float:
    """LPIPS-Alex written out layer by layer from the raw state dicts (an independent path)."""
    import torch.nn.functional as F

    bb = torch.load(folder / "alexnet-owt-7be5be79.pth", weights_only=True)
    heads = torch.load(folder / "lpips_alex.pth", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def acts(img: torch.Tensor) -> list[torch.Tensor]:
        h = (img * 2 - 1 - shift) / scale
        conv = lambda t, i, **kw: F.conv2d(t, bb[f"features.{i}.weight"], bb[f"features.{i}.bias"], **kw)  # noqa: E731
        r1 = F.relu(conv(h, 0, stride=4, padding=2))
        r2 = F.relu(conv(F.max_pool2d(r1, 3, 2), 3, padding=2))
        r3 = F.relu(conv(F.max_pool2d(r2, 3, 2), 6, padding=1))
        r4 = F.relu(conv(r3, 8, padding=1))
        r5 = F.relu(conv(r4, 10, padding=1))
        return [r1, r2, r3, r4, r5]

    total = 0.0
    for i, (a, b) in enumerate(zip(acts(x), acts(y), strict=False)):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{i}.model.1.weight"].view(1, -1, 1, 1)
        total += float(((na - nb) ** 2 * w).sum(1).mean())
    return total


def test_lpips_loads_local_files_and_scores(weights_dir: Path) -> None:
    from tokensr.metrics import LPIPS

    a, b = synthetic_image(64, 72, 1), degraded(synthetic_image(64, 72, 1), 3)
    alex = LPIPS("alex", weights_dir)
    assert alex.score(a, a) == pytest.approx(0.0, abs=1e-6)
    d = alex.score(a, b)
    assert d > 0 and d == pytest.approx(alex.score(b, a), rel=1e-5)
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 255
    assert d == pytest.approx(_lpips_by_hand(ta, tb, weights_dir), rel=1e-4)
    vgg = LPIPS("vgg", weights_dir)
    assert vgg.score(a, b) > vgg.score(a, a)


def test_dists_loads_local_files_and_scores(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tokensr.metrics import DISTS
    from tokensr.metrics.perceptual import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(weights_dir))  # found through the environment variable
    model = DISTS()
    a = synthetic_image(64, 64, 2)
    assert model.score(a, a) == pytest.approx(0.0, abs=1e-5)
    assert model.score(a, degraded(a, 1)) > 1e-3


def test_perceptual_metrics_name_the_missing_file(
    tmp_path: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokensr.metrics import DISTS, LPIPS, WeightsNotFoundError
    from tokensr.metrics.perceptual import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth .*--metric-weights"):
        LPIPS("vgg")
    only_backbone = tmp_path / "w"
    only_backbone.mkdir()
    (only_backbone / "alexnet.pth").write_bytes((weights_dir / "alexnet-owt-7be5be79.pth").read_bytes())
    with pytest.raises(WeightsNotFoundError, match=r"lpips_alex.pth .*in .*w"):
        LPIPS("alex", only_backbone)
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth"):
        DISTS(only_backbone)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    torch.save({"features.0.weight": torch.zeros(1)}, wrong / "alexnet.pth")
    torch.save({}, wrong / "lpips_alex.pth")
    with pytest.raises(OptionError, match="not a matching backbone"):
        LPIPS("alex", wrong)
