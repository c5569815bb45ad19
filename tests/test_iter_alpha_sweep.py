"""benchmarks/iter_alpha_sweep.py on a tiny random ITER model and two tiny generated pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_scripts import load_script
from PIL import Image

from tokensr.methods.iter.model import ITER
from tokensr.nn.vqgan import VQGAN, VQGANConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    for sub in ("pairs/hr", "pairs/lr", "lronly"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        hr = rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)
        lr = hr.reshape(8, 4, 6, 4, 3).mean(axis=(1, 3)).astype(np.uint8)
        Image.fromarray(hr).save(root / "pairs/hr" / f"im{i}.png")
        Image.fromarray(lr).save(root / "pairs/lr" / f"im{i}.png")
        Image.fromarray(lr).save(root / "lronly" / f"im{i}.png")
    torch.manual_seed(0)
    tok = VQGAN(
        VQGANConfig(ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16)
    ).eval()
    ITER.from_preset("tiny", tok, scale=4).save_pretrained(root / "iter")
    ITER.create(
        tok, {"ch": 8, "res_blocks": 1, "dim": 16, "groups": 1, "depth": 2, "heads": 2, "window": 4}
    ).save_pretrained(root / "lq_only")
    return root


def _rows(table: Path) -> list[list[str]]:
    lines = [ln for ln in table.read_text().splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| alpha | PSNR-Y (dB) | NIQE | steps run")
    return [ln.strip("| ").split(" | ") for ln in lines[1:]]


def test_sweep_table_has_a_row_per_alpha(data: Path) -> None:
    script = load_script("iter_alpha_sweep")
    out = data / "sweep.md"
    assert script.main(["--weights", str(data / "iter"), "--pairs", str(data / "pairs"), "--out", str(out)]) == 0
    rows = _rows(out)
    alphas = [float(r[0].split()[0]) for r in rows]
    assert alphas == [round(0.1 * i, 1) for i in range(11)]
    assert rows[5][0] == "0.50 (default)"
    steps = [float(r[3]) for r in rows]
    assert steps == sorted(steps)  # non-decreasing in alpha
    assert steps[0] == 1.0 and steps[-1] == 8.0  # alpha 0 trusts every token; alpha 1 (almost) none
    good = [float(r[4]) for r in rows]
    assert good == sorted(good, reverse=True) and good[0] == 100.0
    for r in rows:
        assert float(r[1]) > 0  # PSNR-Y
        assert r[2] == "n/a"  # 32x24 outputs are too small for NIQE's 96x96 blocks
    assert "2 images, whole images" in out.read_text()


def test_sweep_with_crop_and_steps(data: Path) -> None:
    script = load_script("iter_alpha_sweep")
    out = data / "crop.md"
    rc = script.main(
        [
            "--weights",
            str(data / "iter"),
            "--pairs",
            str(data / "pairs"),
            "--alphas",
            "0:1:0.5",
            "--steps",
            "4",
            "--crop",
            "4",
            "--color-levels",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = _rows(out)
    assert [r[0].split()[0] for r in rows] == ["0.00", "0.50", "1.00"]
    assert [float(r[3]) for r in rows][-1] == 4.0
    text = out.read_text()
    assert "T = 4" in text and "at most 4x4 LR px" in text and "2 wavelet levels" in text


def test_parse_alphas_and_errors(data: Path) -> None:
    script = load_script("iter_alpha_sweep")
    assert script.parse_alphas("0.5,0,0.5") == [0.0, 0.5]
    assert script.parse_alphas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(argparse.ArgumentTypeError):
        script.parse_alphas("0,1.5")
    with pytest.raises(argparse.ArgumentTypeError):
        script.parse_alphas("a,b")
    lr, hr = script.centre_crop(np.zeros((10, 12, 3)), np.zeros((40, 48, 3)), 4, 4)
    assert lr.shape == (4, 4, 3) and hr.shape == (16, 16, 3)
    # LR-only data and a model without refinement networks are clear errors (exit 2)
    assert script.main(["--weights", str(data / "iter"), "--pairs", str(data / "lronly")]) == 2
    assert script.main(["--weights", str(data / "lq_only"), "--pairs", str(data / "pairs")]) == 2
