"""Image reading and writing: every odd kind of input, errors, limits, atomic non-clobbering writes."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from tokensr.errors import ImageReadError, OptionError
from tokensr.io import (
    ImageHeader,
    ImageWriteError,
    LoadedImage,
    PixelImage,
    decode_image,
    encode_image,
    from_pil,
    is_image_name,
    png_rows,
    probe_image,
    read_image,
    to_pil,
    write_image,
)
from tokensr.io.encoders import PngStream, encode_png16, write_png


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def u16_pattern(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """uint16 values that are not multiples of 257, so 8-bit rounding would show."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, size=(h, w, c), dtype=np.uint16)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size; the pixel data is tiny (a decompression bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- reading: kinds of image


def test_16bit_rgb_png_keeps_full_precision(tmp_path: Path) -> None:
    arr = u16_pattern(9, 11, 3)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), arr[..., ::-1])  # OpenCV writes BGR
    img = read_image(path)
    assert img.bit_depth == 16 and not img.grayscale and img.alpha is None
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (9, 11, 3)
    assert np.array_equal(np.rint(img.rgb * 65535).astype(np.uint16), arr)


def test_16bit_rgba_png_keeps_alpha_at_16_bit(tmp_path: Path) -> None:
    arr = u16_pattern(7, 5, 4, seed=1)
    path = tmp_path / "deep_rgba.png"
    cv2.imwrite(str(path), arr[..., [2, 1, 0, 3]])
    img = read_image(path)
    assert img.bit_depth == 16 and img.mode == "RGBA"
    assert np.array_equal(np.rint(img.alpha * 65535).astype(np.uint16), arr[..., 3])
    assert np.array_equal(np.rint(img.rgb * 65535).astype(np.uint16), arr[..., :3])


def test_16bit_gray_png(tmp_path: Path) -> None:
    arr = u16_pattern(6, 10, 1, seed=2)[..., 0]
    path = tmp_path / "gray16.png"
    Image.fromarray(arr).save(path)
    img = read_image(path)
    assert img.grayscale and img.bit_depth == 16 and img.mode == "L"
    assert np.array_equal(np.rint(img.gray() * 65535).astype(np.uint16), arr)


def test_16bit_gray_alpha_png(tmp_path: Path) -> None:
    arr = u16_pattern(5, 6, 2, seed=3)
    path = tmp_path / "gray_alpha16.png"
    path.write_bytes(encode_png16(arr))
    img = read_image(path)
    assert img.grayscale and img.bit_depth == 16 and img.mode == "LA"
    assert np.array_equal(img.to_uint(16), arr)


def test_16bit_tiff(tmp_path: Path) -> None:
    arr = u16_pattern(8, 4, 3, seed=4)
    path = tmp_path / "deep.tif"
    cv2.imwrite(str(path), arr[..., ::-1])
    img = read_image(path)
    assert img.bit_depth == 16 and img.format == "TIFF"
    assert np.array_equal(img.to_uint(16), arr)


@pytest.mark.parametrize(
    ("name", "mode", "expect_mode"),
    [
        ("rgba.png", "RGBA", "RGBA"),
        ("la.png", "LA", "LA"),
        ("gray.jpg", "L", "L"),
        ("rgb.bmp", "RGB", "RGB"),
        ("bilevel.png", "1", "L"),
    ],
)
def test_8bit_modes(make_image, name: str, mode: str, expect_mode: str) -> None:
    path = make_image(name, mode)
    img = read_image(path)
    assert img.mode == expect_mode and img.bit_depth == 8
    ref = Image.open(path)
    if ref.mode == "1":
        ref = ref.convert("L")
    assert np.array_equal(img.to_uint(8).squeeze(-1) if img.mode == "L" else img.to_uint(8), np.asarray(ref))


