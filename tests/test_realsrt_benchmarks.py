"""benchmarks/realsrt_steps.py on tiny generated data and a tiny random RealSRT (critic + CCM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bench_scripts import load_script
from PIL import Image
from tiny_models import tiny_tokenizer

from tokensr.methods.realsrt.model import RealSRT


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = RealSRT.from_preset("tiny", tiny_tokenizer(), scale=4)
    folder = tmp_path_factory.mktemp("realsrt") / "tiny"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("steps_data")
    rng = np.random.default_rng(0)
    for sub in ("pairs/hr", "pairs/lr", "lronly"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        hr = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
        Image.fromarray(hr).save(root / "pairs/hr" / f"im{i}.png")
        Image.fromarray(hr.reshape(8, 4, 12, 4, 3).mean(axis=(1, 3)).astype(np.uint8)).save(
            root / "pairs/lr" / f"im{i}.png"
        )
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(root / "lronly" / f"x{i}.png")
    return root


def test_variant_grid_order_and_specs() -> None:
    mod = load_script("realsrt_steps")
    grid = mod.variants("W", [1, 2], ["critic", "generator"], [2])
    assert [(g["T"], g["confidence"], g["ccm"]) for g in grid] == [
        (1, "critic", True),
        (2, "critic", True),
        (1, "generator", True),
        (2, "generator", True),
        (2, "critic", False),
        (2, "generator", False),
    ]
    assert grid[-1]["spec"] == "realsrt:weights=W:steps=2:confidence=generator:ccm=false"
    # the paper's study: no CCM, AdaIN, next to the raw output
    paper = mod.variants("W", [4], ["critic"], [1, 4], ["adain", "none"], (False,))
    assert [(g["T"], g["fix"]) for g in paper] == [(1, "adain"), (4, "adain"), (1, "none"), (4, "none")]
    assert paper[0]["spec"] == "realsrt:weights=W:steps=1:confidence=critic:ccm=false:color_fix=adain"


def test_steps_script_writes_one_row_per_variant(weights: Path, data: Path, tmp_path: Path) -> None:
    mod = load_script("realsrt_steps")
    out = tmp_path / "steps.md"
    rc = mod.main(
        [
            "--weights",
            str(weights),
            "--data",
            str(data / "pairs"),
            str(data / "lronly"),
            "--steps",
            "1,3",
            "--no-ccm-steps",
            "3",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| ") and not ln.startswith("| T ")]
    assert len(rows) == 6  # (1, 3) x (critic, generator) with CCM + T=3 x 2 without
    cells = [r.strip("| ").split(" | ") for r in rows]
    assert all(len(c) == 4 + 3 + 1 + 1 for c in cells)  # T, conf, CCM, fix, pairs x3, lronly NIQE, s/MP
    assert {c[3] for c in cells} == {"default"}
    psnr = [float(c[4]) for c in cells]
    assert all(np.isfinite(psnr))
    # the per-image rows of both ends of the grid are kept
    results = (tmp_path / "work" / "results.csv").read_text()
    assert "steps=1:confidence=critic:ccm=true" in results and "steps=3:confidence=generator:ccm=false" in results


def test_steps_script_refuses_other_models(tmp_path: Path) -> None:
    from tokensr.methods.ugtsr.model import UGTSR

    UGTSR.create(tiny_tokenizer(), scale=4, preset="tiny").save_pretrained(tmp_path / "u")
    mod = load_script("realsrt_steps")
    assert mod.main(["--weights", str(tmp_path / "u"), "--data", str(tmp_path)]) == 2


def test_crop_pairs_keeps_lr_and_hr_aligned(data: Path, tmp_path: Path) -> None:
    mod = load_script("crop_pairs")
    assert mod.main([str(data / "pairs"), str(tmp_path / "c"), "--size", "6", "--scale", "4"]) == 0
    for i in range(2):
        lr = np.asarray(Image.open(data / "pairs/lr" / f"im{i}.png"))  # 8 x 12
        hr = np.asarray(Image.open(data / "pairs/hr" / f"im{i}.png"))
        lr_c = np.asarray(Image.open(tmp_path / "c/lr" / f"im{i}.png"))
        hr_c = np.asarray(Image.open(tmp_path / "c/hr" / f"im{i}.png"))
        assert lr_c.shape == (6, 6, 3) and hr_c.shape == (24, 24, 3)
        assert np.array_equal(lr_c, lr[1:7, 3:9]) and np.array_equal(hr_c, hr[4:28, 12:36])
