"""`tokensr upscale` end to end, including the acceptance scenario, and `tokensr models`."""

from __future__ import annotations

import hashlib
import io
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
        capture_output=True,
        text=True,
        env=env,
        timeout=900,  # a hang guard: busy machines load torch slowly
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
    argv = [
        "upscale",
        str(src),
        "-o",
        str(tmp_path / "o"),
        "--method",
        "bicubic",
        "--steps",
        "3",
        "--alpha",
        "0.7",
        "--seed",
        "1",
        "-q",
    ]  # bicubic takes and ignores the iterative methods' options
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
    args = parser.parse_args(
        [
            "upscale",
            "in.png",
            "-o",
            str(tmp_path / "out"),
            "--steps",
            "6",
            "--confidence",
            "generator",
            "--no-ccm",
            "--save-steps",
        ]
    )
    assert method_options(args) == {
        "steps": 6,
        "confidence": "generator",
        "ccm": False,
        "save_steps": str(tmp_path / "out" / "steps"),
    }
    args = parser.parse_args(
        ["upscale", "in.png", "-o", str(tmp_path / "out"), "--color-fix", "adain", "--color-levels", "3"]
    )
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


class FakeTerminal:
    """A text stream that says it is a terminal, so tqdm draws its bar into it."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    @property
    def text(self) -> str:
        return "".join(self.parts)


def test_progress_bar_over_tiles_in_a_terminal_only(make_image, tmp_path: Path, monkeypatch) -> None:
    src = make_image("bar.png", "RGB", size=(40, 40))
    argv = ["upscale", str(src), "--method", "bicubic", "--tile", "16", "--tile-overlap", "4"]
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main([*argv, "-o", str(tmp_path / "a")]) == 0
    assert "bar.png:" in term.text and "/9 [" in term.text and "tile/s" in term.text  # 9 tiles, elapsed<ETA, rate
    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main([*argv, "-o", str(tmp_path / "b"), "-q"]) == 0
    assert "tile" not in quiet.text
    piped = io.StringIO()  # not a terminal: no bar either
    monkeypatch.setattr(sys, "stderr", piped)
    assert main([*argv, "-o", str(tmp_path / "c")]) == 0
    assert "tile" not in piped.getvalue()


def test_skip_existing_and_fail_log(make_image, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    src = tmp_path / "photos"
    for name in ("a.png", "b.png"):
        make_image(name, "RGB", folder=src)
    (src / "c.png").write_bytes(b"broken")
    out, fail_log = tmp_path / "out", tmp_path / "failed.txt"
    base = ["upscale", str(src), "-o", str(out), "--method", "bicubic", "--fail-log", str(fail_log)]
    assert main(base) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    reason = "not an image file (or a format tokensr cannot read)"
    assert fail_log.read_text().splitlines() == [f"{src / 'c.png'}: {reason}"]
    assert "failed (1):" in caplog.text and "done: 2 written, 1 failed" in caplog.text
    caplog.clear()
    # a rerun after an interruption: existing outputs are skipped, untouched
    (out / "b.png").unlink()
    before = (out / "a.png").stat().st_mtime_ns
    (src / "c.png").unlink()
    assert main([*base, "--skip-existing"]) == 0
    assert (out / "a.png").stat().st_mtime_ns == before and (out / "b.png").is_file()
    assert fail_log.read_text() == ""  # this run's failures: none
    assert "1 written, 0 failed, 1 skipped" in caplog.text
    assert main([*base, "--skip-existing", "--overwrite"]) == 2
    assert main(["upscale", str(src), "-o", str(out), "--fail-log", str(src)]) == 2  # a folder
    assert main(["upscale", str(src / "a.png"), "-o", str(out), "--fail-log", str(src / "a.png")]) == 2
    assert (src / "a.png").is_file() and Image.open(src / "a.png").size == (20, 14)


def test_dry_run_prints_sizes_time_and_memory_and_writes_nothing(make_image, tmp_path: Path, capsys) -> None:
    src = tmp_path / "photos"
    make_image("small.png", "RGB", size=(20, 10), folder=src)
    make_image("gray.jpg", "L", size=(30, 40), folder=src)
    out = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(out), "--method", "realsrt", "--dry-run", "--precision", "fp32"])
    assert rc == 0 and not out.exists()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dry run: realsrt x4 (fp32), 2 image(s)")
    gray = next(line for line in lines if "gray.jpg" in line)
    # 120 x 160 = 0.0192 MP at the table's realsrt s/MP plus the writing cost
    from tokensr.inference.costs import SECONDS_PER_MP, WRITE_SECONDS_PER_MP

    seconds = 0.0192 * (SECONDS_PER_MP["realsrt"] + WRITE_SECONDS_PER_MP)
    assert "30x40 -> 120x160" in gray and f"~{seconds:.1f}s" in gray and "peak ~" in gray and "MB" in gray
    assert lines[-1].startswith("total: ~") and "0 would fail" in lines[-1]
    out.mkdir()
    (out / "small.png").write_bytes(b"x")
    assert main(["upscale", str(src), "-o", str(out), "--method", "bicubic", "--dry-run"]) == 1
    assert "would fail:" in capsys.readouterr().out and (out / "small.png").read_bytes() == b"x"
    assert main(["upscale", str(src), "-o", str(out), "--method", "bicubic", "--dry-run", "--skip-existing"]) == 0
    assert "(exists: skipped)" in capsys.readouterr().out


def test_dry_run_estimates_follow_the_speed_table() -> None:
    from tokensr.inference.costs import SECONDS_PER_MP, WRITE_SECONDS_PER_MP, estimate

    small = estimate("ugtsr", 1000, 1000, 4, tile=512)
    big = estimate("ugtsr", 6000, 4000, 4, tile=512)
    assert small.seconds == pytest.approx((SECONDS_PER_MP["ugtsr"] + WRITE_SECONDS_PER_MP) * 16)
    assert big.seconds == pytest.approx(24 * small.seconds)
    assert (big.out_width, big.out_height) == (24000, 16000)
    # tiled: memory grows with the output's bytes, not with a float copy of it
    assert 3 * big.out_width * big.out_height < big.peak_bytes < 4e9
    assert estimate("ugtsr", 6000, 4000, 4, tile=None).peak_bytes > 2 * big.peak_bytes
    # a streamed PNG never holds the output: its 3 bytes per output pixel come off
    streamed = estimate("ugtsr", 6000, 4000, 4, tile=512, streamed=True)
    assert big.peak_bytes - streamed.peak_bytes == 3 * 24000 * 16000 and streamed.peak_bytes < 3e9


def test_dry_run_time_follows_the_precision(make_image, tmp_path: Path, capsys) -> None:
    from tokensr.inference.costs import BF16_TIME_SHARE, SECONDS_PER_MP, WRITE_SECONDS_PER_MP, estimate

    for method, share in BF16_TIME_SHARE.items():
        bf16 = estimate(method, 1000, 1000, 4, tile=512, precision="bf16")
        assert bf16.seconds == pytest.approx((SECONDS_PER_MP[method] * share + WRITE_SECONDS_PER_MP) * 16)
        assert 0.3 < share < 1.0  # measured faster, and by a plausible factor
    # bicubic runs no network: the same time either way
    assert estimate("bicubic", 900, 900, 4, tile=512, precision="bf16") == estimate("bicubic", 900, 900, 4, tile=512)
    src = make_image("one.png", "RGB", size=(25, 20))
    assert (
        main(
            ["upscale", str(src), "-o", str(tmp_path / "o"), "--method", "realsrt", "--dry-run", "--precision", "bf16"]
        )
        == 0
    )
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("dry run: realsrt x4 (bf16), 1 image(s)")


def test_dry_run_counts_the_output_only_where_it_is_held(tmp_path: Path, capsys) -> None:
    src = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000)).save(src)

    def peak(*extra: str) -> str:
        assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--method", "bicubic", "--dry-run", *extra]) == 0
        return capsys.readouterr().out.splitlines()[1].split("peak ~")[1]

    from tokensr.inference.costs import estimate, format_bytes

    held = estimate("bicubic", 3000, 2000, 4, tile=512)
    streamed = estimate("bicubic", 3000, 2000, 4, tile=512, streamed=True)
    assert held.peak_bytes - streamed.peak_bytes == 12000 * 8000 * 3
    assert peak() == format_bytes(streamed.peak_bytes)  # PNG: streamed
    assert peak("--ext", "jpg") == format_bytes(held.peak_bytes)
    resized = estimate("bicubic", 3000, 2000, 4, tile=512, final=(9000, 6000))
    assert peak("--outscale", "3") == format_bytes(resized.peak_bytes)  # resized from the held output


def test_suffix_and_ext_name_the_outputs(make_image, tmp_path: Path) -> None:
    src = tmp_path / "in"
    make_image("a.png", "RGB", folder=src)
    make_image("b.png", "RGBA", folder=src)
    out = tmp_path / "out"
    assert (
        main(["upscale", str(src), "-o", str(out), "--method", "bicubic", "--suffix", "_x4", "--ext", "WEBP", "-q"])
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.webp", "b_x4.webp"]
    with Image.open(out / "b_x4.webp") as im:
        assert im.format == "WEBP" and im.size == (80, 56) and im.mode == "RGBA"
    assert main(["upscale", str(src), "-o", str(out), "--ext", "gif"]) == 2
    assert main(["upscale", str(src), "-o", str(out), "--suffix", "../up"]) == 2
    assert main(["upscale", str(src / "a.png"), "-o", str(tmp_path / "one.png"), "--suffix", "_x4"]) == 2


def test_recursive_mirrors_the_folder_tree(make_image, tmp_path: Path) -> None:
    src = tmp_path / "album"
    make_image("top.png", folder=src)
    make_image("a.png", folder=src / "2019" / "summer")
    make_image("a.jpg", folder=src / "2019" / "summer")  # same stem in one folder: the usual clash rule
    make_image("a.png", folder=src / "2020")  # same name, other folder: no clash
    make_image("skip.png", folder=src / ".thumbnails")
    out = src / "big"  # inside the input tree: never scanned as input
    argv = ["upscale", str(src), "-o", str(out), "--method", "bicubic", "--scale", "2", "--recursive", "-q"]
    assert main(argv) == 0
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert found == ["2019/summer/a_jpg.png", "2019/summer/a_png.png", "2020/a.png", "top.png"]
    assert main([*argv, "--skip-existing"]) == 0  # the outputs in big/ were not taken as inputs
    assert not (out / "big").exists()
    assert main(["upscale", str(src), "-o", str(tmp_path / "flat"), "--method", "bicubic", "-q"]) == 0
    assert [p.name for p in (tmp_path / "flat").iterdir()] == ["top.png"]  # without --recursive: top level


def test_outscale_resizes_the_result_to_any_factor(make_image, tmp_path: Path) -> None:
    src = make_image("o.png", "RGBA", size=(20, 14))
    for factor, size in (("2.5", (50, 35)), ("8", (160, 112)), ("1", (20, 14))):
        out = tmp_path / f"o{factor}"
        assert main(["upscale", str(src), "-o", str(out), "--method", "bicubic", "--outscale", factor, "-q"]) == 0
        img = read_image(out / "o.png")
        assert (img.width, img.height) == size and img.mode == "RGBA"
    # a factor below the model's scale is the x4 result shrunk with area averaging: close to plain bicubic x2.5
    ref = np.asarray(Image.open(src).convert("RGB").resize((50, 35), Image.Resampling.BICUBIC), dtype=np.float64)
    got = read_image(tmp_path / "o2.5" / "o.png").to_uint(8)[..., :3].astype(np.float64)
    assert np.abs(got - ref).mean() < 4
    assert main(["upscale", str(src), "-o", str(tmp_path / "x"), "--outscale", "0"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_fp16_needs_cuda(make_image, tmp_path: Path, capsys) -> None:
    assert main(["upscale", str(make_image("h.png")), "-o", str(tmp_path / "o"), "--fp16"]) == 2
    assert "--fp16 needs --device cuda" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_sigterm_mid_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """`kill` during a run: the streamed PNG's temporary file is removed, no output appears,
    the user's other files stay, and the exit is one line with status 143 (128 + SIGTERM)."""
    import signal
    import time

    src = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "tokensr", "upscale", str(src), "-o", str(out), "--method", "bicubic", "--tile", "64"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not list(out.glob(".big.png.*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its temporary file was seen"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == "tokensr: terminated" and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
