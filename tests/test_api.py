"""tokensr.load / tokensr.upscale: the same kind of image out as in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tokensr
from tokensr import api
from tokensr.errors import OptionError
from tokensr.methods.bicubic import Bicubic


def bicubic_ref(planes: np.ndarray, scale: int) -> np.ndarray:
    t = torch.from_numpy(planes.astype(np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    return out[0].permute(1, 2, 0).numpy()


def test_load_method_names_and_objects() -> None:
    m = tokensr.load("bicubic", scale=2)
    assert m.name == "bicubic" and m.scale == 2
    assert tokensr.load("bicubic").scale == 4
    assert tokensr.load(m) is m
    with pytest.raises(OptionError, match="x2"):
        tokensr.load(m, scale=4)
    with pytest.raises(OptionError, match="not a method"):
        tokensr.load("no-such-thing")


def test_load_weights_folder_maps_model_type(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "iter", "scale": 2}))
    seen = {}

    def fake_build(name, scale=4, weights=None, device="cpu", **options):
        seen.update(name=name, scale=scale, weights=weights, device=device, options=options)
        return Bicubic(scale)

    monkeypatch.setattr(api, "build_method", fake_build)
    method = tokensr.load(str(folder), steps=4)
    assert seen == {"name": "iter", "scale": 2, "weights": str(folder), "device": "cpu", "options": {"steps": 4}}
    assert method.scale == 2
    (folder / "config.json").write_text(json.dumps({"model_type": "vqgan"}))
    with pytest.raises(OptionError, match="vqgan"):
        tokensr.load(str(folder))


def test_load_rejects_missing_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(OptionError, match="CUDA"):
        tokensr.load("bicubic", device="cuda")


@pytest.mark.parametrize(
    ("mode", "channels"),
    [("RGB", 3), ("RGBA", 4), ("L", 1), ("LA", 2)],
)
def test_pil_in_pil_out(mode: str, channels: int) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.random((6, 5, channels)) * 255).astype(np.uint8)
    im = Image.fromarray(arr[..., 0] if channels == 1 else arr)
    assert im.mode == mode
    out = tokensr.upscale(im, method="bicubic", scale=2)
    assert isinstance(out, Image.Image) and out.mode == mode and out.size == (10, 12)
    got = np.asarray(out).astype(np.float32) / 255
    ref = bicubic_ref(arr.reshape(6, 5, channels) / 255.0, 2)
    assert np.abs(got.reshape(ref.shape) - ref).max() <= 0.5 / 255 + 1e-6


def test_pil_16bit_gray_and_palette() -> None:
    im16 = Image.fromarray(np.full((4, 4), 40000, np.uint16))
    out = tokensr.upscale(im16, method="bicubic", scale=2)
    assert out.mode == "I;16" and np.all(np.asarray(out) == 40000)
    pal = Image.new("P", (4, 4))
    pal.putpalette([200, 10, 10] * 256)
    assert tokensr.upscale(pal, method="bicubic", scale=2).mode == "RGB"


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((6, 7), np.uint8),
        ((6, 7, 3), np.uint8),
        ((6, 7, 4), np.uint16),
        ((6, 7), np.uint16),
        ((6, 7, 3), np.float32),
        ((6, 7, 4), np.float64),
        ((6, 7, 1), np.float32),
    ],
)
def test_numpy_in_numpy_out(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(1)
    unit = rng.random(shape)
    if dtype == np.uint8:
        arr = np.rint(unit * 255).astype(dtype)
    elif dtype == np.uint16:
        arr = np.rint(unit * 65535).astype(dtype)
    else:
        arr = unit.astype(dtype)
    out = tokensr.upscale(arr, method="bicubic", scale=3)
    assert isinstance(out, np.ndarray) and out.dtype == arr.dtype
    assert out.shape == (18, 21) + shape[2:]
    peak = {np.uint8: 255.0, np.uint16: 65535.0}.get(dtype, 1.0)
    planes = arr.astype(np.float64).reshape(6, 7, -1) / peak
    ref = bicubic_ref(planes, 3).reshape(out.shape)
    tol = 0.5 / peak + 1e-5 if peak > 1 else 1e-5
    assert np.abs(out.astype(np.float64) / peak - ref).max() <= tol


def test_path_in_pil_out(make_image) -> None:
    path = make_image("p.png", "RGBA")
    out = tokensr.upscale(path, method="bicubic", scale=2)
    assert isinstance(out, Image.Image) and out.mode == "RGBA" and out.size == (40, 28)
    assert tokensr.upscale(str(path), method="bicubic", scale=2).size == (40, 28)


def test_upscale_with_tiles_and_method_object() -> None:
    arr = np.random.default_rng(2).random((40, 36, 3)).astype(np.float32)
    whole = tokensr.upscale(arr, method=Bicubic(2))
    tiled = tokensr.upscale(arr, method=Bicubic(2), tile=16, tile_overlap=8)
    assert np.abs(whole - tiled).max() < 1e-5
    calls: list[tuple[int, int]] = []
    tokensr.upscale(arr, method=Bicubic(2), tile=16, tile_overlap=8, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 16) for i in range(1, 17)]  # 4 x 4 tiles, one call after each


def test_bad_inputs() -> None:
    with pytest.raises(OptionError, match=r"\[0, 1\]"):
        tokensr.upscale(np.full((4, 4, 3), 255.0, np.float32))
    with pytest.raises(OptionError, match="dtype"):
        tokensr.upscale(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(OptionError, match="shape"):
        tokensr.upscale(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(OptionError, match="cannot upscale"):
        tokensr.upscale(12345)


def test_upscale_without_a_method_uses_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import tokensr.methods as methods
    import tokensr.pretrained as pretrained

    calls: list[int | None] = []
    real = methods.default_method
    monkeypatch.setattr(methods, "default_method", lambda scale=None: calls.append(scale) or real(scale))
    monkeypatch.setattr(pretrained, "bundled_names", lambda: [])  # nothing trained bundled -> bicubic
    arr = np.random.default_rng(3).random((6, 7, 3)).astype(np.float32)
    out = tokensr.upscale(arr, scale=2)
    assert calls == [2]
    assert np.array_equal(out, tokensr.upscale(arr, method="bicubic", scale=2))
