"""UGTSR as an SR method: tiny end-to-end runs through build(), the method table and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import tiny_tokenizer

from tokensr.errors import OptionError
from tokensr.methods import build_method
from tokensr.methods.ugtsr.method import UGTSRMethod, build
from tokensr.methods.ugtsr.model import UGTSR


def _save(scale: int, folder: Path) -> Path:
    model = UGTSR.create(tiny_tokenizer(), scale=scale, preset="tiny", top_k=3, align_attention=True)
    torch.manual_seed(scale)
    with torch.no_grad():  # make the zero-initialised parts do something
        model.fusion.out.weight.normal_(std=0.5)  # type: ignore[union-attr]
        model.align["0"].proj.weight.normal_(std=0.5)  # type: ignore[union-attr]
        for m in model.inject.values():
            m.weight.normal_(std=0.3)  # type: ignore[operator]
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def x4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(4, tmp_path_factory.mktemp("ugtsr") / "x4")


@pytest.fixture(scope="module")
def x2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(2, tmp_path_factory.mktemp("ugtsr") / "x2")


@pytest.mark.parametrize("scale", [4, 2])
def test_end_to_end_any_size_deterministic(scale: int, x4: Path, x2: Path) -> None:
    folder = x4 if scale == 4 else x2
    method = build_method("ugtsr", scale=scale, weights=str(folder))
    assert isinstance(method, UGTSRMethod) and method.name == "ugtsr" and method.scale == scale
    assert method.top_k == 3
    lr = torch.rand(1, 3, 20, 27, generator=torch.Generator().manual_seed(0))
    a = method(lr)
    assert a.shape == (1, 3, 20 * scale, 27 * scale)
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    b = build(scale=scale, weights=str(folder))(lr)
    assert torch.equal(a, b)
    # a batch gives the same images as one at a time
    lr2 = torch.cat([lr, torch.rand(1, 3, 20, 27)])
    assert torch.allclose(method(lr2)[:1], a, atol=1e-5)


def test_top_k_option(x4: Path) -> None:
    lr = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    k3 = build(weights=str(x4))(lr)
    k1 = build(weights=str(x4), top_k="1")(lr)  # the benchmark passes strings
    assert k1.shape == k3.shape and not torch.equal(k1, k3)
    assert torch.equal(build(weights=str(x4), top_k=3)(lr), k3)
    with pytest.raises(OptionError, match="top_k"):
        build(weights=str(x4), top_k=5)
    with pytest.raises(OptionError):
        build(weights=str(x4), top_k="two")


def test_color_fix_option(x4: Path) -> None:
    """``color_fix`` corrects the decoded image towards the LR input's colours."""
    from tokensr.inference.colorfix import channel_stats, wavelet_decompose

    lr = torch.rand(1, 3, 10, 14) * 0.5 + 0.3
    plain = build(weights=str(x4), color_fix="none")(lr)
    adain = build(weights=str(x4), color_fix="adain")(lr)
    wave = build(weights=str(x4), color_fix="Wavelet")(lr)
    assert plain.shape == adain.shape == wave.shape == (1, 3, 40, 56)
    mean_lr, _ = channel_stats(lr)
    mean_plain, _ = channel_stats(plain)
    mean_adain, _ = channel_stats(adain)
    # AdaIN moves each channel's mean to the LR's (up to the final clamp)
    assert (mean_adain - mean_lr).abs().max() < 0.02 < (mean_plain - mean_lr).abs().max()
    # wavelet: the low frequencies become the (upsampled) LR's, the detail stays the model's
    up = torch.nn.functional.interpolate(lr, size=plain.shape[-2:], mode="bicubic", align_corners=False)
    low_err = lambda x: (wavelet_decompose(x)[1] - wavelet_decompose(up)[1]).abs().mean()  # noqa: E731
    assert low_err(wave) < 0.5 * low_err(plain)
    with pytest.raises(OptionError, match="option color_fix must be one of adain, wavelet, none"):
        build(weights=str(x4), color_fix="histogram")
    # color_levels: fewer wavelet levels follow the upsampled LR more closely
    up = torch.nn.functional.interpolate(lr, size=plain.shape[-2:], mode="bicubic", align_corners=False)
    shallow, deep = build(weights=str(x4), color_levels="1"), build(weights=str(x4), color_levels=6)
    assert (shallow.color_levels, deep.color_levels) == (1, 6)
    assert (shallow(lr) - up).abs().mean() < (deep(lr) - up).abs().mean()
    with pytest.raises(OptionError, match="color_levels"):
        build(weights=str(x4), color_levels="0")


