"""benchmarks/memory_peak.py: one real `tokensr upscale` child on a tiny synthetic photo."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bench_scripts import load_script
from PIL import Image

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_row_log_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("memory_peak")
    assert script.main(["--size", "40x30", "--method", "bicubic", "--out", str(tmp_path), "--every", "0.2"]) == 0
    row = capsys.readouterr().out.strip()
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "40x30" and cells[1] == "bicubic" and cells[-1] == "ok"
    peak_gb = float(cells[2].split()[0])
    assert 0.02 < peak_gb < 4  # a Python process with torch, not zero and not absurd
    with Image.open(tmp_path / "result" / "photo_40x30.png") as out:
        assert out.size == (160, 120)  # the run really upscaled the photo x4
    last = (tmp_path / "memory.log").read_text().splitlines()[-1].split()
    assert last[-2:] == ["exit", "0"] and abs(int(last[1]) / 1e6 - peak_gb) < 0.01


def test_bad_size_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_script("memory_peak").main(["--size", "big", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "memory_peak: error: --size must be WIDTHxHEIGHT, got big"
