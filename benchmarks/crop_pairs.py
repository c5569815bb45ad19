"""Centre crops of a paired evaluation set, for quick benchmarks (e.g. docs/realsrt_steps.md).

For every LR image of ``SRC/lr`` its central ``N x N`` LR pixels go to ``DST/lr`` and the HR
pixels under them (``scale`` times the coordinates) to ``DST/hr``, as PNG, matched by file stem.

Run::

    PYTHONPATH=. python benchmarks/crop_pairs.py ../shared/data/eval/set14_realesrgan_x4 \\
        runs/set14_x4_lrcrop64 --size 64 --scale 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image


def crop_pairs(src: Path, dst: Path, size: int, scale: int) -> int:
    """Write the crops; returns how many pairs were written."""
    from tokensr.bench.datasets import load_dataset

    ds = load_dataset(src)
    if not ds.paired:
        raise SystemExit(f"crop_pairs: error: {src} needs hr/ and lr/ folders")
    for sub in ("hr", "lr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for s in ds.samples:
        assert s.hr is not None
        lr, hr = Image.open(s.lr).convert("RGB"), Image.open(s.hr).convert("RGB")
        w, h = lr.size
        cw, ch = min(w, size), min(h, size)
        left, top = (w - cw) // 2, (h - ch) // 2
        lr.crop((left, top, left + cw, top + ch)).save(dst / "lr" / f"{s.name}.png")
        hr.crop((scale * left, scale * top, scale * (left + cw), scale * (top + ch))).save(dst / "hr" / f"{s.name}.png")
    return len(ds.samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("src", type=Path, help="paired set with hr/ and lr/")
    ap.add_argument("dst", type=Path, help="output folder (hr/ and lr/ are created)")
    ap.add_argument("--size", type=int, default=64, help="LR crop side (default 64)")
    ap.add_argument("--scale", type=int, default=4)
    args = ap.parse_args(argv)
    if args.size < 1 or args.scale < 1:
        ap.error("--size and --scale must be at least 1")
    n = crop_pairs(args.src, args.dst, args.size, args.scale)
    print(f"wrote {n} pairs to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
