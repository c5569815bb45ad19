"""ITER alpha sweep (the paper's Fig. 7): PSNR-Y, NIQE and refinement steps against alpha.

``alpha`` is the threshold of Eq. 6: the tokens of the initial restoration ``S_l`` whose
evaluation score ``p(good)`` reaches it are trusted, and the start step ``T_s`` of the
reverse process (Algorithm 2) is the latest step whose mask keeps at least that many tokens.
A larger alpha trusts fewer tokens, so more refinement steps run and textures get stronger;
the paper finds a higher PSNR for small alpha and the best LPIPS at alpha = 0.5.

For one ITER weights folder and paired evaluation data (``--pairs ROOT`` with ``hr/`` and
``lr/`` matched by file stem, e.g. ``../shared/data/eval/set14_realesrgan_x4``), every image
is upscaled once per alpha with the deterministic sampler. The table has one row per alpha:
mean PSNR-Y (BasicSR conventions: MATLAB Y channel, border = scale), mean NIQE of the
outputs (n/a for outputs smaller than two 96x96 NIQE blocks), the mean number of refinement
steps actually run (``T_s``; averaged over tiles for tiled images), the share of ``S_l``'s
tokens judged good, and seconds per image. ``--crop N`` scores centre crops of at most
``N x N`` LR pixels (and the matching HR region) for speed; the numbers are then not
comparable with whole-image results.

Run::

    PYTHONPATH=. python benchmarks/iter_alpha_sweep.py --weights runs/iter_small/export \\
        --pairs ../shared/data/eval/set14_realesrgan_x4 --crop 64 --out docs/iter_alpha_sweep.md

``--color-fix none`` sweeps the raw output: with the default wavelet fix the PSNR column mostly
shows the fix, which takes the coarse image from the LR whatever alpha is.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0


@dataclass
class Row:
    alpha: float
    psnr: list[float] = field(default_factory=list)
    niqe: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    good: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def parse_alphas(text: str) -> list[float]:
    """``0,0.25,0.5`` or ``START:STOP:STEP`` (STOP included) -> sorted list of thresholds in [0, 1]."""
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"alphas '{text}': expected START:STOP:STEP")
        start, stop, step = (float(p) for p in parts)
        if step <= 0:
            raise argparse.ArgumentTypeError("alphas: STEP must be positive")
        n = int(math.floor((stop - start) / step + 1e-9))
        values = [round(start + i * step, 6) for i in range(n + 1)]
    else:
        try:
            values = [float(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"alphas '{text}': not a comma-separated list of numbers") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"alphas '{text}': give values in [0, 1]")
    return sorted(set(values))


def centre_crop(lr: np.ndarray, hr: np.ndarray, size: int | None, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``size x size`` LR pixels from the centre, and the HR region they cover."""
    if size is None:
        return lr, hr
    h, w = lr.shape[:2]
    ch, cw = min(h, size), min(w, size)
    top, left = (h - ch) // 2, (w - cw) // 2
    lr = lr[top : top + ch, left : left + cw]
    hr = hr[top * scale : (top + ch) * scale, left * scale : (left + cw) * scale]
    return lr, hr


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _cell(value: float, fmt: str) -> str:
    return "n/a" if not math.isfinite(value) else format(value, fmt)


def sweep(
    method: Any, pairs: list[Path], alphas: list[float], crop: int | None, max_images: int | None, device: str
) -> tuple[list[Row], int]:
    """Upscale every pair once per alpha; returns the rows and the number of images."""
    from tokensr.bench.datasets import load_dataset
    from tokensr.bench.runner import load_pair
    from tokensr.errors import OptionError, TokensrError
    from tokensr.metrics import niqe, psnr, quantize

    scale = int(method.scale)
    rows = [Row(a) for a in alphas]
    images = 0
    for root in pairs:
        ds = load_dataset(root, max_images)
        if not ds.paired:
            raise OptionError(f"{root}: the sweep needs paired data (hr/ and lr/ folders)")
        for sample in ds.samples:
            lr_u8, hr_u8 = load_pair(sample, scale, None)
            assert hr_u8 is not None
            lr_u8, hr_u8 = centre_crop(lr_u8, hr_u8, crop, scale)
            x = torch.from_numpy(np.ascontiguousarray(lr_u8.transpose(2, 0, 1))).float().div(255.0)[None].to(device)
            images += 1
            for row in rows:
                method.alpha = row.alpha
                t0 = time.perf_counter()
                info = method.upscale_with_info(x)
                row.seconds.append(time.perf_counter() - t0)
                sr = quantize(info.image.cpu())
                row.psnr.append(psnr(sr, hr_u8, scale))
                try:
                    row.niqe.append(float(niqe(sr, scale)))
                except TokensrError:  # too small for NIQE's 96x96 blocks
                    row.niqe.append(math.nan)
                row.steps.append(float(info.steps_run))
                row.good.append(100.0 * sum(info.good_fraction) / max(len(info.good_fraction), 1))
    return rows, images