def test_grayscale_rgb_channels_are_equal(make_image) -> None:
    img = read_image(make_image("g.png", "L"))
    assert np.array_equal(img.rgb[..., 0], img.rgb[..., 1]) and np.array_equal(img.rgb[..., 0], img.rgb[..., 2])


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 8), (255, 0, 0, 0)).save(path, quality=95)  # pure cyan
    img = read_image(path)
    assert img.mode == "RGB" and img.bit_depth == 8 and img.icc_profile is None
    assert np.allclose(img.rgb.reshape(-1, 3).mean(0), [0.0, 1.0, 1.0], atol=0.03)


def test_cmyk_profile_is_not_carried_to_rgb(tmp_path: Path) -> None:
    fake = bytearray(srgb_icc())
    fake[16:20] = b"CMYK"  # claims CMYK; unusable, so the plain conversion is used
    path = tmp_path / "cmyk_icc.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(path, icc_profile=bytes(fake))  # magenta
    img = read_image(path)
    assert img.icc_profile is None
    assert np.allclose(img.rgb.reshape(-1, 3).mean(0), [1.0, 0.0, 1.0], atol=0.03)


def test_palette_with_and_without_transparency(make_image) -> None:
    opaque = read_image(make_image("pal.png", "P"))
    assert opaque.mode == "RGB"
    path = make_image("pal_t.png", "P", transparency=0)
    img = read_image(path)
    assert img.mode == "RGBA"
    index = np.asarray(Image.open(path))
    assert np.array_equal(img.alpha == 0, index == 0) and (index == 0).any()
    expected = np.asarray(Image.open(path).convert("RGBA"))
    assert np.array_equal(img.to_uint(8), expected)


def test_webp_lossless_and_bmp_exact(make_image) -> None:
    for name, kwargs in (("a.webp", {"lossless": True}), ("a.bmp", {})):
        path = make_image(name, "RGB", seed=5, **kwargs)
        img = read_image(path)
        assert np.array_equal(img.to_uint(8), np.asarray(Image.open(path).convert("RGB")))


