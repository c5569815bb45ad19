"""tokensr bench: method specs, data discovery, the runner's tables and figures, the CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tokensr.bench import BenchConfig, load_dataset, parse_method, parse_methods, run_bench
from tokensr.cli import main
from tokensr.errors import OptionError
from tokensr.metrics import niqe, psnr, read_rgb, ssim


def _image(h: int, w: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int64)
    v = (xx * 73856093) ^ (yy * 19349663) ^ (seed * 83492791)
    noise = ((v * 2654435761) % (1 << 32)) >> 24
    smooth = (xx * 200 // w + yy * 50 // h + ((xx // 20 + yy // 20) % 2) * 40)[..., None]
    return np.clip(smooth + (noise[..., None] - 128) // 5 + np.array([0, 15, 30]), 0, 255).astype(np.uint8)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    """A paired x4 set (2 images, HR 208x200 with one HR not a multiple of 4) and an LR-only set."""
    paired = tmp_path / "pairs"
    (paired / "hr").mkdir(parents=True)
    (paired / "lr").mkdir()
    for i, (h, w) in enumerate([(208, 200), (202, 201)]):
        hr = _image(h, w, i)
        Image.fromarray(hr).save(paired / "hr" / f"p{i}.png")
        lr = Image.fromarray(hr[: h // 4 * 4, : w // 4 * 4]).resize((w // 4, h // 4), Image.BICUBIC)
        lr.save(paired / "lr" / f"p{i}.png")
    lr_only = tmp_path / "wild"
    lr_only.mkdir()
    for i in range(3):
        Image.fromarray(_image(56 + 4 * i, 60, 10 + i)).save(lr_only / f"w{i}.jpg", quality=90)
    (lr_only / "notes.txt").write_text("not an image")
    return paired, lr_only


class Nearest:
    """A stand-in SR method: nearest-neighbour upscaling, optionally shifted by ``steps``."""

    def __init__(self, scale: int, steps: int = 0, brighten: float = 0.0) -> None:
        self.name, self.scale, self.steps, self.brighten = "nearest", scale, steps, brighten
        self.calls = 0

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        up = lr.repeat_interleave(self.scale, 2).repeat_interleave(self.scale, 3)
        return (up + self.brighten * self.steps).clamp(0, 1)


def fake_build(name: str, scale: int = 4, weights: str | None = None, device: str = "cpu", **options: Any) -> Any:
    if name == "bicubic":
        from tokensr.methods import build_method

        return build_method(name, scale, weights, device, **options)
    if name != "nearest":
        raise OptionError(f"unknown method '{name}'")
    return Nearest(scale, **options)


def test_parse_method_specs() -> None:
    spec = parse_method("realsrt:steps=4:alpha=0.5:weights=/w/model:fast=true:tag=x")
    assert spec.name == "realsrt" and spec.label == "realsrt:steps=4:alpha=0.5:weights=/w/model:fast=true:tag=x"
    assert spec.options == {"steps": 4, "alpha": 0.5, "fast": True, "tag": "x"}
    assert spec.weights == "/w/model" and spec.steps == 4
    assert [s.label for s in parse_methods("bicubic, span ,realsrt:steps=1")] == ["bicubic", "span", "realsrt:steps=1"]
    for bad in ("bicubic,bicubic", "realsrt:steps", ":x=1", ""):
        with pytest.raises(OptionError):
            parse_methods(bad)


def test_load_dataset(data: tuple[Path, Path], tmp_path: Path) -> None:
    paired, lr_only = data
    ds = load_dataset(paired)
    assert ds.paired and [s.name for s in ds.samples] == ["p0", "p1"]
    assert ds.samples[0].hr == paired / "hr" / "p0.png"
    wild = load_dataset(lr_only, max_images=2)
    assert not wild.paired and [s.name for s in wild.samples] == ["w0", "w1"]
    (paired / "lr" / "extra.png").write_bytes((paired / "lr" / "p0.png").read_bytes())
    with pytest.raises(OptionError, match="no hr/ image"):
        load_dataset(paired)
    with pytest.raises(OptionError, match="not found"):
        load_dataset(tmp_path / "missing")


def test_run_bench_tables_and_figures(data: tuple[Path, Path], tmp_path: Path) -> None:
    paired, lr_only = data
    out = tmp_path / "out"
    cfg = BenchConfig(
        methods=parse_methods("bicubic,nearest:steps=1:brighten=0.02,nearest:steps=3:brighten=0.02"),
        data=[paired, lr_only],
        out=out,
        lr_crop=52,
        figures=1,
        save_images=True,
        progress=False,
    )
    result = run_bench(cfg, build=fake_build)

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == (2 + 3) * 3
    assert {r["method"] for r in rows} == {"bicubic", "nearest:steps=1:brighten=0.02", "nearest:steps=3:brighten=0.02"}
    # Paired rows: the numbers are exactly the metrics of the saved output against the mod-cropped HR.
    r = next(r for r in rows if r["image"] == "p1" and r["method"] == "bicubic")
    sr = read_rgb(out / "images" / "pairs" / "bicubic" / "p1.png")
    hr = read_rgb(paired / "hr" / "p1.png")[:200, :200]
    assert sr.shape == (200, 200, 3)
    assert float(r["psnr"]) == pytest.approx(psnr(sr, hr, 4), abs=1e-5)
    assert float(r["ssim"]) == pytest.approx(ssim(sr, hr, 4), abs=1e-6)
    assert float(r["niqe"]) == pytest.approx(niqe(sr, 4), abs=1e-5)
    assert float(r["seconds"]) > 0 and float(r["s_per_mp"]) == pytest.approx(float(r["seconds"]) / 0.04, rel=1e-3)
    # LR-only rows: no reference metrics; the LR was centre-cropped to 52 px at most.
    w = next(r for r in rows if r["image"] == "w2" and r["method"] == "bicubic")
    assert w["psnr"] == "" and (int(w["lr_width"]), int(w["lr_height"])) == (52, 52)
    # Brightening by more steps moves the image further from the HR: PSNR must drop.
    by = {(r["image"], r["method"]): r for r in rows}
    assert float(by[("p0", "nearest:steps=3:brighten=0.02")]["psnr"]) < float(
        by[("p0", "nearest:steps=1:brighten=0.02")]["psnr"]
    )

    summary = {(s["dataset"], s["method"]): s for s in result.summary}
    p_rows = [float(r["psnr"]) for r in rows if r["dataset"] == "pairs" and r["method"] == "bicubic"]
    assert summary[("pairs", "bicubic")]["psnr"] == pytest.approx(sum(p_rows) / 2, abs=1e-5)
    assert summary[("wild", "bicubic")]["images"] == 3 and "psnr" not in summary[("wild", "bicubic")]
    with open(out / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    md = (out / "summary.md").read_text()
    assert "### pairs" in md and "### wild" in md and "PSNR-Y (dB) ↑" in md and "NIQE ↓" in md
    assert "| `bicubic` | 2 |" in md and "centre-cropped to at most 52x52" in md
    # Side-by-side crops: one per data set, LR + 3 methods (+ HR for the paired set).
    crops = sorted(p.name for p in (out / "figures").glob("*.png") if not p.name.startswith(("steps_", "tradeoff_")))
    assert crops == ["pairs_p0.png", "wild_w0.png"]
    with Image.open(out / "figures" / "pairs_p0.png") as im:
        assert im.width > 5 * 192
    pytest.importorskip("matplotlib")
    assert (out / "figures" / "steps_pairs.png").is_file() and (out / "figures" / "steps_wild.png").is_file()
    assert (out / "figures" / "tradeoff_pairs.png").is_file() and (out / "figures" / "tradeoff_wild.png").is_file()


def test_run_bench_rejects_bad_setups(data: tuple[Path, Path], tmp_path: Path) -> None:
    paired, _ = data
    bad_hr = tmp_path / "bad"
    (bad_hr / "hr").mkdir(parents=True)
    (bad_hr / "lr").mkdir()
    Image.fromarray(_image(40, 40, 0)).save(bad_hr / "hr" / "a.png")
    Image.fromarray(_image(20, 20, 0)).save(bad_hr / "lr" / "a.png")
    cfg = BenchConfig(methods=parse_methods("nearest"), data=[bad_hr], out=tmp_path / "o", progress=False)
    with pytest.raises(OptionError, match="smaller than LR x4"):
        run_bench(cfg, build=fake_build)
    cfg = BenchConfig(methods=parse_methods("nosuch"), data=[paired], out=tmp_path / "o2", progress=False)
    with pytest.raises(OptionError, match="unknown method"):
        run_bench(cfg, build=fake_build)


def test_cli_bench(data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paired, lr_only = data
    out = tmp_path / "cli"
    code = main(["bench", "--methods", "bicubic", "--data", str(paired), str(lr_only), "--out", str(out),
                 "--max-images", "1", "--figures", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    assert "| `bicubic` | 1 |" in capsys.readouterr().out
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and math.isfinite(float(rows[0]["psnr"]))
    assert not [p for p in (out / "figures").glob("*.png") if not p.name.startswith("tradeoff_")]
    assert main(["bench", "--methods", "nosuch", "--data", str(paired), "--out", str(out)]) == 1
    assert "unknown method" in capsys.readouterr().err
    assert (
        main(["bench", "--methods", "bicubic", "--data", str(paired), "--out", str(out), "--metrics", "psnr,foo"]) == 1
    )


def test_long_labels_wrap_inside_their_panel(tmp_path: Path) -> None:
    """A long method spec under a crop is broken onto more lines (after ':' where it can) and
    no label pixel falls into the white gap between two panels."""
    from tokensr.bench.figures import _font, side_by_side, wrap_label

    font = _font(12)
    spec = "realsrt:weights=runs/ccm_mix85:color_fix=none"
    label = spec + "\nPSNR 21.17"
    lines = wrap_label(label, font, 92).split("\n")
    assert "".join(lines) == label.replace("\n", "") and lines[-1] == "PSNR 21.17"
    assert len(lines) >= 3 and all(font.getlength(line) <= 92 for line in lines)
    assert all(line[-1] in ":,/=" for line in lines[:-2])  # broken after a separator
    assert wrap_label("short", font, 92) == "short"
    crop = np.zeros((8, 8, 3), np.uint8)
    path = side_by_side([(spec, crop), (spec, crop)], tmp_path / "fig.png", panel_size=96)
    img = np.asarray(Image.open(path).convert("L"))
    gap = img[96 + 8 :, 4 + 96 : 4 + 96 + 4]  # the column between the panels, below the crops
    assert img.shape[0] > 96 + 8 + 3 * 18 and gap.min() == 255
