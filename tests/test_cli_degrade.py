"""``tokensr degrade``: fixed synthetic benchmark folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokensr.cli import main


@pytest.fixture()
def hr_dir(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"b": (50, 37), "a": (41, 64), "c": (33, 33)}.items():
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(d / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, size=(20, 28), dtype=np.uint8), mode="L").save(d / "d.jpg")
    return d


def sizes(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.stem: Image.open(p).size for p in sorted(folder.glob("*.png"))}


@pytest.mark.parametrize("pipeline,scale", [("realesrgan", 4), ("bsrgan", 4), ("bsrgan_plus", 2)])
def test_builds_mod_cropped_pairs_and_params(hr_dir: Path, tmp_path: Path, pipeline: str, scale: int) -> None:
    out = tmp_path / "bench"
    rc = main(["degrade", str(hr_dir), str(out), "--pipeline", pipeline, "--scale", str(scale), "--seed", "7"])
    assert rc == 0
    hr, lr = sizes(out / "hr"), sizes(out / "lr")
    assert set(hr) == set(lr) == {"a", "b", "c", "d"}
    for name, (w, h) in hr.items():
        src = Image.open(next(hr_dir.glob(f"{name}.*"))).size
        assert (w, h) == (src[0] - src[0] % scale, src[1] - src[1] % scale)
        assert lr[name] == (w // scale, h // scale)
        assert Image.open(out / "lr" / f"{name}.png").mode == "RGB"
    rec = json.loads((out / "degradation_params.json").read_text())
    assert rec["pipeline"] == pipeline and rec["scale"] == scale and rec["seed"] == 7
    assert [rec["images"][n]["seed"] for n in ("a", "b", "c", "d")] == [7, 8, 9, 10]  # seed + name index
    assert rec["images"]["b"]["file"] == "b.png" and rec["images"]["b"]["lr_hw"] == [50 // scale, 37 // scale]
    assert not list(out.rglob("*.tmp"))


def test_same_seed_same_bytes_other_seed_differs(hr_dir: Path, tmp_path: Path) -> None:
    for name, seed in (("x", "0"), ("y", "0"), ("z", "1")):
        assert main(["degrade", str(hr_dir), str(tmp_path / name), "--seed", seed]) == 0
    lr = lambda d, n: (tmp_path / d / "lr" / f"{n}.png").read_bytes()  # noqa: E731
    assert all(lr("x", n) == lr("y", n) for n in "abcd")
    assert any(lr("x", n) != lr("z", n) for n in "abcd")
    # image i's LR depends only on seed + i: regenerating from its own seed gives the same file
    rec = json.loads((tmp_path / "z" / "degradation_params.json").read_text())
    assert rec["images"]["a"]["seed"] == 1


def test_refuses_non_empty_output_unless_overwrite(hr_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["degrade", str(hr_dir), str(out)]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert not (out / "lr").exists()
    assert main(["degrade", str(hr_dir), str(out), "--overwrite"]) == 0
    assert len(sizes(out / "lr")) == 4


def test_centre_crop_and_bad_options(hr_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["degrade", str(hr_dir), str(tmp_path / "c"), "--crop", "32"]) == 0
    hr = sizes(tmp_path / "c" / "hr")
    assert hr["a"] == (32, 32) and hr["d"] == (28, 20)
    assert main(["degrade", str(hr_dir), str(tmp_path / "e"), "--crop", "30"]) == 1
    empty = tmp_path / "none"
    empty.mkdir()
    assert main(["degrade", str(empty), str(tmp_path / "f")]) == 1
    assert main(["degrade", str(tmp_path / "missing"), str(tmp_path / "g")]) == 1
    assert "tokensr: error:" in capsys.readouterr().err


def test_quiet_prints_nothing_but_still_writes(hr_dir: Path, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)
    assert main(["degrade", str(hr_dir), str(tmp_path / "q"), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    assert len(list((tmp_path / "q" / "lr").glob("*.png"))) == 4
    assert main(["degrade", str(hr_dir), str(tmp_path / "loud")]) == 0
    assert "wrote 4 pairs" in capsys.readouterr().out
    assert any("a.png" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