def test_webp_with_alpha(make_image) -> None:
    img = read_image(make_image("a.webp", "RGBA", lossless=True))
    assert img.mode == "RGBA" and img.format == "WEBP"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(make_image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = make_image(f"o{orientation}.jpg", "RGB", size=(12, 7), exif=exif.tobytes())
    img = read_image(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert img.rgb.shape[:2] == expected.shape[:2]
    assert np.array_equal(img.to_uint(8), expected)


def test_exif_orientation_applied_to_16bit_png(tmp_path: Path) -> None:
    arr = u16_pattern(2, 3, 3, seed=6)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: view it turned 90 degrees clockwise
    body = exif.tobytes()
    body = body[6:] if body.startswith(b"Exif\x00\x00") else body
    png = encode_png16(arr)
    path = tmp_path / "rot16.png"
    path.write_bytes(png[:33] + png_chunk(b"eXIf", body) + png[33:])  # right after IHDR
    img = read_image(path)
    assert img.bit_depth == 16
    assert np.array_equal(img.to_uint(16), np.rot90(arr, k=-1))


def test_decoded_by_content_not_extension(make_image) -> None:
    path = make_image("really_png.jpg", "RGBA", format="PNG")
    img = read_image(path)
    assert img.format == "PNG" and img.mode == "RGBA"


def test_icc_profile_read(make_image) -> None:
    icc = srgb_icc()
    assert read_image(make_image("icc.png", "RGB", icc_profile=icc)).icc_profile == icc
    assert read_image(make_image("icc.jpg", "RGB", icc_profile=icc)).icc_profile == icc
    assert read_image(make_image("noicc.png", "RGB")).icc_profile is None


def test_from_pil_matches_file_rules() -> None:
    im = Image.new("P", (4, 3))
    im.putpalette([10, 20, 30] * 256)
    loaded = from_pil(im)
    assert loaded.mode == "RGB" and np.allclose(loaded.rgb[0, 0], np.array([10, 20, 30]) / 255)


# ---------------------------------------------------------------- reading: errors and limits


def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path) -> None:
    text = str(err.value)
    assert "\n" not in text and str(path) in text


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello, I am not a picture\n" * 10)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert_one_line_naming(err, path)
    assert "not an image" in str(err.value)


@pytest.mark.parametrize("name", ["cut.jpg", "cut.png"])
def test_truncated_file(make_image, name: str) -> None:
    path = make_image(name, "RGB", size=(64, 48), seed=7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert_one_line_naming(err, path)


def test_truncated_16bit_png(tmp_path: Path) -> None:
    path = tmp_path / "cut16.png"
    cv2.imwrite(str(path), u16_pattern(40, 40, 3))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert_one_line_naming(err, path)


def test_garbage_and_empty_and_missing(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (garbage, empty, tmp_path / "missing.png", tmp_path):
        with pytest.raises(ImageReadError) as err:
            read_image(path)
        assert_one_line_naming(err, path)


def test_corrupt_image_is_told_apart_from_non_image(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + np.random.default_rng(1).bytes(200))
    with pytest.raises(ImageReadError, match="corrupt JPEG") as err:
        read_image(path)
    assert_one_line_naming(err, path)


def test_decompression_bomb_header_refused(tmp_path: Path) -> None:
    huge = tmp_path / "bomb.png"
    huge.write_bytes(png_header_only(100_000, 100_000))  # beyond Pillow's own hard limit
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(10_000, 10_000))  # under Pillow's limit, over ours
    for path in (huge, big):
        with pytest.raises(ImageReadError) as err:
            read_image(path)
        assert_one_line_naming(err, path)
        assert "refused" in str(err.value)


def test_pixel_cap_is_configurable(make_image, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_image("small.png", "RGB", size=(20, 10))
    with pytest.raises(ImageReadError, match="over the limit"):
        read_image(path, max_pixels=199)
    assert read_image(path, max_pixels=200).width == 20
    monkeypatch.setenv("TOKENSR_MAX_PIXELS", "150")
    with pytest.raises(ImageReadError, match="over the limit of 150"):
        read_image(path)


def test_is_image_name() -> None:
    assert is_image_name("a/b.JPG") and is_image_name("x.tiff") and is_image_name("y.webp")
    assert not is_image_name("ATTRIBUTION.md") and not is_image_name(".a.png.123.tmp")
    assert not is_image_name(".hidden.png")


# ---------------------------------------------------------------- writing


def loaded_from(arr: np.ndarray, bits: int, icc: bytes | None = None) -> LoadedImage:
    peak = 65535.0 if bits == 16 else 255.0
    return LoadedImage.from_planes(arr.astype(np.float32) / peak, bit_depth=bits, icc_profile=icc)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_roundtrip_with_icc(tmp_path: Path, channels: int, ext: str) -> None:
    arr = u16_pattern(6, 9, channels, seed=channels)
    icc = srgb_icc() if channels >= 3 else None
    path = write_image(loaded_from(arr, 16, icc), tmp_path / f"out{ext}")
    back = read_image(path)
    assert back.bit_depth == 16 and back.icc_profile == icc
    if ext == ".tif" and channels == 2:  # stored as RGBA for reader compatibility
        assert back.mode == "RGBA"
        assert np.array_equal(back.to_uint(16)[..., [0, 3]], arr)
    else:
        assert back.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        assert np.array_equal(back.to_uint(16), arr)


def test_16bit_png_is_readable_by_other_decoders(tmp_path: Path) -> None:
    arr = u16_pattern(300, 7, 3, seed=9)  # > one compression block of rows
    path = write_image(loaded_from(arr, 16), tmp_path / "deep.png")
    assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1], arr)
    gray = u16_pattern(5, 5, 1)
    gpath = write_image(loaded_from(gray, 16), tmp_path / "gray.png")
    with Image.open(gpath) as im:
        assert im.mode == "I;16" and np.array_equal(np.asarray(im), gray[..., 0])


@pytest.mark.parametrize(
    ("mode", "ext", "expect"),
    [
        ("L", ".png", "L"),
        ("LA", ".png", "LA"),
        ("RGBA", ".png", "RGBA"),
        ("RGBA", ".jpg", "RGB"),
        ("RGBA", ".webp", "RGBA"),
        ("RGBA", ".tif", "RGBA"),
        ("L", ".jpg", "L"),
        ("RGB", ".bmp", "RGB"),
    ],
)
def test_8bit_write_modes(make_image, tmp_path: Path, mode: str, ext: str, expect: str) -> None:
    src = read_image(make_image(f"in_{mode}.png", mode))
    path = write_image(src, tmp_path / f"out_{mode}{ext}")
    with Image.open(path) as im:
        assert im.mode == expect and im.size == (src.width, src.height)
    if ext in (".png", ".tif", ".bmp"):  # lossless
        assert np.array_equal(read_image(path).to_uint(8), src.to_uint(8))


def test_jpeg_flattens_alpha_onto_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.float32)
    rgba[..., 0] = 1.0  # red, fully transparent on the left half
    rgba[:, 4:, 3] = 1.0
    path = write_image(LoadedImage.from_planes(rgba), tmp_path / "flat.jpg")
    px = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert (px[:, :2] > 230).all()  # white where transparent
    assert px[:, 6:, 0].min() > 230 and px[:, 6:, 1:].max() < 30  # red where opaque