def markdown(rows: list[Row], default_alpha: float | None = None) -> str:
    head = ["alpha", "PSNR-Y (dB)", "NIQE", "steps run (mean T_s)", "S_l tokens judged good (%)", "s / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = " (default)" if default_alpha is not None and math.isclose(r.alpha, default_alpha) else ""
        cells = [
            f"{r.alpha:.2f}{mark}",
            _cell(_mean(r.psnr), ".2f"),
            _cell(_mean(r.niqe), ".3f"),
            _cell(_mean(r.steps), ".2f"),
            _cell(_mean(r.good), ".1f"),
            _cell(_mean(r.seconds), ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    with torch.no_grad():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--weights", required=True, help="ITER weights folder (or bundled name)")
    ap.add_argument("--pairs", nargs="+", required=True, type=Path, help="folders with hr/ and lr/")
    ap.add_argument(
        "--alphas",
        type=parse_alphas,
        default=list(DEFAULT_ALPHAS),
        help="comma list or START:STOP:STEP (default 0:1:0.1)",
    )
    ap.add_argument("--steps", type=int, default=None, help="T (default: the model's)")
    ap.add_argument("--crop", type=int, default=None, metavar="N", help="score centre crops of at most N x N LR px")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument(
        "--tile", type=int, default=None, help="LR tile side (default: the method's automatic rule; 0 = off)"
    )
    ap.add_argument(
        "--color-levels",
        type=int,
        default=None,
        metavar="N",
        help="wavelet levels of the colour fix (default: the method's)",
    )
    ap.add_argument(
        "--color-fix",
        default=None,
        metavar="KIND",
        help="colour fix (default: the method's; 'none' shows what ITER itself does)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    if args.crop is not None and args.crop < 1:
        ap.error("--crop must be at least 1")

    from tokensr.api import method_for_weights
    from tokensr.errors import OptionError
    from tokensr.methods.iter.method import build

    try:
        kind, folder, config = method_for_weights(args.weights)
        if kind != "iter":
            raise OptionError(f"{args.weights} holds a {kind} model, not an iter model")
        options: dict[str, Any] = {} if args.steps is None else {"steps": args.steps}
        if args.tile is not None:
            options["tile"] = args.tile
        if args.color_levels is not None:
            options["color_levels"] = args.color_levels
        if args.color_fix is not None:
            options["color_fix"] = args.color_fix
        method = build(scale=int(config.get("scale", 4)), weights=str(folder), device=args.device, **options)
        if not method.model.can_refine:
            raise OptionError(f"{args.weights} has no refinement/evaluation networks (LQ-encoder stage only)")
        rows, images = sweep(method, args.pairs, args.alphas, args.crop, args.max_images, args.device)
    except OptionError as e:
        print(f"iter_alpha_sweep: error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        print(
            f"alpha {r.alpha:.2f}: PSNR-Y {_mean(r.psnr):.3f}, NIQE {_mean(r.niqe):.3f}, steps {_mean(r.steps):.2f}",
            file=sys.stderr,
        )
    cfg = method.model.config
    crop = f", centre crops of at most {args.crop}x{args.crop} LR px" if args.crop else ", whole images"
    note = (
        f"\nModel: {args.weights} (x{method.scale}, T = {method.steps}, {cfg.schedule} schedule, deterministic "
        f"sampler; default alpha {cfg.alpha}; colour fix {method.color}, {method.color_levels} wavelet levels). "
        f"Data: {', '.join(p.name for p in args.pairs)}, "
        f"{images} images{crop}. PSNR on the Y channel with a border of the scale; NIQE of the outputs "
        f"(n/a: smaller than two 96x96 blocks); means over images.\n"
    )
    table = markdown(rows, cfg.alpha)
    print(table + note)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# ITER alpha sweep (Fig. 7)\n\n" + table + note, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
