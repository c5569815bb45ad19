"""RealSRT as an SR method: tiny end-to-end runs through build()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import tiny_tokenizer as _tiny_tokenizer

from tokensr.errors import OptionError
from tokensr.methods import build_method
from tokensr.methods.realsrt.method import RealSRTMethod, build
from tokensr.methods.realsrt.model import PRESETS, RealSRT
from tokensr.nn.vqgan import VQGAN


def tiny_tokenizer(seed: int = 0) -> VQGAN:
    return _tiny_tokenizer(seed, (1, 2))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = RealSRT.from_preset("tiny", tiny_tokenizer())
    with torch.no_grad():  # a CCM that does something, so the ccm option matters
        model.ccm.zero_conv.weight.normal_(std=0.5)  # type: ignore[union-attr]
    out = tmp_path_factory.mktemp("realsrt") / "tiny"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def generator_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = RealSRT.create(tiny_tokenizer(), PRESETS["tiny"].generator, scale=4, lr_patch=8)
    out = tmp_path_factory.mktemp("realsrt") / "gen"
    model.save_pretrained(out)
    return out


def test_end_to_end_any_size_deterministic(folder: Path) -> None:
    method = build_method("realsrt", scale=4, weights=str(folder))
    assert isinstance(method, RealSRTMethod) and method.name == "realsrt" and method.scale == 4
    assert method.confidence == "critic" and method.use_ccm and method.steps == 4
    lr = torch.rand(1, 3, 20, 27, generator=torch.Generator().manual_seed(0))
    a = method(lr)
    assert a.shape == (1, 3, 80, 108)
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    b = build(scale=4, weights=str(folder))(lr)
    assert torch.equal(a, b)


def test_options_change_the_result(folder: Path) -> None:
    lr = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    base = build(weights=str(folder))(lr)
    for opts in (
        {"ccm": "false"},
        {"confidence": "generator"},
        {"steps": "1"},
        {"color_fix": "none"},
        {"color_levels": "2"},
    ):
        out = build(weights=str(folder), **opts)(lr)
        assert out.shape == base.shape and not torch.equal(out, base), opts
    # sampling with a temperature is reproducible for a given seed
    t1 = build(weights=str(folder), temperature="1.5", seed="3")(lr)
    t2 = build(weights=str(folder), temperature="1.5", seed="3")(lr)
    assert torch.equal(t1, t2)


@pytest.mark.parametrize("aggregate", ["tokens", "pixels"])
def test_batches_of_images_and_patch_batching(folder: Path, aggregate: str) -> None:
    lr = torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(2))
    one = build(weights=str(folder), batch="1", aggregate=aggregate)(lr)
    many = build(weights=str(folder), batch="64", aggregate=aggregate)(lr)
    assert torch.allclose(one, many, atol=1e-5)
    single = build(weights=str(folder), aggregate=aggregate)(lr[1:])
    assert torch.allclose(many[1:], single, atol=1e-5)


def test_token_and_pixel_aggregation_agree_on_a_single_patch(folder: Path) -> None:
    """An LR image of exactly one patch is one window: tokenising the whole image, generating,
    fusing the CCM and decoding once is then the paper's single-patch path."""
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    tokens = build(weights=str(folder), aggregate="tokens")(lr)
    pixels = build(weights=str(folder), aggregate="pixels")(lr)
    assert torch.allclose(tokens, pixels, atol=1e-5)


def test_token_aggregation_on_larger_images(folder: Path) -> None:
    lr = torch.rand(1, 3, 21, 30, generator=torch.Generator().manual_seed(6))
    method = build(weights=str(folder))
    assert method.aggregate == "tokens" and method.stride == 8  # TOKEN_STRIDE 1.0 of the 8-px patch
    out = method(lr)
    assert out.shape == (1, 3, 84, 120) and 0 <= out.min() and out.max() <= 1
    # every window's tokens are used: a stride that changes which window owns a token
    # changes the image, while the pixel path is another result again
    assert not torch.equal(out, build(weights=str(folder), stride="4")(lr))
    assert not torch.equal(out, build(weights=str(folder), aggregate="pixels")(lr))
    # the step images end in the final image; confidence maps cover the output
    res = method.upscale_with_steps(lr)
    assert len(res.images) == 4 and torch.allclose(res.final, out, atol=1e-5)
    assert res.confidences[0].shape == (1, 1, 84, 120)
    assert res.confidences[0].min() < 1  # first-step confidences come from the critic
    with pytest.raises(OptionError, match="aggregate"):
        build(weights=str(folder), aggregate="average")


