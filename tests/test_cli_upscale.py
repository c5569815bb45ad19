"""`tokensr upscale` end to end, including the acceptance scenario, and `tokensr models`."""
from __future__ import annotations

import hashlib
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tokensr.cli import main
from tokensr.cli.upscale import method_options, seed_everything
from tokensr.io import read_image

REPO = Path(__file__).resolve().parents[1]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def mixed_folder(tmp_path: Path, make_image) -> Path:
    """16-bit PNG, RGBA PNG, grayscale JPEG, CMYK JPEG and a corrupt file."""
    src = tmp_path / "inputs"
    src.mkdir()
    deep = np.random.default_rng(0).integers(0, 65536, size=(10, 12, 3), dtype=np.uint16)
    cv2.imwrite(str(src / "deep16.png"), deep[..., ::-1])
    make_image("rgba.png", "RGBA", size=(12, 9), folder=src)
    make_image("gray.jpg", "L", size=(11, 8), folder=src)
    make_image("cmyk.jpg", "CMYK", size=(9, 10), folder=src)
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + np.random.default_rng(1).bytes(200))
    return src


def check_outputs(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["cmyk.png", "deep16.png", "gray.png", "rgba.png"]
    expect = {  # name: (Pillow mode, bit depth, size x4)
        "deep16.png": ("RGB", 16, (48, 40)),
        "rgba.png": ("RGBA", 8, (48, 36)),
        "gray.png": ("L", 8, (44, 32)),
        "cmyk.png": ("RGB", 8, (36, 40)),
    }
    for name, (mode, bits, size) in expect.items():
        img = read_image(out / name)
        assert (img.mode, img.bit_depth, (img.width, img.height)) == (mode, bits, size), name
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    with Image.open(out / "deep16.png") as im:
        assert im.tile[0].args == "RGB;16B"  # really 16 bits per channel on disk
    assert read_image(out / "rgba.png").alpha.min() < 1.0  # the alpha survived, not flattened


def test_acceptance_mixed_folder(mixed_folder: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    inputs_before = digest(mixed_folder)
    caplog.set_level(logging.INFO)
    rc = main(["upscale", str(mixed_folder), "-o", str(out), "--quiet"])
    assert rc == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "corrupt.jpg" in errors[0] and "\n" not in errors[0]
    check_outputs(out)
    assert digest(mixed_folder) == inputs_before

    # Run again without --overwrite: nothing is replaced, every image reports why.
    outputs_before = digest(out)
    caplog.clear()
    rc = main(["upscale", str(mixed_folder), "-o", str(out), "--quiet"])
    assert rc == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 5 and sum("already exists" in e for e in errors) == 4
    assert digest(out) == outputs_before and digest(mixed_folder) == inputs_before


def test_acceptance_via_subprocess(mixed_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tokensr", "upscale", str(mixed_folder), "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1 and "corrupt.jpg" in error_lines[0]
    assert "Traceback" not in proc.stderr
    assert "4 written, 1 failed" in proc.stderr
    check_outputs(out)


def test_all_good_exits_zero_and_single_file_output(make_image, tmp_path: Path) -> None:
    src = make_image("one.png", "RGB")
    target = tmp_path / "big.jpg"
    assert main(["upscale", str(src), "-o", str(target), "--scale", "2", "--quiet"]) == 0
    with Image.open(target) as im:
        assert im.format == "JPEG" and im.size == (40, 28)
    # with --overwrite the output is replaced; the input never is
    assert main(["upscale", str(src), "-o", str(target), "--scale", "3", "--overwrite", "-q"]) == 0
    assert Image.open(target).size == (60, 42)
    assert main(["upscale", str(src), "-o", str(src), "--overwrite", "-q"]) == 1


def test_tiled_cli_matches_untiled(make_image, tmp_path: Path) -> None:
    """Pipeline tiling of a local operation (bicubic) is seamless; learned methods with
    attention see only their tile, so they are tested with a tolerance in their own tests."""
    src = make_image("t.png", "RGB", size=(40, 30))
    bic = ["--method", "bicubic", "-q"]
    assert main(["upscale", str(src), "-o", str(tmp_path / "a"), *bic]) == 0
    assert main(["upscale", str(src), "-o", str(tmp_path / "b"), "--tile", "16", "--tile-overlap", "8", *bic]) == 0
    a, b = read_image(tmp_path / "a" / "t.png").to_uint(8), read_image(tmp_path / "b" / "t.png").to_uint(8)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_usage_errors_exit_2(make_image, tmp_path: Path, capsys) -> None:
    src = make_image("u.png")
    with pytest.raises(SystemExit) as e:
        main(["upscale", str(src)])  # no -o
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["upscale", str(src), "-o", str(tmp_path / "o"), "--method", "nope"])
    assert e.value.code == 2
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--tile", "2"]) == 2
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "none")]) == 2
    assert main(["upscale", str(src), str(src), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--tile" in err and "none" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(make_image, tmp_path: Path, capsys) -> None:
    rc = main(["upscale", str(make_image("c.png")), "-o", str(tmp_path / "o"), "--device", "cuda"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "Traceback" not in err


def test_pass_through_options_only_when_given(make_image, tmp_path: Path) -> None:
    from tokensr.cli import build_parser

    parser, _ = build_parser()
    args = parser.parse_args(["upscale", "x.png", "-o", "o"])
    assert method_options(args) == {}
    args = parser.parse_args(["upscale", "x.png", "-o", "o", "--steps", "8", "--alpha", "0.5", "--save-steps"])
    assert method_options(args) == {"steps": 8, "alpha": 0.5, "save_steps": str(Path("o") / "steps")}
    src = make_image("p.png")
    argv = ["upscale", str(src), "-o", str(tmp_path / "o"), "--method", "bicubic", "--steps", "3", "--alpha", "0.7",
            "--seed", "1", "-q"]  # bicubic takes and ignores the iterative methods' options
    assert main(argv) == 0


def test_seed_everything_is_reproducible() -> None:
    seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_models_lists_methods_and_cards(capsys, tmp_path: Path, monkeypatch) -> None:
    from tokensr import pretrained

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "No bundled models" in out and "bicubic" in out
    card_dir = tmp_path / "weights" / "demo-x4"
    card_dir.mkdir(parents=True)
    (card_dir / "config.json").write_text('{"model_type": "realsrt", "scale": 4}')
    (card_dir / "README.md").write_text("# demo-x4\nA test card.\n")
    assert main(["models"]) == 0
    assert "demo-x4  (realsrt, x4)" in capsys.readouterr().out
    assert main(["models", "demo-x4"]) == 0
    assert "A test card." in capsys.readouterr().out
    assert main(["models", "missing"]) == 1


def test_method_options_forward_only_what_was_given(tmp_path: Path) -> None:
    from tokensr.cli import build_parser
    from tokensr.cli.upscale import method_options

    parser, _ = build_parser()
    args = parser.parse_args(["upscale", "in.png", "-o", str(tmp_path / "out")])
    assert method_options(args) == {}
    args = parser.parse_args(["upscale", "in.png", "-o", str(tmp_path / "out"), "--steps", "6",
                              "--confidence", "generator", "--no-ccm", "--save-steps"])
    assert method_options(args) == {"steps": 6, "confidence": "generator", "ccm": False,
                                    "save_steps": str(tmp_path / "out" / "steps")}
    args = parser.parse_args(["upscale", "in.png", "-o", str(tmp_path / "out"), "--color-fix", "adain",
                              "--color-levels", "3"])
    assert method_options(args) == {"color_fix": "adain", "color_levels": 3}
    args = parser.parse_args(["upscale", "in.png", "-o", str(tmp_path / "x.png"), "--save-steps", "figs"])
    assert method_options(args)["save_steps"] == "figs"
    args = parser.parse_args(["upscale", "in.png", "-o", str(tmp_path / "x.png"), "--save-steps"])
    assert method_options(args)["save_steps"] == str(tmp_path / "steps")


def test_default_method_is_the_best_bundled_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import tokensr.pretrained as pretrained
    from tokensr.methods import DEFAULT_METHOD, default_method

    def bundled(names: list[str]) -> None:
        monkeypatch.setattr(pretrained, "bundled_names", lambda: sorted(names))

    bundled(["vqgan-small"])
    assert default_method(4) == default_method(None) == DEFAULT_METHOD == "bicubic"
    bundled(["vqgan-small", "ugtsr-small-x4"])
    assert default_method(4) == "ugtsr" and default_method(2) == "bicubic" and default_method(3) == "bicubic"
    import tokensr.methods as methods

    monkeypatch.setattr(methods, "NOT_DEFAULT", frozenset())
    bundled(["ugtsr-small-x4", "ugtsr-small-x2", "realsrt-small-x4", "iter-small-x2"])
    assert (default_method(4), default_method(2)) == ("realsrt", "ugtsr")
    # weights below the quality bar are bundled for use by name but never the default
    monkeypatch.setattr(methods, "NOT_DEFAULT", frozenset({"realsrt-small-x4", "ugtsr-small-x2"}))
    assert (default_method(4), default_method(2)) == ("ugtsr", "iter")
