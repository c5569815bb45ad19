"""UGTSR ablation table (the paper's Table V): variant weight folders on evaluation data.

Each ``--weights`` folder is one variant (trained with the switches of docs/ugtsr.md:
uncertainty on/off, top_k 1/3/5, align_attention on/off); the switches shown in the table are
read from the folder's config (``top_k``, ``align_attention``, and ``training.uncertainty_loss``
written by the training tasks). Every variant upscales every image; the table reports
PSNR-Y / SSIM-Y (BasicSR conventions, border = scale) and NIQE of the outputs on the paired
sets (``--pairs ROOT`` with ``hr/`` + ``lr/``), NIQE on LR-only sets (``--lr-only FOLDER``,
e.g. realset65; ``--lr-crop`` centre-crops those LR images first) and seconds per image.

``--color-fix none,wavelet`` scores each output raw and colour-fixed from one run of the model:
the fix is applied to the whole output, which is what the method does for an image within one
of its tiles (``AUTO_TILE``, 256 LR pixels: all of Set14). One table per fix.

Seeds: labels ``NAME@SEED`` (``full@0=... full@1=...``) are runs of one variant; the table then
gains a row per variant with the mean over its seeds and, in brackets, the spread (max - min).

Run::

    PYTHONPATH=. python benchmarks/ugtsr_ablation.py \\
        --weights full=runs/ugtsr_udl_small_x4/export no-unc=runs/ugtsr_udl_nounc/export \\
                  k1=runs/ugtsr_udl_k1/export k5=runs/ugtsr_udl_k5/export no-aa=runs/ugtsr_udl_noaa/export \\
        --pairs ../shared/data/eval/set14_realesrgan_x4 --lr-only ../shared/data/eval/realset65 \\
        --lr-crop 128 --color-fix none,wavelet --out docs/ugtsr_ablation.md
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def parse_weights(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        label, sep, path = item.partition("=")
        out.append((label, path) if sep and path else (Path(item).name if Path(item).is_dir() else item, item))
    return out


def switches(config: dict[str, Any]) -> dict[str, str]:
    """The ablation switches of a saved UGTSR config, as table cells."""
    loss = str((config.get("training") or {}).get("uncertainty_loss", "?"))
    return {
        "uncertainty": {"udl": "✓ (UDL)", "esu": "ESU only", "none": "×"}.get(loss, "?"),
        "top-k": str(config.get("top_k", "?")),
        "align-attention": "✓" if config.get("align_attention") else "×",
    }


def centre_crop(lr: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return lr
    h, w = lr.shape[:2]
    th, tw = min(h, size), min(w, size)
    top, left = (h - th) // 2, (w - tw) // 2
    return lr[top : top + th, left : left + tw]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def evaluate(
    method: Any,
    fixes: list[str],
    pairs: list[Path],
    lr_only: list[Path],
    lr_crop: int | None,
    max_images: int | None,
    device: str,
) -> dict[str, dict[str, float]]:
    """Mean metrics per colour fix in ``fixes`` (``method`` must run with its fix off)."""
    from tokensr.data.datasets import PairedFolderDataset
    from tokensr.data.images import list_images, read_rgb
    from tokensr.errors import TokensrError
    from tokensr.inference.colorfix import color_fix
    from tokensr.metrics import niqe, psnr, quantize, ssim

    scale = method.scale

    def run(lr_u8: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        x = torch.from_numpy(np.ascontiguousarray(lr_u8.transpose(2, 0, 1))).float().div(255)[None].to(device)
        t = time.time()
        raw = method(x)
        dt = time.time() - t
        outs = {
            fix: quantize((raw if fix == "none" else color_fix(raw, x, fix, method.color_levels).clamp(0, 1)).cpu())
            for fix in fixes
        }
        return outs, dt

    def safe_niqe(img: np.ndarray) -> float:
        try:
            return float(niqe(img, scale))
        except TokensrError:
            return math.nan

    keys = ("psnr", "ssim", "niqe_paired", "niqe_lr_only", "seconds")
    res: dict[str, dict[str, list[float]]] = {fix: {k: [] for k in keys} for fix in fixes}
    for root in pairs:
        ds = PairedFolderDataset(root, scale=scale)
        for i in range(len(ds) if max_images is None else min(len(ds), max_images)):
            item = ds[i]
            hr = quantize(item["hr"])
            outs, dt = run(quantize(item["lr"]))
            for fix, sr in outs.items():
                res[fix]["psnr"].append(psnr(sr, hr, scale))
                res[fix]["ssim"].append(ssim(sr, hr, scale))
                res[fix]["niqe_paired"].append(safe_niqe(sr))
                res[fix]["seconds"].append(dt)
    for folder in lr_only:
        files = list_images(folder)[: max_images or None]
        for path in files:
            outs, dt = run(centre_crop(read_rgb(path), lr_crop))
            for fix, sr in outs.items():
                res[fix]["niqe_lr_only"].append(safe_niqe(sr))
                res[fix]["seconds"].append(dt)
    return {fix: {k: _mean(v) for k, v in r.items()} for fix, r in res.items()}


Row = tuple[str, dict[str, str], dict[str, float]]


def seed_means(rows: list[Row]) -> list[tuple[Row, dict[str, float]]]:
    """Rows of the variants run with several seeds (labels ``NAME@SEED``): the mean of each
    metric over the seeds, and its spread (max - min)."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        name, sep, _ = row[0].partition("@")
        if sep:
            groups.setdefault(name, []).append(row)
    out = []
    for name, runs in groups.items():
        if len(runs) < 2:
            continue
        metrics = {k: _mean([r[2][k] for r in runs]) for k in runs[0][2]}
        spread = {k: max(r[2][k] for r in runs) - min(r[2][k] for r in runs) for k in runs[0][2]}
        out.append(((f"**{name}** (mean of {len(runs)})", runs[0][1], metrics), spread))
    return out


