"""Peak resident memory and wall time of one `tokensr upscale` run on a synthetic photo.

The table in docs/usage.md ("Memory and time") comes from this script. It makes a JPEG of the
asked size (the bundled dandelion sample resized, plus a little noise, so the encoder and the
methods see photo-like content), runs ``tokensr upscale`` on it in a child process and reports
the child's peak resident set: ``VmHWM`` sampled every few seconds into a log as it runs (so
a run that is stopped early still leaves its peak so far and how many output bytes it wrote),
and at the end the kernel's ``ru_maxrss`` for the child, the figure ``/usr/bin/time -v``
prints. Then one Markdown row.

    python benchmarks/memory_peak.py --size 6000x4000 --method realsrt --out runs/mem24
    python benchmarks/memory_peak.py --size 1155x866 --method bicubic --out runs/mem1 -- --tile 0

Arguments after ``--`` go to ``tokensr upscale``. Do not time a run beside other jobs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[1] / "tokensr" / "assets" / "samples" / "dandelion.jpg"


def make_photo(path: Path, width: int, height: int, seed: int = 0) -> None:
    """The bundled sample resized to ``width x height``, plus Gaussian noise (sigma 4), as JPEG q90."""
    with Image.open(SAMPLE) as im:
        big = np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = big + np.random.default_rng(seed).normal(0.0, 4.0, big.shape).astype(np.float32)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def vm_hwm_kb(pid: int) -> int | None:
    """The process's peak resident set in kB (Linux ``/proc``), or None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def written_bytes(folder: Path) -> int:
    """Bytes written so far: the streamed PNG's temporary file, else the finished outputs."""
    return sum(p.stat().st_size for p in folder.glob("*.png*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, extra = args_in[:cut], args_in[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", required=True, help="input WIDTHxHEIGHT, e.g. 6000x4000")
    parser.add_argument("--method", default="realsrt")
    parser.add_argument("--out", type=Path, required=True, help="folder for the photo, output and log")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args(args_in)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"memory_peak: error: --size must be WIDTHxHEIGHT, got {args.size}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    photo = args.out / f"photo_{width}x{height}.jpg"
    if not photo.exists():
        make_photo(photo, width, height)
    result = args.out / "result"
    result.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "tokensr", "upscale", str(photo), "-o", str(result), "--method", args.method]
    cmd += ["--overwrite", "-q", *extra]
    log = args.out / "memory.log"
    start = time.monotonic()
    peak = 0
    with log.open("a") as out:
        out.write(f"# {' '.join(cmd)}\n# seconds peak_kB written_bytes\n")
        child = subprocess.Popen(cmd)
        while True:
            done, wait_status, usage = os.wait4(child.pid, os.WNOHANG)
            if done:  # the kernel's own peak for the whole run (ru_maxrss, kB on Linux)
                peak = max(peak, usage.ru_maxrss)
                code = os.waitstatus_to_exitcode(wait_status)
                break
            peak = max(peak, vm_hwm_kb(child.pid) or 0)
            out.write(f"{time.monotonic() - start:.0f} {peak} {written_bytes(result)}\n")
            out.flush()
            time.sleep(args.every)
        wall = time.monotonic() - start
        out.write(f"{wall:.0f} {peak} {written_bytes(result)} exit {code}\n")
    status = "ok" if code == 0 else f"exit {code}"
    what = " ".join([args.method, *extra])
    print(f"| {width}x{height} | {what} | {peak / 1e6:.2f} GB | {wall / 60:.1f} min | {status} |")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
