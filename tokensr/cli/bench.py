"""`tokensr bench`: run SR methods side by side on data sets; tables and figures in --out."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokensr.errors import OptionError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        required=True,
        help="comma-separated methods, each 'name' or 'name:key=value:...', e.g. "
        "'bicubic,realesrgan,span,realsrt:steps=4' (key 'weights' selects a weights path)",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        type=Path,
        metavar="DIR",
        help="data folders: with hr/ and lr/ (paired, matched by file stem) or LR images only",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 4), help="upscaling factor (default 4)")
    parser.add_argument("--device", default="cpu", help="torch device for the methods (default cpu)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),  # tokensr.inference.precision.PRECISIONS
        default="auto",
        help="the methods' arithmetic, as for upscale (default auto: bf16 on a CPU with native bfloat16)",
    )
    parser.add_argument(
        "--metrics",
        default="psnr,ssim,niqe",
        help="comma-separated metrics: psnr, ssim, ms_ssim, niqe, lpips, lpips_alex, dists "
        "(reference metrics are skipped on LR-only data; default psnr,ssim,niqe)",
    )
    parser.add_argument(
        "--metric-weights",
        metavar="DIR",
        help="folder with LPIPS/DISTS weight files (default: $TOKENSR_METRIC_WEIGHTS)",
    )
    parser.add_argument("--max-images", type=int, metavar="N", help="use only the first N images of each data set")
    parser.add_argument(
        "--tile", type=int, metavar="PX", help="tile size in LR pixels, passed to every method but bicubic"
    )
    parser.add_argument(
        "--lr-crop",
        type=int,
        metavar="PX",
        help="centre-crop the images of LR-only data sets to at most PX x PX (paired sets are scored whole)",
    )
    parser.add_argument(
        "--figures", type=int, default=3, metavar="N", help="side-by-side crop figures per data set (default 3)"
    )
    parser.add_argument("--figure-crop", type=int, default=48, metavar="PX", help="crop side in LR pixels (default 48)")
    parser.add_argument("--save-images", action="store_true", help="also save every SR output under OUT/images/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tokensr.bench.runner import BenchConfig, run_bench
    from tokensr.bench.spec import parse_methods
    from tokensr.metrics.suite import parse_metric_names

    for name, value in (("--max-images", args.max_images), ("--tile", args.tile), ("--lr-crop", args.lr_crop)):
        if value is not None and value < (0 if name == "--tile" else 1):
            raise OptionError(f"{name} must be positive, got {value}")
    cfg = BenchConfig(
        methods=parse_methods(args.methods),
        data=list(args.data),
        out=args.out,
        scale=args.scale,
        device=args.device,
        precision=args.precision,
        metrics=parse_metric_names(args.metrics),
        metric_weights=args.metric_weights,
        max_images=args.max_images,
        tile=args.tile,
        lr_crop=args.lr_crop,
        save_images=args.save_images,
        figures=args.figures,
        figure_crop=args.figure_crop,
        progress=not args.no_progress,
    )
    result = run_bench(cfg)
    print((result.out / "summary.md").read_text())
    return 0
