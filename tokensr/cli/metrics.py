"""`tokensr metrics SR [HR]`: image-quality metrics for one image pair or two folders.

With HR: PSNR, SSIM (MATLAB-Y channel, ``--crop-border`` pixels cut, BasicSR conventions)
and NIQE of SR. Without HR: NIQE only. Folders are matched by file stem.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from tokensr.errors import OptionError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sr", type=Path, help="SR image or folder of SR images")
    parser.add_argument("hr", type=Path, nargs="?", help="ground-truth image or folder (optional)")
    parser.add_argument(
        "--metrics",
        help="comma-separated: psnr, ssim, ms_ssim, niqe, lpips, lpips_alex, dists "
        "(default psnr,ssim,niqe with HR, niqe without)",
    )
    parser.add_argument(
        "--crop-border",
        type=int,
        default=4,
        metavar="N",
        help="pixels cut from each edge; use the SR scale (default 4)",
    )
    parser.add_argument(
        "--metric-weights",
        metavar="DIR",
        help="folder with LPIPS/DISTS weight files (default: $TOKENSR_METRIC_WEIGHTS)",
    )
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write per-image values to this CSV file")


def _pairs(sr: Path, hr: Path | None) -> list[tuple[str, Path, Path | None]]:
    from tokensr.metrics.image import list_images

    if not sr.exists():
        raise OptionError(f"{sr}: no such file or folder")
    if hr is not None and not hr.exists():
        raise OptionError(f"{hr}: no such file or folder")
    if sr.is_file():
        if hr is not None and hr.is_dir():
            raise OptionError("SR is a file but HR is a folder: give two files or two folders")
        return [(sr.stem, sr, hr)]
    srs = list_images(sr)
    if not srs:
        raise OptionError(f"{sr}: no images found")
    if hr is None:
        return [(p.stem, p, None) for p in srs]
    if not hr.is_dir():
        raise OptionError("SR is a folder but HR is a file: give two files or two folders")
    hrs = {p.stem: p for p in list_images(hr)}
    missing = [p.name for p in srs if p.stem not in hrs]
    if missing:
        raise OptionError(f"no HR image in {hr} for {missing[0]} ({len(missing)} of {len(srs)} unmatched)")
    return [(p.stem, p, hrs[p.stem]) for p in srs]


def run(args: argparse.Namespace) -> int:
    from tokensr.metrics.image import read_rgb
    from tokensr.metrics.suite import METRICS, MetricSuite, parse_metric_names

    if args.crop_border < 0:
        raise OptionError("--crop-border must be >= 0")
    pairs = _pairs(args.sr, args.hr)
    default = "psnr,ssim,niqe" if args.hr is not None else "niqe"
    names = parse_metric_names(args.metrics or default)
    if args.hr is None:
        needs = [n for n in names if METRICS[n].needs_reference]
        if needs:
            raise OptionError(f"{', '.join(needs)} need a reference: give HR as the second argument")
    suite = MetricSuite(names, crop_border=args.crop_border, weights_dir=args.metric_weights)
    rows: list[tuple[str, dict[str, float]]] = []  # (image stem, scores by metric)
    for stem, sr_path, hr_path in pairs:
        sr = read_rgb(sr_path)
        hr = read_rgb(hr_path) if hr_path is not None else None
        if hr is not None and sr.shape != hr.shape:
            raise OptionError(f"{sr_path.name}: SR is {sr.shape[1]}x{sr.shape[0]}, HR is {hr.shape[1]}x{hr.shape[0]}")
        rows.append((stem, suite(sr, hr)))

    cols = suite.names
    width = max(5, *(len(stem) for stem, _ in rows))
    print(f"{'image':<{width}}  " + "  ".join(f"{METRICS[c].label:>12}" for c in cols))
    for stem, scores in rows:
        print(f"{stem:<{width}}  " + "  ".join(f"{_fmt(scores[c], METRICS[c].digits):>12}" for c in cols))
    if len(rows) > 1:
        means = {c: _mean([scores[c] for _, scores in rows]) for c in cols}
        print(f"{'mean':<{width}}  " + "  ".join(f"{_fmt(means[c], METRICS[c].digits):>12}" for c in cols))
    if args.csv is not None:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["image", *cols])
            w.writeheader()
            for stem, scores in rows:
                w.writerow({"image": stem, **{k: repr(round(v, 6)) for k, v in scores.items()}})
    sys.stdout.flush()
    return 0


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _fmt(v: float, digits: int) -> str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"