def markdown(rows: list[Row], pairs: list[Path], lr_only: list[Path]) -> str:
    head = ["variant", "uncertainty", "top-k", "align-attention"]
    if pairs:
        head += ["PSNR-Y (dB)", "SSIM-Y", "NIQE"]
    if lr_only:
        head += ["NIQE (LR-only)"]
    head += ["s / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(label: str, sw: dict[str, str], m: dict[str, float], spread: dict[str, float] | None) -> list[str]:
        def num(key: str, digits: int) -> str:
            text = f"{m[key]:.{digits}f}"
            return text if spread is None else f"{text} ({spread[key]:.{digits}f})"

        out = [label, sw["uncertainty"], sw["top-k"], sw["align-attention"]]
        if pairs:
            out += [num("psnr", 2), num("ssim", 4), num("niqe_paired", 3)]
        if lr_only:
            out += [num("niqe_lr_only", 3)]
        return out + [f"{m['seconds']:.2f}"]

    for label, sw, m in rows:
        lines.append("| " + " | ".join(cells(label, sw, m, None)) + " |")
    for (label, sw, m), spread in seed_means(rows):
        lines.append("| " + " | ".join(cells(label, sw, m, spread)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    with torch.no_grad():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", required=True, metavar="[LABEL=]FOLDER", help="UGTSR variant folders")
    ap.add_argument("--pairs", nargs="*", default=[], type=Path, help="folders with hr/ and lr/ (PSNR/SSIM/NIQE)")
    ap.add_argument("--lr-only", nargs="*", default=[], type=Path, help="LR-only folders (NIQE)")
    ap.add_argument("--lr-crop", type=int, default=None, help="centre-crop LR-only images to at most N px per side")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--scale", type=int, default=None, help="default: each model's own scale")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--color-fix",
        default=None,
        help="comma-separated colour fixes (none, wavelet, adain), each scored from the same raw "
        "output (default: the method's own)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    if not args.pairs and not args.lr_only:
        ap.error("give --pairs and/or --lr-only")

    from tokensr.inference.colorfix import COLOR_FIXES
    from tokensr.methods.ugtsr.method import DEFAULT_COLOR_FIX, build
    from tokensr.pretrained import read_config

    fixes = [f.strip() for f in (args.color_fix or DEFAULT_COLOR_FIX).split(",") if f.strip()]
    bad = [f for f in fixes if f not in COLOR_FIXES]
    if bad or not fixes:
        ap.error(f"--color-fix takes {', '.join(COLOR_FIXES)}, got {args.color_fix!r}")
    rows: dict[str, list[Row]] = {fix: [] for fix in fixes}
    for label, weights in parse_weights(args.weights):
        config = read_config(weights)
        scale = args.scale or int(config.get("scale", 4))
        method = build(scale=scale, weights=weights, device=args.device, color_fix="none")
        metrics = evaluate(method, fixes, args.pairs, args.lr_only, args.lr_crop, args.max_images, args.device)
        for fix in fixes:
            rows[fix].append((label, switches(config), metrics[fix]))
            print(f"{label} ({fix}): " + ", ".join(f"{k} {v:.4g}" for k, v in metrics[fix].items()), file=sys.stderr)
    data = ", ".join([p.name for p in args.pairs] + [f"{p.name} (LR only)" for p in args.lr_only])
    parts = []
    for fix in fixes:
        title = "raw output (`--color-fix none`)" if fix == "none" else f"colour fix `{fix}`"
        parts.append(f"## {title}\n\n" + markdown(rows[fix], args.pairs, args.lr_only))
    note = (
        f"\nData: {data}. PSNR/SSIM on the Y channel with a border of the scale; means over images. "
        "Bracketed: the spread (max - min) over the seeds.\n"
    )
    text = "\n".join(parts) + note
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# UGTSR ablation\n\n" + text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