def test_icc_written_to_8bit_formats(make_image, tmp_path: Path) -> None:
    icc = srgb_icc()
    src = read_image(make_image("icc.png", "RGB", icc_profile=icc))
    for ext in (".png", ".jpg", ".webp", ".tif"):
        with Image.open(write_image(src, tmp_path / f"o{ext}")) as im:
            assert im.info.get("icc_profile") == icc, ext


def test_write_refuses_existing_file_unless_overwrite(make_image, tmp_path: Path) -> None:
    src = read_image(make_image("src.png", "RGB"))
    target = tmp_path / "taken.png"
    target.write_bytes(b"precious")
    with pytest.raises(ImageWriteError, match="already exists"):
        write_image(src, target)
    assert target.read_bytes() == b"precious"
    write_image(src, target, overwrite=True)
    assert read_image(target).width == src.width


def test_write_never_replaces_an_input(make_image) -> None:
    path = make_image("input.png", "RGB")
    before = path.read_bytes()
    src = read_image(path)
    with pytest.raises(ImageWriteError, match="input"):
        write_image(src, path, overwrite=True)
    other = read_image(make_image("other.png", "RGB", seed=3))
    with pytest.raises(ImageWriteError, match="input"):
        write_image(other, path.parent / "." / "input.png", overwrite=True, protect=[path])
    assert path.read_bytes() == before


