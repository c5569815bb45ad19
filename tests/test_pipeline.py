"""upscale_image (gray, alpha, bit depth, ICC) and upscale_files (folders, names, errors)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms

from tokensr.errors import OptionError
from tokensr.inference import pipeline
from tokensr.inference.pipeline import (
    AUTO_TILE,
    alpha_strips,
    output_names,
    render_image,
    resolve_tile,
    streams_to_png,
    upscale_alpha,
    upscale_files,
    upscale_image,
)
from tokensr.io import LoadedImage, encoders, read_image, write_image
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


@pytest.mark.parametrize(("channels", "bits"), [(1, 16), (2, 8), (3, 8), (4, 16)])
def test_render_image_equals_the_float_result_quantised(channels: int, bits: int) -> None:
    """Rows quantised as tiles finish == the whole float image quantised at the end."""
    planes = np.random.default_rng(channels).random((37, 29, channels)).astype(np.float32)
    img = LoadedImage.from_planes(planes, bit_depth=bits, source=Path("x.png"))
    pixels = render_image(img, Tinted(), tile=12, overlap=4)
    expected = upscale_image(img, Tinted(), tile=12, overlap=4, quiet=True).to_uint(bits)
    assert pixels.pixels.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert pixels.pixels.shape == (74, 58, channels) and pixels.source == Path("x.png")
    assert np.abs(pixels.pixels.astype(np.int64) - expected.astype(np.int64)).max() <= 1  # float rounding only


def test_alpha_strips_join_exactly() -> None:
    alpha = np.random.default_rng(4).random((23, 9)).astype(np.float32)
    pieces = list(alpha_strips(alpha, 3, rows=5))
    assert [y0 for y0, _ in pieces] == [0, 15, 30, 45, 60]
    assert np.allclose(np.concatenate([p for _, p in pieces]), upscale_alpha(alpha, 3), atol=1e-6)


def test_automatic_tiling() -> None:
    assert resolve_tile(None, AUTO_TILE, AUTO_TILE) is None  # fits one tile: one pass
    assert resolve_tile(None, 10, AUTO_TILE + 1) == AUTO_TILE
    assert resolve_tile(0, 5000, 5000) is None and resolve_tile(64, 10, 10) == 64

    class SavesFigures:
        save_steps = "steps/"

    assert resolve_tile(None, 5000, 5000, SavesFigures()) is None  # one figure for the whole image
    assert resolve_tile(128, 5000, 5000, SavesFigures()) == 128


def test_skip_existing_resumes_a_folder_run(make_image, tmp_path: Path) -> None:
    src = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        make_image(name, "RGB", folder=src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"done before the interruption")
    with pytest.raises(OptionError, match="contradict"):
        upscale_files([src], out, Bicubic(2), skip_existing=True, overwrite=True, quiet=True)
    summary = upscale_files([src], out, Bicubic(2), skip_existing=True, quiet=True)
    assert summary.ok and summary.skipped == [out / "a.png"]
    assert [p.name for p in summary.written] == ["b.png", "c.png"]
    assert (out / "a.png").read_bytes() == b"done before the interruption"  # untouched
    again = upscale_files([src], out, Bicubic(2), skip_existing=True, quiet=True)
    assert again.n_written == 0 and again.n_skipped == 3


def test_failures_are_listed_again_at_the_end(make_image, tmp_path: Path, caplog) -> None:
    good = make_image("good.png", "RGB")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    caplog.set_level(logging.INFO, logger="tokensr")
    summary = upscale_files([bad, good, tmp_path / "gone.jpg"], tmp_path / "out", Bicubic(2))
    assert summary.n_written == 1 and summary.n_failed == 2
    text = summary.fail_log()
    assert text.splitlines() == [
        f"{tmp_path / 'gone.jpg'}: no such file or folder",
        f"{bad}: not an image file (or a format tokensr cannot read)",
    ]
    final = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed (2)")]
    assert len(final) == 1 and "bad.png: not an image" in final[0] and "gone.jpg: no such" in final[0]
    assert caplog.records[-1].getMessage().startswith("done: 1 written, 2 failed")


def test_progress_callback_per_image_and_tile(make_image, tmp_path: Path) -> None:
    src = make_image("wide.png", "RGB", size=(40, 20))
    calls: list[tuple[str, int, int]] = []

    def for_image(path: Path) -> Callable[[int, int], None]:
        return lambda done, total: calls.append((path.name, done, total))

    summary = upscale_files([src], tmp_path / "out", Bicubic(2), tile=16, overlap=4, quiet=True, progress=for_image)
    assert summary.ok
    assert calls == [("wide.png", i, 6) for i in range(1, 7)]  # 3 x 2 tiles, one call each


def test_fp16_on_cpu_is_refused() -> None:
    img = LoadedImage.from_planes(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(OptionError, match="CUDA"):
        render_image(img, Bicubic(2), precision="fp16")
    assert render_image(img, Bicubic(2), precision="bf16").pixels.shape == (8, 8, 3)


# ---------------------------------------------------------------- PNG rows streamed to the file


@pytest.mark.parametrize(("mode", "bits"), [("RGBA", 8), ("RGBA", 16), ("RGB", 16), ("LA", 8)])
def test_streamed_png_has_the_pixels_of_the_in_memory_path(tmp_path: Path, mode: str, bits: int) -> None:
    rng = np.random.default_rng(1)
    planes = rng.random((50, 37, len(mode))).astype(np.float32)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() if "RGB" in mode else None
    img = LoadedImage.from_planes(planes, bit_depth=bits, icc_profile=icc)
    src = tmp_path / "src.png"
    write_image(img, src)
    loaded = read_image(src)
    method = Bicubic(4)
    expected = render_image(loaded, method, tile=16, overlap=4)
    in_memory = write_image(expected, tmp_path / "memory.png")
    summary = upscale_files([src], tmp_path / "out", method, tile=16, overlap=4, quiet=True)
    streamed = tmp_path / "out" / "src.png"
    assert summary.written == [streamed]
    back = read_image(streamed)
    assert back.to_pixels().pixels.dtype == expected.pixels.dtype
    assert np.array_equal(back.to_pixels().pixels, expected.pixels)
    assert back.icc_profile == loaded.icc_profile
    assert np.array_equal(back.to_pixels().pixels, read_image(in_memory).to_pixels().pixels)
    if bits == 8:  # Pillow decodes both files to the same pixels too
        assert np.array_equal(np.asarray(Image.open(streamed)), np.asarray(Image.open(in_memory)))


def test_png_output_is_streamed_without_a_full_size_buffer(tmp_path: Path, monkeypatch) -> None:
    """The PNG path never builds the output image: `render_image` (which allocates it) is not
    called, and the encoder gets the rows in many small pieces as the tiles finish."""
    img = LoadedImage.from_planes(np.random.default_rng(2).random((90, 40, 4)).astype(np.float32), bit_depth=16)
    src = tmp_path / "src.png"
    write_image(img, src)
    expected = render_image(read_image(src), Bicubic(4), tile=16, overlap=4).pixels
    pieces: list[int] = []
    original = encoders.PngStream.write_rows

    def record(self: encoders.PngStream, rows: np.ndarray) -> None:
        pieces.append(rows.shape[0])
        assert not (tmp_path / "out.png").exists()  # the final name appears only at the end
        original(self, rows)

    def whole_image(*args: object, **kwargs: object) -> None:
        raise AssertionError("the PNG path must not build the whole output image")

    monkeypatch.setattr(encoders.PngStream, "write_rows", record)
    monkeypatch.setattr(pipeline, "render_image", whole_image)
    calls: list[tuple[int, int]] = []
    summary = upscale_files(
        [src],
        tmp_path / "out.png",
        Bicubic(4),
        tile=16,
        overlap=4,
        quiet=True,
        progress=lambda p: lambda d, t: calls.append((d, t)),
    )
    assert summary.ok and calls[-1] == (len(calls), len(calls)) and len(calls) > 1
    assert sum(pieces) == 360 and len(pieces) >= 4 and max(pieces) <= 128  # 360 rows in tile-row pieces
    assert np.array_equal(read_image(tmp_path / "out.png").to_pixels().pixels, expected)


def test_a_failure_while_streaming_leaves_no_file(tmp_path: Path) -> None:
    class BreaksLate(Bicubic):
        def __init__(self) -> None:
            super().__init__(2)
            self.calls = 0

        def __call__(self, lr: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("tile 5 broke")
            return super().__call__(lr)

    src = tmp_path / "in.png"
    write_image(LoadedImage.from_planes(np.random.default_rng(3).random((60, 30, 3)).astype(np.float32)), src)
    out = tmp_path / "out"
    out.mkdir()
    summary = upscale_files([src], out, BreaksLate(), tile=16, overlap=4, quiet=True)
    assert summary.n_failed == 1 and "tile 5 broke" in summary.failed[0][1]
    assert list(out.iterdir()) == []  # neither the output nor its temporary file


def test_resized_and_other_formats_keep_the_in_memory_path(tmp_path: Path) -> None:
    assert streams_to_png("a.png", 10, 20, 4, (40, 80))
    assert not streams_to_png("a.png", 10, 20, 4, (25, 50))  # --outscale 2.5: resized from the whole image
    assert not streams_to_png("a.jpg", 10, 20, 4, (40, 80))
    assert not streams_to_png("a.tif", 10, 20, 4, (40, 80))
