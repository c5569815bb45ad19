"""upscale_image (gray, alpha, bit depth, ICC) and upscale_files (folders, names, errors)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms

from tokensr.errors import OptionError
from tokensr.inference.pipeline import output_names, upscale_alpha, upscale_files, upscale_image
from tokensr.io import LoadedImage, read_image
from tokensr.methods.bicubic import Bicubic


class Tinted:
    """x2 nearest upscaling that also makes the output a little red: shows gray is re-derived."""

    name, scale = "tinted", 2

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(lr, scale_factor=2, mode="nearest")
        out[:, 0] = (out[:, 0] + 0.1).clamp(0, 1)
        return out


def test_gray_image_comes_back_gray_with_luma() -> None:
    gray = np.linspace(0, 0.8, 12, dtype=np.float32).reshape(3, 4)
    img = LoadedImage.from_planes(gray, bit_depth=16)
    out = upscale_image(img, Tinted())
    assert out.grayscale and out.bit_depth == 16 and out.mode == "L"
    assert out.rgb.shape == (6, 8, 3)
    assert np.array_equal(out.rgb[..., 0], out.rgb[..., 2])
    expected = np.repeat(np.repeat(gray, 2, 0), 2, 1) + 0.299 * 0.1  # luma of the red tint
    assert np.allclose(out.gray(), expected, atol=1e-5)


def test_alpha_is_upscaled_separately_with_bicubic() -> None:
    rng = np.random.default_rng(0)
    rgba = rng.random((5, 6, 4)).astype(np.float32)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = LoadedImage.from_planes(rgba, bit_depth=8, icc_profile=icc, source=Path("x.png"))
    out = upscale_image(img, Bicubic(scale=4))
    assert out.mode == "RGBA" and out.alpha.shape == (20, 24)
    ref = F.interpolate(torch.from_numpy(rgba[..., 3])[None, None], scale_factor=4, mode="bicubic")
    assert np.allclose(out.alpha, ref.clamp(0, 1)[0, 0].numpy(), atol=1e-6)
    assert out.alpha.min() >= 0 and out.alpha.max() <= 1  # clamped despite bicubic overshoot
    assert out.icc_profile == icc and out.source == Path("x.png") and out.bit_depth == 8


def test_upscale_alpha_scale_one_is_identity() -> None:
    a = np.random.default_rng(1).random((3, 3)).astype(np.float32)
    assert np.array_equal(upscale_alpha(a, 1), a)


def test_output_names_resolve_clashes() -> None:
    names = ["a/photo.jpg", "a/photo.png", "a/other.tif", "b/photo.png", "a/Other.bmp"]
    files = [Path(n) for n in names]
    expected = ["photo_jpg.png", "photo_png.png", "other_tif.png", "photo_png-2.png", "Other_bmp.png"]
    assert output_names(files) == expected
    assert output_names([Path("x/one.jpg"), Path("x/two.jpg")]) == ["one.png", "two.png"]


def test_folder_scan_skips_non_images_and_reports_bad_files(make_image, tmp_path: Path, caplog) -> None:
    src = tmp_path / "in"
    make_image("b.png", "RGB", folder=src)
    make_image("a.jpg", "L", folder=src)
    (src / "ATTRIBUTION.md").write_text("# not an image\n")
    (src / ".hidden.png").write_bytes(b"not even read")
    (src / "sub").mkdir()
    make_image("deep.png", "RGB", folder=src / "sub")  # not scanned (top level only)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    caplog.set_level(logging.INFO, logger="tokensr")
    summary = upscale_files([src], tmp_path / "out", Bicubic(scale=2), quiet=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    assert summary.n_written == 2 and summary.n_failed == 1 and not summary.ok
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "broken.png" in errors[0]


def test_explicit_non_image_file_is_an_error(tmp_path: Path, make_image) -> None:
    notes = tmp_path / "ATTRIBUTION.md"
    notes.write_text("text")
    good = make_image("good.png", "RGB")
    summary = upscale_files([notes, good, tmp_path / "missing.jpg"], tmp_path / "out", Bicubic(2), quiet=True)
    assert summary.n_written == 1 and summary.n_failed == 2
    assert {p.name for p, _ in summary.failed} == {"ATTRIBUTION.md", "missing.jpg"}


def test_single_file_to_file_path(make_image, tmp_path: Path) -> None:
    src = make_image("one.png", "RGBA")
    out = tmp_path / "result.webp"
    summary = upscale_files([src], out, Bicubic(2), quiet=True)
    assert summary.written == [out]
    with Image.open(out) as im:
        assert im.format == "WEBP" and im.size == (40, 28) and im.mode == "RGBA"


def test_file_output_with_several_inputs_is_a_usage_error(make_image, tmp_path: Path) -> None:
    a, b = make_image("a.png"), make_image("b.png")
    with pytest.raises(OptionError, match="output folder"):
        upscale_files([a, b], tmp_path / "x.png", Bicubic(2), quiet=True)


def test_same_stem_inputs_do_not_clobber(make_image, tmp_path: Path) -> None:
    a = make_image("pic.png", "RGB", seed=1)
    b = make_image("pic.jpg", "RGB", seed=2)
    summary = upscale_files([tmp_path], tmp_path / "out", Bicubic(2), quiet=True)
    assert summary.ok and sorted(p.name for p in summary.written) == ["pic_jpg.png", "pic_png.png"]
    assert not np.array_equal(read_image(summary.written[0]).rgb, read_image(summary.written[1]).rgb)
    assert a.exists() and b.exists()


def test_existing_outputs_and_inputs_are_never_overwritten(make_image, tmp_path: Path) -> None:
    src = make_image("img.png", "RGB")
    before = src.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "img.png").write_bytes(b"keep me")
    summary = upscale_files([src], out, Bicubic(2), quiet=True)
    assert summary.n_failed == 1 and "already exists" in summary.failed[0][1]
    assert (out / "img.png").read_bytes() == b"keep me"
    # output folder == input folder: the output name is the input itself -> refused, even with overwrite
    summary = upscale_files([tmp_path], tmp_path, Bicubic(2), overwrite=True, quiet=True)
    assert summary.n_failed == 1 and "input" in summary.failed[0][1]
    assert src.read_bytes() == before
    summary = upscale_files([src], out, Bicubic(2), overwrite=True, quiet=True)
    assert summary.ok and read_image(out / "img.png").width == 40


def test_sixteen_bit_and_icc_survive_the_file_pipeline(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = np.random.default_rng(3).random((6, 7, 3)).astype(np.float32)
    from tokensr.io import write_image

    src = write_image(LoadedImage.from_planes(rgb, bit_depth=16, icc_profile=icc), tmp_path / "deep.png")
    summary = upscale_files([src], tmp_path / "out", Bicubic(4), quiet=True)
    out = read_image(summary.written[0])
    assert out.bit_depth == 16 and out.icc_profile == icc and (out.width, out.height) == (28, 24)
    # 16-bit output really has more than 256 levels
    assert len(np.unique(out.to_uint(16))) > 256