def test_convolutions_run_in_tiles_on_large_token_maps(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokenizer's encoder, the CCM's encoder and the decoder never see more than one tile
    plus its margins: what bounds their memory on big images."""
    from tokensr.methods.realsrt import method as realsrt_method

    lr = torch.rand(1, 3, 21, 30, generator=torch.Generator().manual_seed(6))
    method = build(weights=str(folder))
    whole = method(lr)  # 42 x 60 tokens (f = 2): below the default tile, one pass each
    monkeypatch.setattr(realsrt_method, "CONV_TILE", 16)
    monkeypatch.setattr(realsrt_method, "CONV_MARGIN", 4)
    seen: dict[str, list[tuple[int, int]]] = {"tokenizer": [], "ccm": [], "decoder": []}
    m = method.model
    assert m.ccm is not None
    hooks = [
        net.register_forward_pre_hook(lambda _, args, key=key: seen[key].append(tuple(args[0].shape[-2:])))
        for key, net in (("tokenizer", m.tokenizer.encoder), ("ccm", m.ccm.encoder), ("decoder", m.tokenizer.decoder))
    ]
    tiled = method(lr)
    for h in hooks:
        h.remove()
    f, most = 2, 16 + 2 * 4
    assert len(seen["tokenizer"]) == len(seen["ccm"]) == len(seen["decoder"]) == 3 * 4  # 42 x 60 in 16s
    assert max(max(s) for s in seen["tokenizer"] + seen["ccm"]) == most * f  # pixels: f per token
    assert max(max(s) for s in seen["decoder"]) == most  # tokens
    # (how close the tiles come to one pass is measured on the bundled model, docs/realsrt.md:
    # this tiny random tokenizer flips codes on any GroupNorm change)
    assert tiled.shape == whole.shape and 0 <= tiled.min() and tiled.max() <= 1


def test_steps_api_and_figure(folder: Path, tmp_path: Path) -> None:
    lr = torch.rand(1, 3, 10, 14, generator=torch.Generator().manual_seed(3))
    method = build(weights=str(folder), steps=3)
    res = method.upscale_with_steps(lr)
    assert len(res.images) == 3 and len(res.confidences) == 3
    assert res.images[0].shape == (1, 3, 40, 56) and res.confidences[0].shape == (1, 1, 40, 56)
    assert all(0 <= c.min() and c.max() <= 1 for c in res.confidences)
    assert torch.allclose(res.final, method(lr), atol=1e-5)

    figs = tmp_path / "figs"
    with_fig = build(weights=str(folder), steps=3, save_steps=str(figs))
    with_fig.figure_name = "photo"
    out = with_fig(lr)
    assert torch.allclose(out, res.final, atol=1e-5)
    png = figs / "photo_steps.png"
    im = Image.open(png)
    assert im.mode == "RGB" and im.width > im.height  # 4 columns (LR + 3 steps), 2 rows
    path_fig = build(weights=str(folder), steps=2, save_steps=str(tmp_path / "one.png"))
    path_fig(lr)
    path_fig(lr)
    assert (tmp_path / "one.png").is_file() and (tmp_path / "one-2.png").is_file()


def test_save_steps_flag_uses_default_folder(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    method = build(weights=str(folder), steps=2, save_steps=True)
    method(torch.rand(1, 3, 8, 8))
    assert (tmp_path / "realsrt-steps" / "realsrt-0001_steps.png").is_file()
    assert build(weights=str(folder), save_steps=False).save_steps is None


def test_generator_only_model_defaults(generator_only: Path) -> None:
    method = build(weights=str(generator_only))
    assert method.confidence == "generator" and not method.use_ccm
    assert method(torch.rand(1, 3, 9, 9)).shape == (1, 3, 36, 36)
    with pytest.raises(OptionError, match="critic"):
        build(weights=str(generator_only), confidence="critic")
    with pytest.raises(OptionError, match="CCM"):
        build(weights=str(generator_only), ccm=True)


def test_option_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError):
        build(weights=str(folder), alpha="0.5")
    with pytest.raises(OptionError):
        build(weights=str(folder), steps="zero")
    with pytest.raises(OptionError):
        build(weights=str(folder), steps="0")
    with pytest.raises(OptionError):
        build(weights=str(folder), confidence="oracle")
    with pytest.raises(OptionError):
        build(weights=str(folder), stride="20")
    with pytest.raises(OptionError):
        build(weights=str(folder), patch="0")
    with pytest.raises(OptionError, match="x4"):
        build(scale=2, weights=str(folder))
    with pytest.raises(OptionError):
        build(weights=str(tmp_path / "missing"))
    with pytest.raises(OptionError, match="lr_encoder"):
        build(weights=str(folder), lr_encoder="fp16")


def test_missing_bundled_weights_is_a_clear_error() -> None:
    from tokensr.pretrained import bundled_names

    if "realsrt-small-x2" in bundled_names():
        pytest.skip("realsrt x2 weights are bundled")
    with pytest.raises(OptionError, match="--weights"):
        build(scale=2, weights=None)
    with pytest.raises(OptionError, match="x3"):
        build(scale=3, weights=None)


def test_bundled_x4_is_the_default_and_runs() -> None:
    """realsrt-small-x4 (generator + critic + CCM, 16-px patches) loads by default, is the
    default method at x4 and upscales any size, in [0, 1], following its input."""
    from tokensr.methods import default_method
    from tokensr.methods.realsrt.method import DEFAULT_COLOR_FIX

    assert default_method(4) == "realsrt"
    method = build(scale=4)
    m = method.model
    assert m.critic is not None and m.ccm is not None and m.config.lr_patch == 16
    assert method.confidence == "critic" and method.use_ccm and method.color == DEFAULT_COLOR_FIX
    lr = torch.rand(1, 3, 13, 10)
    sr = method(lr)
    assert sr.shape == (1, 3, 52, 40) and 0 <= sr.min() and sr.max() <= 1
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    assert (sr - up).abs().mean() < (sr - up.flip(-1).flip(-2)).abs().mean()


def test_progress_per_token_window_and_decoder_tile(folder: Path) -> None:
    """One image in one pass still shows progress: a report per window generated, per CCM
    window fused and per decoder tile, through the pipeline's ``progress(done, total)``."""
    from tokensr.inference.pipeline import render_image
    from tokensr.inference.token_windows import WindowGrid
    from tokensr.io import LoadedImage

    lr = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(8))
    method = build(weights=str(folder), batch="1")
    # 12 x 10 LR -> 48 x 40 px -> 24 x 20 tokens (f = 2) in windows of 16 tokens every 16
    windows = len(WindowGrid(24, 20, *method._window_tokens()).parts)
    assert windows == 4
    total = windows + windows + 1  # generator+critic windows, CCM windows, one decoder tile
    calls: list[tuple[int, int]] = []
    loaded = LoadedImage.from_planes(lr[0].permute(1, 2, 0).numpy())
    out = render_image(loaded, method, tile=0, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(k, total) for k in range(1, total + 1)]
    assert method.progress_hook is None  # only set while the pipeline runs it
    assert out.pixels.shape == (48, 40, 3)
    assert torch.equal(method(lr), build(weights=str(folder), batch="1")(lr))  # no hook: same pixels
    # the default batch (32 windows): one report per batch, ending at the same total
    calls.clear()
    render_image(loaded, build(weights=str(folder)), tile=0, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, total), (8, total), (9, total)]


@pytest.mark.parametrize("aggregate", ["tokens", "pixels"])
def test_lr_encoder_precision_under_bf16(folder: Path, aggregate: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """lr_encoder=fp32 makes the LR tokens in float32 under a bf16 autocast; the default
    (autocast) lets the tokenizer encoder follow it. Both are the same without autocast."""
    lr = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(2))
    fast, exact = (build(weights=str(folder), aggregate=aggregate, lr_encoder=v) for v in ("autocast", "fp32"))
    assert torch.equal(fast(lr), exact(lr))
    for method in (fast, exact):
        seen: list[torch.dtype] = []
        method.model.tokenizer.encoder.conv_in.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = method(lr)
        assert out.shape == (1, 3, 48, 40) and torch.isfinite(out).all()
        assert set(seen) == {torch.bfloat16 if method is fast else torch.float32}
