"""The UGTSR benchmark scripts on tiny generated data and a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_scripts import load_script
from PIL import Image

from tokensr.methods.ugtsr.model import UGTSR
from tokensr.nn.vqgan import VQGAN, VQGANConfig


def _model(folder: Path, top_k: int, align: bool, uncertainty_loss: str) -> Path:
    torch.manual_seed(0)
    tok = VQGAN(
        VQGANConfig(ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16)
    )
    tok.train()
    with torch.no_grad():
        tok(torch.rand(2, 3, 32, 32) * 2 - 1)
    model = UGTSR.create(tok.eval(), scale=4, preset="tiny", top_k=top_k, align_attention=align)
    model.config.training = {"stage": "udl", "uncertainty_loss": uncertainty_loss}
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    for sub in ("pairs/hr", "pairs/lr", "lronly", "hronly"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        hr = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
        Image.fromarray(hr).save(root / "pairs/hr" / f"im{i}.png")
        lr = hr.reshape(8, 4, 10, 4, 3).mean(axis=(1, 3)).astype(np.uint8)
        Image.fromarray(lr).save(root / "pairs/lr" / f"im{i}.png")
        Image.fromarray(lr).save(root / "lronly" / f"im{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "hronly" / f"h{i}.png")
    _model(root / "full", 3, True, "udl")
    _model(root / "plain", 1, False, "none")
    return root


def test_matching_accuracy_script(data: Path) -> None:
    script = load_script("ugtsr_matching_accuracy")
    out = data / "matching.md"
    rc = script.main(
        [
            "--weights",
            f"k3={data / 'full'}",
            str(data / "plain"),
            "--pairs",
            str(data / "pairs"),
            "--hr",
            str(data / "hronly"),
            "--crop",
            "32",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("| ")]
    assert "top-5 (%)" in lines[0]
    rows = lines[1:]
    assert len(rows) == 4  # 2 models x (paired set, synthetic set)
    assert rows[0].startswith("| k3 (k=3, x4) on pairs | 2 | 160 |")  # 2 images of 8x10 tokens
    assert rows[2].startswith("| plain (k=1, x4) on pairs |")
    assert "hronly (bsrgan)" in rows[1]
    for row in rows:
        cells = [float(c) for c in row.strip("| ").split(" | ")[3:]]
        assert cells[0] <= cells[1] <= cells[2] <= 100.0


def test_ablation_script(data: Path) -> None:
    script = load_script("ugtsr_ablation")
    out = data / "ablation.md"
    rc = script.main(
        [
            "--weights",
            f"full={data / 'full'}",
            f"k1={data / 'plain'}",
            "--pairs",
            str(data / "pairs"),
            "--lr-only",
            str(data / "lronly"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| variant | uncertainty | top-k | align-attention | PSNR-Y (dB) | SSIM-Y | NIQE |")
    full, k1 = lines[1], lines[2]
    assert full.startswith("| full | ✓ (UDL) | 3 | ✓ |") and k1.startswith("| k1 | × | 1 | × |")
    psnr = float(full.split(" | ")[4])
    assert 0 < psnr < 60  # a real PSNR of a random model against the HR
    config = json.loads((data / "full" / "config.json").read_text())
    assert script.switches(config)["top-k"] == "3"


def test_ablation_script_scores_raw_and_fixed_and_averages_seeds(data: Path) -> None:
    """One model run gives the raw and the colour-fixed rows; NAME@SEED runs get a mean row."""
    script = load_script("ugtsr_ablation")
    out = data / "ablation_fixes.md"
    weights = [f"full@0={data / 'full'}", f"full@1={data / 'full'}", f"k1={data / 'plain'}"]
    rc = script.main(
        ["--weights", *weights, "--pairs", str(data / "pairs"), "--color-fix", "none,wavelet", "--out", str(out)]
    )
    assert rc == 0
    text = out.read_text()
    raw, fixed = text.split("## colour fix `wavelet`")
    assert "## raw output (`--color-fix none`)" in raw

    def rows(part: str) -> dict[str, list[str]]:
        lines = [ln for ln in part.splitlines() if ln.startswith("| ") and not ln.startswith("| variant")]
        return {ln.split(" | ")[0][2:]: ln.strip("| ").split(" | ") for ln in lines}

    raw_rows, fixed_rows = rows(raw), rows(fixed)
    assert set(raw_rows) == set(fixed_rows) == {"full@0", "full@1", "k1", "**full** (mean of 2)"}
    mean = fixed_rows["**full** (mean of 2)"]
    assert mean[4] == f"{float(fixed_rows['full@0'][4]):.2f} (0.00)"  # the same model twice: no spread
    assert raw_rows["full@0"][4] != fixed_rows["full@0"][4]  # the fix changed the output
    with pytest.raises(SystemExit):
        script.main(["--weights", f"k1={data / 'plain'}", "--pairs", str(data / "pairs"), "--color-fix", "sepia"])