def test_write_is_atomic_when_the_final_step_fails(make_image, tmp_path: Path, monkeypatch) -> None:
    src = read_image(make_image("src.png", "RGB"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "result.png"
    target.write_bytes(b"old")

    def broken_replace(a, b):  # the rename fails (e.g. disk full, permission)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ImageWriteError) as err:
        write_image(src, target, overwrite=True)
    assert "\n" not in str(err.value)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in out_dir.iterdir()) == ["result.png"]  # no temp file left behind


def test_write_leaves_no_temp_files_and_normal_permissions(make_image, tmp_path: Path) -> None:
    src = read_image(make_image("src.png", "RGB"))
    out = write_image(src, tmp_path / "new" / "x.png")
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png"]
    assert out.stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600


def test_unknown_output_extension(make_image, tmp_path: Path) -> None:
    src = read_image(make_image("src.png", "RGB"))
    with pytest.raises(OptionError, match=".xyz"):
        write_image(src, tmp_path / "out.xyz")


def test_to_pil_modes() -> None:
    gray16 = LoadedImage.from_planes(np.full((3, 4), 0.5, np.float32), bit_depth=16)
    assert to_pil(gray16).mode == "I;16"
    rgb16 = LoadedImage.from_planes(np.full((3, 4, 3), 0.5, np.float32), bit_depth=16)
    assert to_pil(rgb16).mode == "RGB"
    assert Image.open(io.BytesIO(encode_image(rgb16, "PNG"))).mode == "RGB"


def test_saved_weights_and_checkpoints_get_normal_permissions(tmp_path: Path) -> None:
    """Model exports and training checkpoints (``atomic_write_bytes``) get the umask's usual
    permissions too, not mkstemp's 0600."""
    from tokensr.io.permissions import NEW_FILE_MODE
    from tokensr.pretrained import atomic_write_bytes

    target = tmp_path / "w" / "model.safetensors"
    atomic_write_bytes(target, lambda p: Path(p).write_bytes(b"x"))
    assert target.read_bytes() == b"x" and sorted(p.name for p in target.parent.iterdir()) == ["model.safetensors"]
    assert target.stat().st_mode & 0o777 == NEW_FILE_MODE


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_streamed_8bit_png_decodes_exactly_in_several_blocks(tmp_path: Path, monkeypatch, channels: int) -> None:
    """The 8-bit PNG writer (Paeth rows, one IDAT per block) gives the exact pixels to Pillow and OpenCV."""
    from tokensr.io import encoders

    monkeypatch.setattr(encoders, "_PNG_BLOCK_BYTES", 100)  # a few rows per block: exercises the row carry
    arr = np.random.default_rng(channels).integers(0, 256, size=(23, 17, channels), dtype=np.uint8)
    path = tmp_path / "s.png"
    write_image(PixelImage(arr), path)
    with Image.open(path) as im:
        assert im.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        assert np.array_equal(np.asarray(im).reshape(arr.shape), arr)
    if channels != 2:  # OpenCV widens gray+alpha to BGRA
        cv = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).reshape(23, 17, channels)
        assert np.array_equal(cv[..., [2, 1, 0, 3][:channels]] if channels >= 3 else cv, arr)


def test_pixel_image_to_8bit_formats_matches_the_float_path(tmp_path: Path) -> None:
    rgba = np.random.default_rng(5).random((9, 11, 4)).astype(np.float32)
    img = LoadedImage.from_planes(rgba, bit_depth=16)
    for ext in (".jpg", ".bmp", ".webp"):
        a = read_image(write_image(img, tmp_path / f"f{ext}"))
        b = read_image(write_image(img.to_pixels(), tmp_path / f"p{ext}"))
        assert np.abs(a.to_uint(8).astype(int) - b.to_uint(8).astype(int)).max() <= 1, ext


def test_too_large_for_the_format_is_refused_before_encoding(tmp_path: Path) -> None:
    big = PixelImage(np.zeros((1, 16_384, 3), dtype=np.uint8))
    with pytest.raises(ImageWriteError, match="too large for WEBP"):
        write_image(big, tmp_path / "wide.webp")
    assert not list(tmp_path.iterdir())
    assert write_image(big, tmp_path / "wide.png").is_file()


def test_animated_gif_warns_that_only_the_first_frame_is_used(tmp_path: Path, caplog) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "still.gif")
    caplog.set_level("WARNING", logger="tokensr")
    img = read_image(tmp_path / "anim.gif")
    assert img.rgb[0, 0, 0] > 0.9 and img.rgb[0, 0, 2] < 0.1  # the first (red) frame
    assert "anim.gif: animated GIF; only its first frame is used" in caplog.text
    caplog.clear()
    read_image(tmp_path / "still.gif")
    assert "animated" not in caplog.text


