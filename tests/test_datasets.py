"""HRCropDataset / PairedFolderDataset on tiny generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tokensr.data.datasets import HRCropDataset, PairedFolderDataset, dihedral, texture_score
from tokensr.data.images import read_rgb
from tokensr.errors import ImageReadError, OptionError


def noisy_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, size=(h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    img = np.kron(base, np.ones((4, 4, 1)))[:h, :w] + rng.normal(0, 12, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hr"
    d.mkdir()
    for i, (h, w) in enumerate([(80, 96), (72, 72), (100, 64)]):
        Image.fromarray(noisy_image(h, w, i)).save(d / f"img{i}.png")
    return d


def test_items_have_the_right_shapes_and_ranges(photo_dir: Path) -> None:
    ds = HRCropDataset(photo_dir, crop_size=32, texture_threshold=0)
    item = ds[0]
    assert set(item) == {"hr", "weight"}
    assert item["hr"].shape == (3, 32, 32) and item["hr"].dtype == torch.float32
    assert 0 <= float(item["hr"].min()) and float(item["hr"].max()) <= 1
    for scale in (2, 4):
        for deg in ("realesrgan", "bsrgan", "bsrgan_plus"):
            it = HRCropDataset(photo_dir, crop_size=32, scale=scale, degradation=deg, seed=1)[2]
            assert it["hr"].shape == (3, 32, 32)
            assert it["lr"].shape == (3, 32 // scale, 32 // scale)


def test_deterministic_per_seed_epoch_and_index(photo_dir: Path) -> None:
    def make(seed: int) -> HRCropDataset:
        return HRCropDataset(photo_dir, crop_size=32, scale=4, degradation="realesrgan", seed=seed, length=6)

    a, b, c = make(5), make(5), make(6)
    for i in range(6):
        assert torch.equal(a[i]["lr"], b[i]["lr"]) and torch.equal(a[i]["hr"], b[i]["hr"])
    assert not torch.equal(a[0]["lr"], c[0]["lr"])
    assert not torch.equal(a[0]["hr"], a[3]["hr"])  # same image (index % 3), other crop
    first = a[1]["lr"].clone()
    a.set_epoch(1)
    assert not torch.equal(first, a[1]["lr"])
    a.set_epoch(0)
    assert torch.equal(first, a[1]["lr"])


def test_workers_do_not_change_the_samples(photo_dir: Path) -> None:
    ds = HRCropDataset(photo_dir, crop_size=32, scale=4, degradation="bsrgan", seed=3, length=4)
    serial = [b["lr"] for b in DataLoader(ds, batch_size=2, num_workers=0)]
    parallel = [b["lr"] for b in DataLoader(ds, batch_size=2, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(serial, parallel, strict=False))


def test_augmentation_transforms_hr_and_lr_together(photo_dir: Path) -> None:
    kw = dict(crop_size=32, scale=4, degradation="realesrgan", seed=2, length=8)
    plain = HRCropDataset(photo_dir, augment=False, **kw)
    aug = HRCropDataset(photo_dir, augment=True, **kw)
    transformed = 0
    for i in range(8):
        p, a = plain[i], aug[i]
        hr_p, lr_p = p["hr"].permute(1, 2, 0).numpy(), p["lr"].permute(1, 2, 0).numpy()
        matches = [
            (f, r)
            for f in (False, True)
            for r in range(4)
            if np.array_equal(dihedral(hr_p, f, r).transpose(2, 0, 1), a["hr"].numpy())
            and np.array_equal(dihedral(lr_p, f, r).transpose(2, 0, 1), a["lr"].numpy())
        ]
        assert matches, f"item {i}: augmented pair is not a flip/rotation of the plain pair"
        transformed += matches[0] != (False, 0)
    assert transformed >= 3


def test_unaugmented_crop_is_a_window_of_the_image(photo_dir: Path) -> None:
    ds = HRCropDataset(photo_dir, crop_size=24, augment=False, texture_threshold=0)
    img = read_rgb(photo_dir / "img1.png")
    hr = (ds[1]["hr"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    wins = np.lib.stride_tricks.sliding_window_view(img, (24, 24, 3))[:, :, 0]
    assert (wins == hr).all(axis=(2, 3, 4)).any()


def test_low_texture_crops_are_skipped_or_down_weighted(tmp_path: Path) -> None:
    d = tmp_path / "sky"
    d.mkdir()
    img = np.full((64, 128, 3), 200, np.uint8)  # left half flat "sky"
    img[:, 64:] = noisy_image(64, 64, 9)
    Image.fromarray(img).save(d / "half.png")
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(d / "flat.png")
    thr = 4.0
    assert texture_score(img[:, :64]) < 1.0 < thr < texture_score(img[:, 64:])
    skip = HRCropDataset(d, crop_size=32, texture_threshold=thr, augment=False, length=40)
    files = [p.name for p in skip.files]
    half, flat = files.index("half.png"), files.index("flat.png")
    for i in range(half, 40, 2):
        it = skip[i]
        crop = it["hr"].permute(1, 2, 0).numpy()
        assert texture_score(crop) >= thr and float(it["weight"]) == 1.0
    assert float(skip[flat]["weight"]) < 0.1  # nothing textured to find: kept but down-weighted
    weigh = HRCropDataset(d, crop_size=32, texture_threshold=thr, low_texture="weight", augment=False, length=40)
    weights = [float(weigh[i]["weight"]) for i in range(half, 40, 2)]
    assert min(weights) < 0.5 and max(weights) == 1.0
    off = HRCropDataset(d, crop_size=32, texture_threshold=0, length=4)
    assert all(float(off[i]["weight"]) == 1.0 for i in range(4))


def test_small_images_are_padded_and_options_validated(photo_dir: Path, tmp_path: Path) -> None:
    ds = HRCropDataset(photo_dir, crop_size=120, scale=4, degradation="bsrgan", texture_threshold=0)
    assert ds[1]["hr"].shape == (3, 120, 120) and ds[1]["lr"].shape == (3, 30, 30)
    with pytest.raises(OptionError):
        HRCropDataset(photo_dir, crop_size=30, scale=4)
    with pytest.raises(OptionError):
        HRCropDataset(photo_dir, crop_size=32, degradation="realesrgan")
    with pytest.raises(OptionError):
        HRCropDataset(photo_dir, crop_size=32, scale=4, degradation="unknown")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError):
        HRCropDataset(empty)


def test_lru_keeps_at_most_n_decoded_images(photo_dir: Path) -> None:
    ds = HRCropDataset(photo_dir, crop_size=16, cache_images=2, length=9)
    for i in range(9):
        ds[i]
    assert len(ds._lru) == 2
    none = HRCropDataset(photo_dir, crop_size=16, cache_images=0, length=3)
    none[0]
    assert len(none._lru) == 0


def test_pair_cache_reuses_prebuilt_pairs(photo_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kw = dict(crop_size=32, scale=4, degradation="realesrgan", seed=4, length=3)
    fresh = HRCropDataset(photo_dir, **kw)
    cached = HRCropDataset(photo_dir, cache_dir=cache, **kw)
    first = [cached[i] for i in range(3)]
    assert len(list(cache.glob("v000/*.npz"))) == 3
    for i in range(3):  # variant 0 == epoch 0 of the uncached dataset
        assert torch.equal(first[i]["lr"], fresh[i]["lr"])
    # change the source image: the cache, not the file, feeds the next dataset
    Image.fromarray(np.zeros((80, 96, 3), np.uint8)).save(photo_dir / "img0.png")
    again = HRCropDataset(photo_dir, cache_dir=cache, **kw)
    assert torch.equal(again[0]["hr"], first[0]["hr"])
    again.set_epoch(3)  # one variant: same pair, fresh augmentation
    flat = lambda t: sorted(t.flatten().tolist())  # noqa: E731
    assert flat(again[0]["lr"]) == flat(first[0]["lr"])
    with pytest.raises(OptionError):
        HRCropDataset(photo_dir, cache_dir=cache, **{**kw, "seed": 5})


def test_paired_folder_dataset(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    (root / "hr").mkdir(parents=True)
    (root / "lr").mkdir()
    for i in range(2):
        hr = noisy_image(32, 48, i)
        Image.fromarray(hr).save(root / "hr" / f"a{i}.png")
        Image.fromarray(hr[::4, ::4]).save(root / "lr" / f"a{i}.png")
    ds = PairedFolderDataset(root, scale=4)
    assert len(ds) == 2 and ds.names == ["a0", "a1"]
    it = ds[1]
    assert it["hr"].shape == (3, 32, 48) and it["lr"].shape == (3, 8, 12) and it["name"] == "a1"
    assert PairedFolderDataset(hr_dir=root / "hr", lr_dir=root / "lr")[0]["lr"].shape == (3, 8, 12)
    with pytest.raises(ImageReadError):
        PairedFolderDataset(root, scale=2)[0]
    Image.fromarray(noisy_image(8, 8, 0)).save(root / "lr" / "extra.png")
    with pytest.raises(ImageReadError, match="no HR for extra"):
        PairedFolderDataset(root)


def test_read_rgb_handles_gray_alpha_and_garbage(tmp_path: Path) -> None:
    Image.fromarray(np.full((5, 6), 77, np.uint8), mode="L").save(tmp_path / "g.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    g = read_rgb(tmp_path / "g.png")
    assert g.shape == (5, 6, 3) and (g == 77).all()
    a = read_rgb(tmp_path / "a.png")
    assert a.shape == (4, 4, 3) and (a[..., 0] == 200).all() and (a[..., 1:] == 0).all()
    with pytest.raises(ImageReadError):
        read_rgb(tmp_path / "bad.png")


WORKERS_AFTER_OPENCV = """
import sys
import numpy as np
from torch.utils.data import DataLoader
from tokensr.data import build_degradation
from tokensr.data.datasets import HRCropDataset
deg = build_degradation("realesrgan")
img = np.random.default_rng(0).random((256, 256, 3), dtype=np.float32)
for k in range(4):  # parallel OpenCV calls in the parent before the workers are forked
    deg(img, np.random.default_rng(k), 4)
