"""The arithmetic a method runs in (tokensr.inference.precision) and where it is chosen."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokensr.cli import main
from tokensr.errors import OptionError
from tokensr.inference.colorfix import color_fix
from tokensr.inference.pipeline import render_image
from tokensr.inference.precision import PRECISIONS, autocast, native_bf16, resolve_precision
from tokensr.io import LoadedImage
from tokensr.methods import build_method


def _cpu_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native, raising=False)


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    _cpu_bf16(monkeypatch, native)
    assert native_bf16("cpu") is native
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    # asked by name, bf16 runs on any CPU (emulated where not native); fp32 is fp32
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_bad_precisions_are_clear_errors() -> None:
    with pytest.raises(OptionError, match="needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(OptionError, match="must be one of auto, fp32, bf16, fp16"):
        resolve_precision("half", "cpu")


def test_autocast_sets_the_arithmetic_of_convolutions() -> None:
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.rand(1, 3, 8, 8)
    with autocast("fp32"):
        assert conv(x).dtype == torch.float32
    with autocast("bf16"):
        assert conv(x).dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["wavelet", "adain", "none"])
def test_colour_fix_works_in_float32_under_bf16(mode: str) -> None:
    """A bf16 method output is widened, and the wavelet blur is not rounded to bf16."""
    torch.manual_seed(0)
    content = torch.rand(1, 3, 32, 32).bfloat16()
    style = torch.rand(1, 3, 8, 8)
    expected = color_fix(content.float(), style, mode)
    with autocast("bf16"):
        got = color_fix(content, style, mode)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def _photo(size: int = 24) -> LoadedImage:
    with Image.open(Path(__file__).resolve().parents[1] / "tokensr/assets/samples/dogs.jpg") as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)[40 : 40 + size, 60 : 60 + size] / 255.0
    return LoadedImage.from_planes(rgb)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.mark.parametrize(("name", "floor_db"), [("realsrt", 35.0), ("ugtsr", 33.0), ("iter", 25.0)])
def test_bundled_methods_in_bf16_stay_close_to_fp32(name: str, floor_db: float) -> None:
    """bf16 changes a few nearly tied tokens, not the picture (docs/usage.md, "Precision")."""
    method = build_method(name, scale=4)
    img = _photo()
    fp32 = render_image(img, method, precision="fp32").pixels
    bf16 = render_image(img, method, precision="bf16").pixels
    assert fp32.shape == bf16.shape == (96, 96, 3)
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    assert _psnr(fp32, bf16) > floor_db


def test_cli_precision_flags(
    make_image: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_image("p.png", size=(12, 10))
    assert main(["upscale", str(src), "-o", str(tmp_path / "a"), "--precision", "fp16"]) == 2
    assert "--precision fp16 needs --device cuda" in capsys.readouterr().err
    assert main(["upscale", str(src), "-o", str(tmp_path / "b"), "--fp16", "--precision", "bf16"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main(["upscale", str(src), "-o", str(tmp_path / "c"), "--method", "bicubic", "--precision", "bf16"]) == 0
    assert Image.open(tmp_path / "c" / "p.png").size == (48, 40)


@pytest.mark.parametrize("command", ["upscale", "bench"])
def test_cli_choices_are_the_precisions(command: str) -> None:
    module = importlib.import_module(f"tokensr.cli.{command}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "precision")
    assert tuple(action.choices or ()) == PRECISIONS
