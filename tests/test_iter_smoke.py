"""End-to-end smoke test of ITER on tiny random networks (save -> build -> upscale), the
start-step rule's monotonicity in alpha, and the inference options (alpha, steps, adaptive)
reaching the sampler through the method factory, tokensr.load and the upscale CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_tokenizer as _tiny_tokenizer

from tokensr.methods.iter.model import ITER
from tokensr.methods.iter.sampling import start_step
from tokensr.nn.vqgan import VQGAN


def tiny_tokenizer() -> VQGAN:
    return _tiny_tokenizer(0, (1, 2, 4), warm=False)


@pytest.mark.parametrize("scale", [4, 2])
def test_tiny_iter_end_to_end(tmp_path: Path, scale: int) -> None:
    from tokensr.methods.iter.method import build

    model = ITER.from_preset("tiny", tiny_tokenizer(), scale=scale)
    model.save_pretrained(tmp_path / "iter")
    method = build(scale=scale, weights=str(tmp_path / "iter"), device="cpu")
    lr = torch.rand(1, 3, 20, 27)
    out = method(lr)
    assert out.shape == (1, 3, 20 * scale, 27 * scale)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, method(lr))  # deterministic by default


def test_start_step_is_monotone_in_alpha() -> None:
    torch.manual_seed(0)
    good = torch.rand(1, 16, 16)
    steps = [int(start_step(good, alpha, 8)) for alpha in (0.1, 0.3, 0.5, 0.7, 0.9)]
    assert steps == sorted(steps)  # a stricter threshold keeps fewer tokens -> more steps to run
    assert all(0 <= s <= 8 for s in steps)


# --- options reach the sampler through the method, the API and the CLI -------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = ITER.from_preset("tiny", tiny_tokenizer(), scale=4)  # defaults: steps 8, alpha 0.5
    folder = tmp_path_factory.mktemp("iter-api") / "iter"
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def sampler_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float, bool]]:
    """Records (steps, alpha, adaptive) of every call of Algorithm 2, which still runs."""
    import tokensr.methods.iter.model as model_module

    calls: list[tuple[int, float, bool]] = []
    real = model_module.adaptive_refine

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((kwargs["steps"], kwargs["alpha"], kwargs["adaptive"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module, "adaptive_refine", spy)
    return calls


def test_alpha_and_steps_reach_the_sampler_through_load(
    tiny_folder: Path, sampler_calls: list[tuple[int, float, bool]]
) -> None:
    import tokensr
    from tokensr.errors import OptionError
    from tokensr.methods import build_method

    lr = torch.rand(1, 3, 8, 8)
    method = tokensr.load(str(tiny_folder), alpha=0.25, steps=3)
    assert method.name == "iter" and method.scale == 4
    method(lr)
    assert sampler_calls == [(3, 0.25, True)]
    sampler_calls.clear()
    tokensr.load(str(tiny_folder))(lr)
    assert sampler_calls == [(8, 0.5, True)]  # the model's stored defaults
    sampler_calls.clear()
    # strings (as the benchmark passes them) and the plain reverse process
    plain = build_method("iter", weights=str(tiny_folder), steps="2", alpha="0.9", adaptive="false")
    info = plain.upscale_with_info(lr)  # type: ignore[attr-defined]
    assert sampler_calls == [(2, 0.9, False)] and info.start_steps == [2]
    # alpha decides how many steps actually run: 0 trusts every token of S_l, 1 (almost) none
    assert tokensr.load(str(tiny_folder), alpha=0.0).upscale_with_info(lr).start_steps == [1]  # type: ignore[attr-defined]
    assert tokensr.load(str(tiny_folder), alpha=1.0, steps=5).upscale_with_info(lr).start_steps == [5]  # type: ignore[attr-defined]
    for bad in ({"alpha": 1.5}, {"steps": 0}, {"steps": "2.5"}, {"adaptive": "maybe"}, {"gamma": 1}):
        with pytest.raises(OptionError):
            tokensr.load(str(tiny_folder), **bad)


def test_alpha_and_steps_reach_the_sampler_through_the_cli(
    tiny_folder: Path, sampler_calls: list[tuple[int, float, bool]], tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from tokensr.cli import main

    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out.png"
    rc = main(
        ["upscale", str(src), "-o", str(out), "--weights", str(tiny_folder), "--alpha", "0.3", "--steps", "2", "-q"]
    )
    assert rc == 0 and Image.open(out).size == (48, 32)
    assert sampler_calls == [(2, 0.3, True)]
    assert (
        main(["upscale", str(src), "-o", str(tmp_path / "bad.png"), "--weights", str(tiny_folder), "--alpha", "2"]) == 2
    )


def test_wrong_weights_are_clear_errors(tiny_folder: Path) -> None:
    from tokensr.errors import OptionError
    from tokensr.methods.iter.method import build

    with pytest.raises(OptionError, match="x4, not x2"):
        build(scale=2, weights=str(tiny_folder))
    with pytest.raises(OptionError, match="not x3"):
        build(scale=3, weights=None)
    with pytest.raises(OptionError, match="no bundled weights"):
        build(scale=2, weights=None)  # iter-small-x2 is not bundled


def test_bundled_x4_runs() -> None:
    """The bundled iter-small-x4 (E_l, phi_r and phi_e) loads by default with its tuned alpha,
    runs Algorithm 2 on any size, stays in [0, 1] and follows its input."""
    from tokensr.methods.iter.method import COLOR_LEVELS, build

    method = build(scale=4)
    m = method.model
    assert m.can_refine and m.scale == 4 and method.steps == 8
    assert method.alpha == m.config.alpha and method.color == "wavelet" and method.color_levels == COLOR_LEVELS[4]
    lr = torch.rand(1, 3, 13, 10, generator=torch.Generator().manual_seed(0))
    info = method.upscale_with_info(lr)
    sr = info.image
    assert sr.shape == (1, 3, 52, 40) and 0 <= sr.min() and sr.max() <= 1
    assert len(info.start_steps) == 1 and 1 <= info.start_steps[0] <= 8
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    assert (sr - up).abs().mean() < (sr - up.flip(-1).flip(-2)).abs().mean()
    # a stricter threshold never runs fewer steps
    steps = []
    for alpha in (0.0, 0.5, 1.0):
        method.alpha = alpha
        steps.append(method.upscale_with_info(lr).start_steps[0])
    assert steps == sorted(steps) and steps[0] == 1


def test_color_fix_option(tiny_folder: Path) -> None:
    """``color_fix`` (default wavelet) corrects the decoded tokens towards the LR input's colours."""
    from tokensr.errors import OptionError
    from tokensr.inference.colorfix import channel_stats, wavelet_decompose
    from tokensr.methods.iter.method import DEFAULT_COLOR_FIX, build

    lr = torch.rand(1, 3, 12, 16) * 0.4 + 0.3
    plain = build(weights=str(tiny_folder), color_fix="none")(lr)
    adain = build(weights=str(tiny_folder), color_fix="adain")(lr)
    wave = build(weights=str(tiny_folder), color_fix=" Wavelet")(lr)
    assert DEFAULT_COLOR_FIX == "wavelet" and torch.equal(build(weights=str(tiny_folder))(lr), wave)
    assert plain.shape == adain.shape == wave.shape == (1, 3, 48, 64)
    mean_lr, _ = channel_stats(lr)
    assert (channel_stats(adain)[0] - mean_lr).abs().max() < 0.02 < (channel_stats(plain)[0] - mean_lr).abs().max()
    up = torch.nn.functional.interpolate(lr, size=plain.shape[-2:], mode="bicubic", align_corners=False)
    low_err = lambda x: (wavelet_decompose(x)[1] - wavelet_decompose(up)[1]).abs().mean()  # noqa: E731
    assert low_err(wave) < 0.5 * low_err(plain)
    with pytest.raises(OptionError, match="option color_fix must be one of"):
        build(weights=str(tiny_folder), color_fix="histogram")
    # color_levels: fewer wavelet levels follow the upsampled LR more closely
    shallow = build(weights=str(tiny_folder), color_levels="1")
    assert shallow.color_levels == 1
    assert (shallow(lr) - up).abs().mean() < (build(weights=str(tiny_folder), color_levels=6)(lr) - up).abs().mean()
    with pytest.raises(OptionError, match="color_levels"):
        build(weights=str(tiny_folder), color_levels=0)