ds = HRCropDataset(sys.argv[1], crop_size=256, scale=4, degradation="realesrgan", length=4)
print(sum(b["lr"].shape[0] for b in DataLoader(ds, batch_size=2, num_workers=1)))
"""


def test_workers_start_after_opencv_ran_in_the_parent(tmp_path: Path) -> None:
    # OpenCV's thread pool does not survive fork(); forked workers used to hang forever here
    # (the crops must be large enough for OpenCV to parallelise its filters).
    import subprocess
    import sys

    Image.fromarray(noisy_image(300, 300, 0)).save(tmp_path / "big.png")
    out = subprocess.run(
        [sys.executable, "-c", WORKERS_AFTER_OPENCV, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"


def test_importing_tokensr_leaves_pillows_pixel_limit_alone() -> None:
    """tokensr changes no Pillow global: a user's decompression-bomb limit stays theirs."""
    import subprocess
    import sys

    code = (
        "from PIL import Image; before = Image.MAX_IMAGE_PIXELS; "
        "import tokensr, tokensr.data.images, tokensr.data.datasets, tokensr.io.read, tokensr.bench.runner; "
        "assert Image.MAX_IMAGE_PIXELS == before, Image.MAX_IMAGE_PIXELS"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pillow_fallback_keeps_pillows_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images only Pillow decodes: between Pillow's warning and error limits they read quietly;
    past the error limit they are a clear ImageReadError."""
    import warnings

    import tokensr.data.images as images

    path = tmp_path / "p.png"
    Image.fromarray(noisy_image(20, 20, 3)).save(path)
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a, **k: None)  # force the Pillow path
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 px: warning zone (error above 600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_rgb(path).shape == (20, 20, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 px > 2 x 100: Pillow refuses
    with pytest.raises(ImageReadError, match="cannot read image"):
        read_rgb(path)


def test_exclude_leaves_out_a_list_or_the_names_in_a_split_file(photo_dir: Path, tmp_path: Path) -> None:
    names = lambda ds: sorted(Path(f).name for f in ds.files)  # noqa: E731
    assert names(HRCropDataset(photo_dir, crop_size=32)) == ["img0.png", "img1.png", "img2.png"]
    assert names(HRCropDataset(photo_dir, crop_size=32, exclude=["img1.png"])) == ["img0.png", "img2.png"]
    split = tmp_path / "split.txt"
    split.write_text("# validation photos\nimg0.png\n\nimg2.png  # a comment\n", encoding="utf-8")
    ds = HRCropDataset(photo_dir, crop_size=32, exclude=split, texture_threshold=0)
    assert names(ds) == ["img1.png"]
    assert ds[0]["hr"].shape == (3, 32, 32)
    with pytest.raises(ImageReadError, match="after exclude"):
        HRCropDataset(photo_dir, crop_size=32, exclude=["img0.png", "img1.png", "img2.png"])
    with pytest.raises(OptionError, match="no such file"):
        HRCropDataset(photo_dir, crop_size=32, exclude=tmp_path / "missing.txt")