def test_animated_webp_warns_too(tmp_path: Path, caplog) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ((0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    caplog.set_level("WARNING", logger="tokensr")
    img = read_image(tmp_path / "anim.webp")
    assert img.rgb[0, 0, 1] > 0.9
    assert "animated WEBP" in caplog.text


def test_probe_reads_size_layout_and_depth_from_the_header(make_image, tmp_path: Path) -> None:
    assert probe_image(make_image("p.png", "RGBA", size=(20, 14))) == ImageHeader(20, 14, 4, 8, "PNG")
    assert probe_image(make_image("g.jpg", "L", size=(9, 5))) == ImageHeader(9, 5, 1, 8, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = make_image("r.jpg", "RGB", size=(20, 14), exif=exif.tobytes())
    header = probe_image(rotated)
    assert (header.width, header.height) == (14, 20) == (read_image(rotated).width, read_image(rotated).height)
    deep = tmp_path / "d.png"
    deep.write_bytes(encode_png16(np.zeros((3, 4, 3), dtype=np.uint16)))
    assert probe_image(deep) == ImageHeader(4, 3, 3, 16, "PNG")
    (tmp_path / "t.txt").write_text("text")
    with pytest.raises(ImageReadError, match="not an image"):
        probe_image(tmp_path / "t.txt")
    with pytest.raises(ImageReadError, match="over the limit"):
        probe_image(make_image("b.png", "RGB", size=(20, 14)), max_pixels=100)


# ---------------------------------------------------------------- streaming PNG rows


@pytest.mark.parametrize(("channels", "dtype"), [(1, np.uint8), (2, np.uint16), (3, np.uint8), (4, np.uint16)])
def test_png_stream_in_pieces_is_the_same_file_as_write_png(channels: int, dtype: type) -> None:
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, np.iinfo(dtype).max + 1, size=(37, 23, channels), dtype=dtype)
    icc = srgb_icc() if channels >= 3 else None
    whole = io.BytesIO()
    write_png(whole, pixels, icc)
    pieces = io.BytesIO()
    stream = PngStream(pieces, 23, 37, channels, 8 * np.dtype(dtype).itemsize, icc)
    stream.block_rows = 5  # several compressed blocks per piece, too
    for start, stop in [(0, 1), (1, 14), (14, 30), (30, 37)]:
        stream.write_rows(pixels[start:stop])
    stream.close()
    assert pieces.getvalue() == whole.getvalue()  # the same bytes: zlib buffers these few rows until the end
    assert np.array_equal(decode_image(pieces.getvalue(), name="x.png").to_pixels().pixels, pixels)
    if dtype == np.uint8:
        assert Image.open(io.BytesIO(pieces.getvalue())).info.get("icc_profile") == icc


def test_png_stream_checks_its_rows() -> None:
    stream = PngStream(io.BytesIO(), 4, 3, 3, 8)
    with pytest.raises(ValueError, match="uint8 rows"):
        stream.write_rows(np.zeros((1, 4, 3), dtype=np.uint16))
    with pytest.raises(ValueError, match="n x 4 x 3"):
        stream.write_rows(np.zeros((1, 5, 3), dtype=np.uint8))
    stream.write_rows(np.zeros((2, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="more than"):
        stream.write_rows(np.zeros((2, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="2 of its 3 rows"):
        stream.close()


def test_png_rows_is_atomic_and_never_replaces_an_input(make_image, tmp_path: Path) -> None:
    pixels = u16_pattern(6, 5, 4)
    target = tmp_path / "out" / "x.png"
    icc = srgb_icc()
    with png_rows(target, 5, 6, 4, 16, icc_profile=icc) as write:
        write(pixels[:2])
        assert not target.exists()  # only a temporary file while rows still come
        write(pixels[2:])
    assert np.array_equal(read_image(target).to_pixels().pixels, pixels)
    assert read_image(target).icc_profile == icc
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.png"]
    before = target.read_bytes()
    with pytest.raises(ImageWriteError, match="already exists"):
        with png_rows(target, 5, 6, 4, 16):
            pass
    with pytest.raises(RuntimeError, match="method broke"):  # a failure mid-way leaves nothing behind
        with png_rows(target, 5, 6, 4, 16, overwrite=True) as write:
            write(pixels[:3])
            raise RuntimeError("method broke")
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["x.png"]
    src = make_image("in.png", "RGB")
    with pytest.raises(ImageWriteError, match="input"):
        with png_rows(src, 5, 6, 3, 8, overwrite=True, protect=[src]):
            pass
    with pytest.raises(OptionError, match="png"):
        with png_rows(tmp_path / "x.jpg", 5, 6, 3, 8):
            pass
