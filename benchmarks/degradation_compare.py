"""Compare tokensr's synthetic degradations with outputs of the authors' own code.

Two steps:

``prepare`` turns photos (by default the held-out validation split, benchmarks/val_split.txt,
of ``shared/data/train``) into fixed HR sets: ``OUT/hr_768x512`` (landscape, short side scaled
to 512 with area interpolation, centre crop 768x512; portrait photos are turned first) and
``OUT/hr_512`` (the centre 512x512 of those, for BSRGAN, whose code works on square patches).

``compare`` degrades an HR folder with a tokensr pipeline under several seeds (image ``i`` of
seed ``s`` uses ``default_rng([s, i])``) and measures every LR:

- ``niqe_up``: NIQE (tokensr.metrics.niqe) of the LR upsampled x4 with MATLAB-style bicubic;
- ``psnr_y``: PSNR on Y (MATLAB coefficients, 4-px border) of that upsampled LR against the HR;
- ``noise``: Immerkaer's noise sigma estimate on the LR's Y, 8-bit units;
- ``sharpness``: mean gradient magnitude of the LR's Y over that of the area-downscaled HR;
- ``blockiness``: mean absolute step across the 8-px grid over that inside blocks, on the LR's
  Y (1 = no visible JPEG grid).

With ``--reference DIR`` (``DIR/seed*/<stem>.png``, written by running the authors' code on the
same HR folder, see docs/degradations.md) the same numbers are computed for the reference, and
the table shows mean +- std over seeds for both sides (the per-seed value is the mean over the
images).

    PYTHONPATH=. python benchmarks/degradation_compare.py prepare runs/degcmp
    PYTHONPATH=. python benchmarks/degradation_compare.py compare runs/degcmp/hr_768x512 \
        --pipeline realesrgan --seeds 6 --reference runs/degcmp/ref_realesrgan \
        [--set jpeg_backend=libjpeg] [--json out.json] [--save-lr DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tokensr.data import build_degradation, ops
from tokensr.data.images import list_images, read_rgb, write_png

SCALE = 4
BORDER = 4
HERE = Path(__file__).resolve().parent
STATS = ("niqe_up", "psnr_y", "noise", "sharpness", "blockiness")


# ------------------------------------------------------------------------------ preparing


def split_names(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def fit_crop(img: np.ndarray, w: int = 768, h: int = 512) -> np.ndarray:
    """Landscape orientation, short side scaled (area) to cover ``w`` x ``h``, centre crop."""
    if img.shape[0] > img.shape[1]:
        img = np.ascontiguousarray(np.rot90(img))
    f = max(h / img.shape[0], w / img.shape[1])
    nh, nw = max(h, round(img.shape[0] * f)), max(w, round(img.shape[1] * f))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    top, left = (nh - h) // 2, (nw - w) // 2
    return np.ascontiguousarray(img[top : top + h, left : left + w])


def prepare(args: argparse.Namespace) -> int:
    root = Path(args.photos_root)
    names = split_names(Path(args.list))
    out = Path(args.out)
    (out / "hr_768x512").mkdir(parents=True, exist_ok=True)
    (out / "hr_512").mkdir(parents=True, exist_ok=True)
    for n in names:
        img = fit_crop(read_rgb(root / n))
        stem = Path(n).stem
        write_png(out / "hr_768x512" / f"{stem}.png", img)
        write_png(out / "hr_512" / f"{stem}.png", np.ascontiguousarray(img[:, 128:640]))
    print(f"{len(names)} photos -> {out}/hr_768x512 and {out}/hr_512")
    return 0


# ------------------------------------------------------------------------------ statistics


def y_channel(img8: np.ndarray) -> np.ndarray:
    """Y of YCbCr (BT.601, MATLAB ``rgb2ycbcr``), 8-bit units, float64."""
    x = img8.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def psnr_y(a8: np.ndarray, b8: np.ndarray, border: int = BORDER) -> float:
    ya, yb = y_channel(a8), y_channel(b8)
    ya, yb = ya[border:-border, border:-border], yb[border:-border, border:-border]
    mse = float(np.mean((ya - yb) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def noise_sigma(y: np.ndarray) -> float:
    """Immerkaer (1996) fast noise estimate: |I * M| summed, M the difference of two Laplacians."""
    m = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    r = cv2.filter2D(y.astype(np.float64), cv2.CV_64F, m)[1:-1, 1:-1]
    h, w = r.shape
    return float(math.sqrt(math.pi / 2.0) * np.abs(r).sum() / (6.0 * h * w))


def gradient(y: np.ndarray) -> float:
    gx = np.diff(y, axis=1)[:-1]
    gy = np.diff(y, axis=0)[:, :-1]
    return float(np.mean(np.hypot(gx, gy)))


def blockiness(y: np.ndarray) -> float:
    """Mean |step| across 8-px block edges (columns/rows 8k-1 -> 8k) over the mean |step| elsewhere."""
    dx = np.abs(np.diff(y, axis=1))
    dy = np.abs(np.diff(y, axis=0))
    ex = (np.arange(dx.shape[1]) % 8) == 7
    ey = (np.arange(dy.shape[0]) % 8) == 7
    edge = dx[:, ex].sum() + dy[ey].sum()
    n_edge = dx[:, ex].size + dy[ey].size
    inner = dx[:, ~ex].sum() + dy[~ey].sum()
    n_inner = dx[:, ~ex].size + dy[~ey].size
    return float((edge / n_edge) / max(inner / n_inner, 1e-6))


def upsample(lr8: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return ops.to_uint8(ops.imresize_matlab(lr8.astype(np.float32) / 255.0, hw))


def measure(hr8: np.ndarray, lr8: np.ndarray, niqe: Callable[[np.ndarray], float]) -> dict[str, float]:
    h, w = hr8.shape[:2]
    up = upsample(lr8, (h, w))
    area = cv2.resize(hr8, (w // SCALE, h // SCALE), interpolation=cv2.INTER_AREA)
    y_lr = y_channel(lr8)
    return {
        "niqe_up": niqe(up),
        "psnr_y": psnr_y(up, hr8),
        "noise": noise_sigma(y_lr),
        "sharpness": gradient(y_lr) / max(gradient(y_channel(area)), 1e-6),
        "blockiness": blockiness(y_lr),
    }


def seed_summary(per_seed: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    return {k: (float(np.mean([r[k] for r in per_seed])), float(np.std([r[k] for r in per_seed]))) for k in STATS}


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``a.b=value`` strings -> nested override mapping (values parsed as JSON when they can be)."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def compare(args: argparse.Namespace) -> int:
    from tokensr.metrics.niqe import niqe as niqe_fn

    def niqe(img8: np.ndarray) -> float:
        return float(niqe_fn(img8))

    hr_dir = Path(args.hr)
    files = list_images(hr_dir)
    if args.limit:
        files = files[: args.limit]
    hrs = [read_rgb(p) for p in files]
    spec = {"name": args.pipeline, **parse_sets(args.set)}
    deg = build_degradation(spec)
    t0 = time.time()
    result: dict[str, Any] = {"hr": str(hr_dir), "images": len(files), "pipeline": spec, "seeds": args.seeds}

    ours: list[dict[str, float]] = []
    for s in range(args.seeds):
        rows = []
        for i, hr8 in enumerate(hrs):
            lr, _ = deg(ops.as_float_image(hr8), np.random.default_rng([s, i]), SCALE)
            lr8 = ops.to_uint8(lr)
            if args.save_lr:
                (Path(args.save_lr) / f"seed{s}").mkdir(parents=True, exist_ok=True)
                write_png(Path(args.save_lr) / f"seed{s}" / f"{files[i].stem}.png", lr8)
            rows.append(measure(hr8, lr8, niqe))
        ours.append({k: float(np.mean([r[k] for r in rows])) for k in STATS})
        print(f"tokensr seed {s}: " + ", ".join(f"{k} {ours[-1][k]:.3f}" for k in STATS), flush=True)
    if ours:
        result["tokensr"] = {"per_seed": ours, "summary": seed_summary(ours)}

    ref: list[dict[str, float]] = []
    if args.reference:
        seeds = sorted(p for p in Path(args.reference).glob("seed*") if p.is_dir())
        for sd in seeds:
            rows = [measure(hr8, read_rgb(sd / f"{p.stem}.png"), niqe) for p, hr8 in zip(files, hrs, strict=True)]
            ref.append({k: float(np.mean([r[k] for r in rows])) for k in STATS})
            print(f"reference {sd.name}: " + ", ".join(f"{k} {ref[-1][k]:.3f}" for k in STATS), flush=True)
        result["reference"] = {"dir": str(args.reference), "per_seed": ref, "summary": seed_summary(ref)}

    print(f"\n{args.pipeline} {parse_sets(args.set) or ''}: {len(files)} images, {time.time() - t0:.0f} s")
    columns = [("tokensr", ours), ("reference", ref)]
    columns = [(name, rows) for name, rows in columns if rows]
    sums = [seed_summary(rows) for _, rows in columns]
    print(
        "| statistic | "
        + " | ".join(f"{n} ({len(r)} seeds)" for n, r in columns)
        + (" | difference |" if len(columns) == 2 else " |")
    )
    print("|---|" + "---:|" * (len(columns) + (len(columns) == 2)))
    for k in STATS:
        cells = [f"{sm[k][0]:.3f} +- {sm[k][1]:.3f}" for sm in sums]
        if len(sums) == 2:
            cells.append(f"{sums[0][k][0] - sums[1][k][0]:+.3f}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="build the fixed HR sets")
    p.add_argument("out")
    p.add_argument("--list", default=str(HERE / "val_split.txt"))
    p.add_argument("--photos-root", default=str(HERE.parent.parent / "shared" / "data" / "train"))
    c = sub.add_parser("compare", help="degrade with tokensr and compare with a reference folder")
    c.add_argument("hr", help="HR folder (from prepare)")
    c.add_argument("--pipeline", default="realesrgan")
    c.add_argument("--seeds", type=int, default=6)
    c.add_argument("--reference", default=None, help="DIR/seed*/<stem>.png made by the authors' code")
    c.add_argument("--set", action="append", default=[], help="config override, e.g. pass2.jpeg_range=[60,95]")
    c.add_argument("--limit", type=int, default=0, help="use only the first N images")
    c.add_argument("--save-lr", default=None, help="also write tokensr's LR images here")
    c.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    return prepare(args) if args.cmd == "prepare" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
