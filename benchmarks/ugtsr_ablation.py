"""UGTSR ablation table (the paper's Table V): variant weight folders on evaluation data.

Each ``--weights`` folder is one variant (trained with the switches of docs/ugtsr.md:
uncertainty on/off, top_k 1/3/5, align_attention on/off); the switches shown in the table are
read from the folder's config (``top_k``, ``align_attention``, and ``training.uncertainty_loss``
written by the training tasks). Every variant upscales every image; the table reports
PSNR-Y / SSIM-Y (BasicSR conventions, border = scale) and NIQE of the outputs on the paired
sets (``--pairs ROOT`` with ``hr/`` + ``lr/``), NIQE on LR-only sets (``--lr-only FOLDER``,
e.g. realset65; ``--lr-crop`` centre-crops those LR images first) and seconds per image.

Run::

    PYTHONPATH=. python benchmarks/ugtsr_ablation.py \\
        --weights full=runs/ugtsr_udl_small_x4/export no-unc=runs/ugtsr_udl_nounc/export \\
                  k1=runs/ugtsr_udl_k1/export k5=runs/ugtsr_udl_k5/export no-aa=runs/ugtsr_udl_noaa/export \\
        --pairs ../shared/data/eval/set14_realesrgan_x4 --lr-only ../shared/data/eval/realset65 \\
        --lr-crop 128 --out docs/ugtsr_ablation.md
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
    method: Any, pairs: list[Path], lr_only: list[Path], lr_crop: int | None, max_images: int | None, device: str
) -> dict[str, float]:
    from tokensr.data.datasets import PairedFolderDataset
    from tokensr.data.images import list_images, read_rgb
    from tokensr.errors import TokensrError
    from tokensr.metrics import niqe, psnr, quantize, ssim

    scale = method.scale

    def run(lr_u8: np.ndarray) -> tuple[np.ndarray, float]:
        x = torch.from_numpy(np.ascontiguousarray(lr_u8.transpose(2, 0, 1))).float().div(255)[None].to(device)
        t = time.time()
        sr = method(x)
        return quantize(sr.cpu()), time.time() - t

    def safe_niqe(img: np.ndarray) -> float:
        try:
            return float(niqe(img, scale))
        except TokensrError:
            return math.nan

    res: dict[str, list[float]] = {"psnr": [], "ssim": [], "niqe_paired": [], "niqe_lr_only": [], "seconds": []}
    for root in pairs:
        ds = PairedFolderDataset(root, scale=scale)
        for i in range(len(ds) if max_images is None else min(len(ds), max_images)):
            item = ds[i]
            lr = quantize(item["lr"])
            hr = quantize(item["hr"])
            sr, dt = run(lr)
            res["psnr"].append(psnr(sr, hr, scale))
            res["ssim"].append(ssim(sr, hr, scale))
            res["niqe_paired"].append(safe_niqe(sr))
            res["seconds"].append(dt)
    for folder in lr_only:
        files = list_images(folder)[: max_images or None]
        for path in files:
            sr, dt = run(centre_crop(read_rgb(path), lr_crop))
            res["niqe_lr_only"].append(safe_niqe(sr))
            res["seconds"].append(dt)
    return {k: _mean(v) for k, v in res.items()}


def markdown(rows: list[tuple[str, dict[str, str], dict[str, float]]], pairs: list[Path], lr_only: list[Path]) -> str:
    head = ["variant", "uncertainty", "top-k", "align-attention"]
    if pairs:
        head += ["PSNR-Y (dB)", "SSIM-Y", "NIQE"]
    if lr_only:
        head += ["NIQE (LR-only)"]
    head += ["s / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, sw, m in rows:
        cells = [label, sw["uncertainty"], sw["top-k"], sw["align-attention"]]
        if pairs:
            cells += [f"{m['psnr']:.2f}", f"{m['ssim']:.4f}", f"{m['niqe_paired']:.3f}"]
        if lr_only:
            cells += [f"{m['niqe_lr_only']:.3f}"]
        cells += [f"{m['seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
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
    ap.add_argument("--color-fix", default=None, help="none | wavelet | adain (default: the method's own)")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    if not args.pairs and not args.lr_only:
        ap.error("give --pairs and/or --lr-only")

    from tokensr.methods.ugtsr.method import DEFAULT_COLOR_FIX, build
    from tokensr.pretrained import read_config

    rows = []
    for label, weights in parse_weights(args.weights):
        config = read_config(weights)
        scale = args.scale or int(config.get("scale", 4))
        method = build(scale=scale, weights=weights, device=args.device, color_fix=args.color_fix)
        metrics = evaluate(method, args.pairs, args.lr_only, args.lr_crop, args.max_images, args.device)
        rows.append((label, switches(config), metrics))
        print(f"{label}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), file=sys.stderr)
    data = ", ".join([p.name for p in args.pairs] + [f"{p.name} (LR only)" for p in args.lr_only])
    table = markdown(rows, args.pairs, args.lr_only)
    note = (
        f"\nData: {data}. PSNR/SSIM on the Y channel with a border of the scale; means over images. "
        f"Colour fix: {args.color_fix or DEFAULT_COLOR_FIX}.\n"
    )
    print(table + note)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# UGTSR ablation\n\n" + table + note, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