def test_tiling(x4: Path) -> None:
    lr = torch.rand(1, 3, 21, 18, generator=torch.Generator().manual_seed(2))
    whole = build(weights=str(x4), tile=0)(lr)
    tiled = build(weights=str(x4), tile=12, tile_overlap=4)(lr)
    assert tiled.shape == whole.shape == (1, 3, 84, 72)
    assert torch.isfinite(tiled).all()
    # tiles see less context, so the two differ, but only somewhat
    assert (tiled - whole).abs().mean() < 0.2
    with pytest.raises(OptionError):
        build(weights=str(x4), tile=4)


def test_bundled_x4_runs() -> None:
    """The bundled ugtsr-small-x4 loads by default and upscales any size, in [0, 1]."""
    from tokensr.methods.ugtsr.method import COLOR_LEVELS

    method = build(scale=4)
    lr = torch.rand(1, 3, 13, 10)
    sr = method(lr)
    assert method.model.config.top_k == 3 and method.color == "wavelet" and method.color_levels == COLOR_LEVELS[4]
    assert sr.shape == (1, 3, 52, 40) and 0 <= sr.min() and sr.max() <= 1
    # its output follows the input: closer to the LR's own bicubic upscale than to another image's
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    assert (sr - up).abs().mean() < (sr - up.flip(-1).flip(-2)).abs().mean()


def test_errors(x4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tokensr.methods.ugtsr import method as ugtsr_method

    monkeypatch.setitem(ugtsr_method.DEFAULT_WEIGHTS, 4, "ugtsr-not-bundled")
    with pytest.raises(OptionError, match="no bundled weights"):
        build(scale=4, weights=None)
    with pytest.raises(OptionError, match="x4, not x2"):
        build(scale=2, weights=str(x4))
    with pytest.raises(OptionError, match="does not take"):
        build(weights=str(x4), steps=4)
    with pytest.raises(OptionError):
        build(scale=3)
    with pytest.raises(OptionError):
        build(weights=str(x4))(torch.rand(1, 1, 8, 8))


def test_cli_upscale(x2: Path, tmp_path: Path, make_image: Callable[..., Path]) -> None:
    from tokensr.cli import main

    src = make_image("in.png", size=(23, 17))
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-o", str(out), "--weights", str(x2), "--quiet"]) == 0
    with Image.open(out) as im:
        assert im.size == (46, 34)


def test_bundled_x2_runs_but_is_not_the_default() -> None:
    """ugtsr-small-x2 (the x4 weights with the function-preserving bridge) upscales at x2 by
    name; it missed the quality bar, so ``tokensr upscale --scale 2`` keeps bicubic."""
    from tokensr.methods import NOT_DEFAULT, default_method

    method = build(scale=2)
    assert method.model.scale == 2 and method.model.config.training.get("bridge") is True
    lr = torch.rand(1, 3, 11, 14)
    sr = method(lr)
    assert sr.shape == (1, 3, 22, 28) and 0 <= sr.min() and sr.max() <= 1
    up = torch.nn.functional.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False)
    assert (sr - up).abs().mean() < (sr - up.flip(-1).flip(-2)).abs().mean()
    assert "ugtsr-small-x2" in NOT_DEFAULT and default_method(2) == "bicubic"
